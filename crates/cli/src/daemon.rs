//! The daemon side: `init`, `run`, and `id`.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Args;
use peercomm_node::config::{commented_default_toml, CONFIG_FILE};
use peercomm_node::identity::IDENTITY_FILE;
use peercomm_node::{Config, ConfigOverrides, Identity, Multiaddr, Node, NodeOptions};
use rand::RngCore;

/// File in the data dir holding the running daemon's API address.
pub(crate) const API_ADDR_FILE: &str = "api.addr";
/// File in the data dir holding the API's bearer token (mode 0600).
pub(crate) const API_TOKEN_FILE: &str = "api.token";

/// Options of `peercomm run`.
#[derive(Debug, Clone, Args)]
pub(crate) struct RunArgs {
    /// Listen on this multiaddr (repeatable), e.g. /ip4/0.0.0.0/tcp/4001.
    /// Replaces `listen` from the config.
    #[arg(long, value_name = "MULTIADDR")]
    listen: Vec<Multiaddr>,
    /// Dial this peer at start (repeatable), e.g.
    /// /ip4/192.0.2.1/tcp/4001/p2p/12D3KooW... Replaces `peers` from the config.
    #[arg(long, value_name = "MULTIADDR")]
    bootstrap: Vec<Multiaddr>,
    /// Serve the local HTTP API on this address (default 127.0.0.1:7700; port 0 picks one).
    #[arg(long, value_name = "HOST:PORT")]
    api: Option<String>,
}

pub(crate) fn init(data_dir: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let identity_path = data_dir.join(IDENTITY_FILE);
    if identity_path.exists() {
        bail!(
            "{} already holds an identity; it is never overwritten. Use `peercomm run --data-dir {}` \
             to start it, or choose another --data-dir for a new node",
            data_dir.display(),
            data_dir.display()
        );
    }
    let identity = Identity::generate();
    identity
        .create(data_dir)
        .with_context(|| format!("creating the identity in {}", data_dir.display()))?;
    let config_path = data_dir.join(CONFIG_FILE);
    if !config_path.exists() {
        fs::write(&config_path, commented_default_toml())
            .with_context(|| format!("writing {}", config_path.display()))?;
    }
    if json {
        println!(
            "{}",
            serde_json::json!({
                "peer_id": identity.peer_id().to_string(),
                "data_dir": data_dir.display().to_string(),
            })
        );
    } else {
        println!("{}", identity.peer_id());
        eprintln!(
            "created a new node in {} (identity.key, config.toml); start it with `peercomm run --data-dir {}`",
            data_dir.display(),
            data_dir.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn id(data_dir: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let identity = load_identity(data_dir)?;
    if json {
        println!(
            "{}",
            serde_json::json!({ "peer_id": identity.peer_id().to_string() })
        );
    } else {
        println!("{}", identity.peer_id());
    }
    Ok(ExitCode::SUCCESS)
}

fn load_identity(data_dir: &Path) -> anyhow::Result<Identity> {
    let path = data_dir.join(IDENTITY_FILE);
    if !path.exists() {
        bail!(
            "no identity in {}; create one with `peercomm init --data-dir {}`",
            data_dir.display(),
            data_dir.display()
        );
    }
    Ok(Identity::load(&path)?)
}

pub(crate) async fn run(data_dir: &Path, args: RunArgs) -> anyhow::Result<ExitCode> {
    load_identity(data_dir)?;
    let overrides = ConfigOverrides {
        listen: args.listen,
        bootstrap: args.bootstrap,
        api_listen: args.api,
    };
    let config = Config::load(data_dir, &overrides)?;
    let api_listen = config.api.listen.clone();
    let max_body_bytes = config.api.max_body_bytes;
    let token = load_or_create_token(data_dir)?;
    let listener = tokio::net::TcpListener::bind(&api_listen)
        .await
        .with_context(|| {
            format!(
                "cannot serve the API on {api_listen}; choose another address with --api HOST:PORT"
            )
        })?;
    let api_addr = listener.local_addr()?;

    let node = Node::start(NodeOptions::new(data_dir, config)).await?;
    let handle = node.handle();
    let router = peercomm_api::router(
        handle.clone(),
        peercomm_api::ApiConfig {
            token,
            max_body_bytes,
        },
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let api = tokio::spawn(peercomm_api::serve(listener, router, async move {
        let _ = stop_rx.await;
    }));
    write_atomically(
        &data_dir.join(API_ADDR_FILE),
        api_addr.to_string().as_bytes(),
        0o644,
    )?;

    let addrs = handle.listen_addrs().await.unwrap_or_default();
    tracing::info!(peer_id = %handle.peer_id(), api = %api_addr, "node running");
    eprintln!("peercomm node {}", handle.peer_id());
    for addr in addrs {
        eprintln!("  listening on {addr}/p2p/{}", handle.peer_id());
    }
    eprintln!(
        "  API on http://{api_addr} (token in {})",
        data_dir.join(API_TOKEN_FILE).display()
    );

    wait_for_signal().await?;
    eprintln!("shutting down");
    let _ = fs::remove_file(data_dir.join(API_ADDR_FILE));
    let _ = stop_tx.send(());
    let _ = api.await;
    node.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    Ok(())
}

/// The API token: kept across restarts so configured apps keep working;
/// created (32 random bytes, hex, mode 0600) when missing.
fn load_or_create_token(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join(API_TOKEN_FILE);
    if let Ok(meta) = fs::metadata(&path) {
        if meta.permissions().mode() & 0o077 != 0 {
            bail!(
                "{} is readable by other users; fix it with `chmod 600 {}`",
                path.display(),
                path.display()
            );
        }
        let token = fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .trim()
            .to_string();
        if token.len() >= 32 {
            return Ok(token);
        }
        fs::remove_file(&path)
            .with_context(|| format!("replacing the short token in {}", path.display()))?;
    }
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    let token = hex::encode(bytes);
    write_atomically(&path, token.as_bytes(), 0o600)?;
    Ok(token)
}

fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    let tmp: PathBuf = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(contents)?;
    file.sync_all()?;
    fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
