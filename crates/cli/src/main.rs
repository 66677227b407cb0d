//! `peercomm`: the peer-to-peer messaging node's command-line interface.

mod demo;

use clap::{Parser, Subcommand};

/// peercomm: a peer-to-peer messenger node.
///
/// Peers find each other and exchange end-to-end encrypted messages with
/// no central server. Start with `peercomm demo` to watch a local network.
#[derive(Debug, Parser)]
#[command(name = "peercomm", version, about, long_about = None)]
struct Cli {
    /// Log filter, e.g. `info` or `peercomm_node=debug` (also RUST_LOG).
    #[arg(long, global = true, env = "PEERCOMM_LOG")]
    log: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a local network of real nodes on loopback, exchange messages
    /// between random pairs, and print what was measured. Exits non-zero if
    /// any message was lost.
    Demo(demo::DemoArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = cli
        .log
        .clone()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match cli.command {
            Command::Demo(args) => demo::run(args).await,
        }
    })
}
