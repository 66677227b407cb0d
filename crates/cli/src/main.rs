//! `peercomm`: the peer-to-peer messaging node's command-line interface.
//!
//! `init` and `run` manage the daemon; `id`, `status`, `peers`, `send`,
//! `inbox`, `message` and `group` are clients of the daemon's local HTTP API (they
//! find its address and token in the data dir); `demo` runs a local network.

mod bench;
mod client;
mod daemon;
mod demo;
mod group;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use peercomm_node::Multiaddr;

/// peercomm: a peer-to-peer messenger node.
///
/// Peers exchange end-to-end encrypted messages directly, with no central
/// server. Quick start: `peercomm init`, then `peercomm run` in one terminal,
/// and `peercomm send <PEER_ID> "hello"` in another. `peercomm demo` starts a
/// local network and shows what it measures.
#[derive(Debug, Parser)]
#[command(name = "peercomm", version, about, long_about)]
struct Cli {
    /// Where the node keeps its identity, configuration and database.
    /// [default: the platform's data dir, e.g. ~/.local/share/peercomm]
    #[arg(long, global = true, env = "PEERCOMM_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Print machine-readable JSON (one object, or one per line when following).
    #[arg(long, global = true)]
    json: bool,
    /// Log filter, e.g. `info` or `peercomm_node=debug` (also RUST_LOG).
    #[arg(long, global = true, env = "PEERCOMM_LOG", value_name = "FILTER")]
    log: Option<String>,
    /// Log format for the daemon: `text` or `json`.
    #[arg(
        long,
        global = true,
        env = "PEERCOMM_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum BenchKind {
    /// The DHT at scale: formation, lookups against the Kademlia bound, churn.
    Dht(bench::DhtBenchArgs),
    /// Offline delivery under churn: recipients leave and return at random
    /// while messages flow; delivery rate, duplicates, time after return.
    Offline(bench::OfflineBenchArgs),
    /// MLS groups over gossipsub: delivery to every member, time to the
    /// last one, and the sender's upload against naive fan-out.
    Groups(bench::GroupBenchArgs),
    /// MLS group cost: build, add a member, commit, process, join, encrypt
    /// and decrypt at each group size (OpenMLS, no network).
    Mls(bench::MlsBenchArgs),
    /// Bandwidth adaptation: one seeded chat workload (1:1 and group chat,
    /// typing, presence, files, members going offline, a phone on a slow
    /// link) played with adaptation off, each mechanism alone and all on;
    /// bytes on the wire, delivery, latency under congestion.
    Bandwidth(bench::BandwidthBenchArgs),
    /// Load: a network driven at a target message rate (direct, multi-hop,
    /// onion, group and offline traffic); offered against delivered rate,
    /// latency p50/p99/p99.9 per kind, CPU per 1,000 messages, peak memory;
    /// --saturate steps the rate up until the network no longer keeps up.
    Load(bench::LoadBenchArgs),
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a node: a new identity and a commented config.toml in the data
    /// dir. Prints the new PeerId. Never touches an existing identity.
    Init,
    /// Run the node and its local HTTP API until interrupted (Ctrl-C or
    /// SIGTERM shut it down gracefully).
    Run(daemon::RunArgs),
    /// Print this node's PeerId (reads the identity; the daemon need not run).
    Id,
    /// Show the running node's status: addresses, peers, message counts.
    Status,
    /// List connected peers, or `peers add MULTIADDR` to dial one.
    Peers {
        #[command(subcommand)]
        action: Option<PeersAction>,
    },
    /// Send a text message to a peer. Prints the message id once the message
    /// is safely queued; delivery continues in the daemon.
    Send(client::SendArgs),
    /// Print received messages, oldest first; `--follow` keeps printing new ones.
    Inbox(client::InboxArgs),
    /// Group conversations: create a group, invite peers, send to every
    /// member and read the history.
    Group {
        #[command(subcommand)]
        action: group::GroupAction,
    },
    /// Show one message (sent or received) with its delivery state.
    Message {
        /// The message id (32 hex characters), as printed by `send`.
        id: String,
    },
    /// Peer discovery: `dht find PEER_ID` looks a peer up, `dht stats` shows
    /// the routing table and lookup figures.
    Dht {
        #[command(subcommand)]
        action: DhtAction,
    },
    /// What this node's mailbox holds for peers that are offline.
    Mailbox {
        #[command(subcommand)]
        action: MailboxAction,
    },
    /// Node figures: `stats bandwidth` shows bytes on the wire by peer,
    /// protocol and priority class, and each peer link's congestion state.
    Stats {
        #[command(subcommand)]
        what: StatsKind,
    },
    /// Print a shell completion script: `peercomm completions bash > /etc/bash_completion.d/peercomm`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Start a local network of real nodes on loopback, exchange messages
    /// between random pairs, and print what was measured. Exits non-zero if
    /// any message was lost.
    Demo(demo::DemoArgs),
    /// Measure on a simulated network: `bench dht --nodes 1000` forms a DHT
    /// of that many nodes in this process and reports lookup success, hops,
    /// latency, memory per node and success after churn.
    Bench {
        #[command(subcommand)]
        kind: BenchKind,
    },
}

#[derive(Debug, Subcommand)]
enum DhtAction {
    /// Find a peer's signed record (addresses, keys) through the DHT.
    Find {
        /// The peer's PeerId.
        peer_id: String,
    },
    /// Routing table fill, records held, lookups and their cost.
    Stats,
}

#[derive(Debug, Subcommand)]
enum StatsKind {
    /// Bytes in and out (counted at the transport: handshakes and framing
    /// included) by peer, protocol and priority class; queues and
    /// congestion per peer; compression, batching and shedding counts.
    Bandwidth,
}

#[derive(Debug, Subcommand)]
enum MailboxAction {
    /// Items, bytes, recipients and senders held, and acknowledgement tombstones.
    Stats,
}

#[derive(Debug, Subcommand)]
enum PeersAction {
    /// Dial a peer by address, e.g. /ip4/127.0.0.1/tcp/4001/p2p/12D3KooW...
    Add {
        /// The peer's multiaddr, ending in /p2p/<peer-id>.
        addr: Multiaddr,
    },
}

/// Exit codes beyond 0/1.
pub(crate) mod exit {
    /// The daemon is not running (or its API cannot be reached).
    pub(crate) const DAEMON_DOWN: u8 = 3;
    /// `send --wait` ended with the message expired or failed.
    pub(crate) const NOT_DELIVERED: u8 = 4;
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(dispatch(cli));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(cli: &Cli) {
    let default = match cli.command {
        Command::Run(_) => "info",
        _ => "warn",
    };
    let filter = cli
        .log
        .clone()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| default.into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn data_dir(cli: &Cli) -> anyhow::Result<PathBuf> {
    match &cli.data_dir {
        Some(dir) => Ok(dir.clone()),
        None => peercomm_node::config::default_data_dir().ok_or_else(|| {
            anyhow::anyhow!("cannot find a home directory for the data dir; pass --data-dir DIR")
        }),
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let json = cli.json;
    match &cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "peercomm",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo(args) => demo::run(args.clone()).await.map(|()| ExitCode::SUCCESS),
        Command::Bench {
            kind: BenchKind::Dht(args),
        } => bench::dht(args.clone(), json)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Bench {
            kind: BenchKind::Groups(args),
        } => bench::groups(args.clone(), json)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Bench {
            kind: BenchKind::Offline(args),
        } => bench::offline(args.clone(), json)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Bench {
            kind: BenchKind::Mls(args),
        } => bench::mls(args.clone(), json)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Bench {
            kind: BenchKind::Bandwidth(args),
        } => bench::bandwidth(args.clone(), json)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Bench {
            kind: BenchKind::Load(args),
        } => bench::load(args.clone(), json)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Init => daemon::init(&data_dir(&cli)?, json),
        Command::Run(args) => daemon::run(&data_dir(&cli)?, args.clone()).await,
        Command::Id => daemon::id(&data_dir(&cli)?, json),
        Command::Status => client::status(&data_dir(&cli)?, json).await,
        Command::Peers { action } => match action {
            None => client::peers(&data_dir(&cli)?, json).await,
            Some(PeersAction::Add { addr }) => {
                client::peers_add(&data_dir(&cli)?, addr, json).await
            }
        },
        Command::Send(args) => client::send(&data_dir(&cli)?, args, json).await,
        Command::Inbox(args) => client::inbox(&data_dir(&cli)?, args, json).await,
        Command::Dht { action } => match action {
            DhtAction::Find { peer_id } => client::dht_find(&data_dir(&cli)?, peer_id, json).await,
            DhtAction::Stats => client::dht_stats(&data_dir(&cli)?, json).await,
        },
        Command::Message { id } => client::message(&data_dir(&cli)?, id, json).await,
        Command::Group { action } => group::run(&data_dir(&cli)?, action, json).await,
        Command::Stats {
            what: StatsKind::Bandwidth,
        } => client::bandwidth_stats(&data_dir(&cli)?, json).await,
        Command::Mailbox { action } => match action {
            MailboxAction::Stats => client::mailbox_stats(&data_dir(&cli)?, json).await,
        },
    }
}
