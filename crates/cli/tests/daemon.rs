//! The `peercomm` binary as users run it: the README quickstart with two
//! daemons, the same over raw HTTP, `kill -9` after an accepted message, and
//! client commands without a daemon.

#![allow(clippy::unwrap_used)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_peercomm");

fn peercomm(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env_remove("PEERCOMM_DATA_DIR")
        .output()
        .expect("the peercomm binary runs")
}

fn json_of(output: &Output) -> Result<Value> {
    ensure!(
        output.status.success(),
        "exit {:?}: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout)
        .with_context(|| format!("not JSON: {}", String::from_utf8_lossy(&output.stdout)))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A daemon process, killed (SIGKILL) when dropped if still running.
struct Daemon {
    child: Child,
    data_dir: PathBuf,
}

impl Daemon {
    fn start(data_dir: &Path, extra: &[String]) -> Result<Self> {
        let _ = std::fs::remove_file(data_dir.join("api.addr"));
        let child = Command::new(BIN)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("run")
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        let daemon = Self {
            child,
            data_dir: data_dir.to_path_buf(),
        };
        daemon.wait_ready()?;
        Ok(daemon)
    }

    fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.data_dir.join("api.addr").exists() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "the daemon in {} did not start in 30s",
            self.data_dir.display()
        )
    }

    fn api(&self) -> Result<(String, String)> {
        let addr = std::fs::read_to_string(self.data_dir.join("api.addr"))?;
        let token = std::fs::read_to_string(self.data_dir.join("api.token"))?;
        Ok((format!("http://{}", addr.trim()), token.trim().to_string()))
    }

    /// SIGTERM, then wait: the graceful path.
    fn stop(mut self) -> Result<()> {
        Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                ensure!(status.success(), "daemon exited with {status}");
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("the daemon did not stop within 20s of SIGTERM")
    }

    /// SIGKILL: a crash.
    fn kill9(mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

struct Pair {
    _root: tempfile::TempDir,
    alice_dir: PathBuf,
    bob_dir: PathBuf,
    alice_id: String,
    bob_id: String,
    alice_port: u16,
    bob_port: u16,
}

/// `peercomm init` twice, `peercomm id --json` twice.
fn init_pair() -> Result<Pair> {
    let root = tempfile::tempdir()?;
    let alice_dir = root.path().join("alice");
    let bob_dir = root.path().join("bob");
    let alice_init = json_of(&peercomm(&alice_dir, &["init", "--json"]))?;
    json_of(&peercomm(&bob_dir, &["init", "--json"]))?;
    let alice_id = json_of(&peercomm(&alice_dir, &["id", "--json"]))?["peer_id"]
        .as_str()
        .context("peer_id")?
        .to_string();
    ensure!(alice_init["peer_id"] == alice_id.as_str());
    let bob_id = json_of(&peercomm(&bob_dir, &["id", "--json"]))?["peer_id"]
        .as_str()
        .context("peer_id")?
        .to_string();
    ensure!(alice_id.starts_with("12D3KooW") && bob_id.starts_with("12D3KooW"));
    Ok(Pair {
        _root: root,
        alice_dir,
        bob_dir,
        alice_id,
        bob_id,
        alice_port: free_port(),
        bob_port: free_port(),
    })
}

fn run_args(port: u16, bootstrap: Option<(u16, &str)>) -> Vec<String> {
    let mut args = vec![
        "--listen".to_string(),
        format!("/ip4/127.0.0.1/tcp/{port}"),
        "--api".to_string(),
        "127.0.0.1:0".to_string(),
    ];
    if let Some((p, id)) = bootstrap {
        args.push("--bootstrap".into());
        args.push(format!("/ip4/127.0.0.1/tcp/{p}/p2p/{id}"));
    }
    args
}

#[test]
fn quickstart_two_daemons_send_and_read_with_the_cli() -> Result<()> {
    let p = init_pair()?;
    let alice = Daemon::start(&p.alice_dir, &run_args(p.alice_port, None))?;
    let bob = Daemon::start(
        &p.bob_dir,
        &run_args(p.bob_port, Some((p.alice_port, &p.alice_id))),
    )?;

    let sent = json_of(&peercomm(
        &p.alice_dir,
        &[
            "send",
            &p.bob_id,
            "hello bob",
            "--wait",
            "--timeout",
            "60s",
            "--json",
        ],
    ))?;
    ensure!(sent["state"] == "delivered", "{sent}");
    ensure!(
        sent["route"] == "auto" && sent.get("hops").is_some(),
        "{sent}"
    );
    let id = sent["id"].as_str().context("id")?.to_string();
    ensure!(id.len() == 32);

    let inbox = json_of(&peercomm(&p.bob_dir, &["inbox", "--json"]))?;
    let messages = inbox["messages"].as_array().context("messages")?;
    ensure!(messages.len() == 1, "{inbox}");
    ensure!(messages[0]["body"] == "hello bob" && messages[0]["id"] == id.as_str());
    ensure!(messages[0]["peer"] == p.alice_id.as_str());

    let message = json_of(&peercomm(&p.alice_dir, &["message", &id, "--json"]))?;
    ensure!(
        message["state"] == "delivered" && message["direction"] == "out",
        "{message}"
    );

    let status = json_of(&peercomm(&p.alice_dir, &["status", "--json"]))?;
    ensure!(status["peer_id"] == p.alice_id.as_str(), "{status}");
    let peers = json_of(&peercomm(&p.alice_dir, &["peers", "--json"]))?;
    ensure!(
        peers["peers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["peer_id"] == p.bob_id.as_str()),
        "{peers}"
    );

    // The DHT: alice finds bob's record by PeerId.
    let deadline = Instant::now() + Duration::from_secs(30);
    let found = loop {
        let out = peercomm(&p.alice_dir, &["dht", "find", &p.bob_id, "--json"]);
        if out.status.success() {
            break json_of(&out)?;
        }
        ensure!(
            Instant::now() < deadline,
            "dht find: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    ensure!(found["peer_id"] == p.bob_id.as_str(), "{found}");
    let stats = json_of(&peercomm(&p.alice_dir, &["dht", "stats", "--json"]))?;
    ensure!(stats["routing_table_peers"].as_u64() >= Some(1), "{stats}");
    let mailbox = json_of(&peercomm(&p.alice_dir, &["mailbox", "stats", "--json"]))?;
    ensure!(mailbox["items"].as_u64() == Some(0), "{mailbox}");
    // Bandwidth: bytes to bob counted at the transport, in JSON and text.
    let bw = json_of(&peercomm(&p.alice_dir, &["stats", "bandwidth", "--json"]))?;
    ensure!(
        bw["peers"].as_array().is_some_and(|rows| rows
            .iter()
            .any(|r| r["name"] == p.bob_id.as_str() && r["bytes_out"].as_u64() > Some(0))),
        "{bw}"
    );
    let text = peercomm(&p.alice_dir, &["stats", "bandwidth"]);
    ensure!(
        text.status.success() && String::from_utf8_lossy(&text.stdout).contains("by protocol"),
        "stats bandwidth: {}",
        String::from_utf8_lossy(&text.stderr)
    );

    // Send without waiting prints {id, state}; the route asked for is stored.
    let queued = json_of(&peercomm(
        &p.bob_dir,
        &[
            "send",
            &p.alice_id,
            "hi alice",
            "--route",
            "direct",
            "--json",
        ],
    ))?;
    ensure!(
        queued["state"] == "queued" && queued["id"].as_str().is_some(),
        "{queued}"
    );
    let queued_id = queued["id"].as_str().context("id")?;
    let shown = json_of(&peercomm(&p.bob_dir, &["message", queued_id, "--json"]))?;
    ensure!(
        shown["route"] == "direct" && shown.get("hops").is_some(),
        "{shown}"
    );
    let text = peercomm(&p.bob_dir, &["message", queued_id]);
    ensure!(
        String::from_utf8_lossy(&text.stdout).contains("route direct, hops "),
        "{}",
        String::from_utf8_lossy(&text.stdout)
    );
    let refused = peercomm(&p.bob_dir, &["send", &p.alice_id, "x", "--route", "garlic"]);
    ensure!(!refused.status.success(), "--route garlic was accepted");
    ensure!(
        String::from_utf8_lossy(&refused.stderr).contains("onion"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let big = "a".repeat(peercomm_wire::MAX_ONION_BODY_BYTES + 1);
    let refused = peercomm(&p.bob_dir, &["send", &p.alice_id, &big, "--route", "onion"]);
    ensure!(
        !refused.status.success(),
        "an oversized onion body was accepted"
    );
    ensure!(
        String::from_utf8_lossy(&refused.stderr).contains("onion message carries at most"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    bob.stop()?;
    alice.stop()?;
    // A graceful stop removes the API address: clients now say the daemon is down.
    let out = peercomm(&p.alice_dir, &["status"]);
    ensure!(out.status.code() == Some(3), "{:?}", out.status);
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        err.contains("not running") && err.contains("peercomm run"),
        "{err}"
    );
    Ok(())
}

#[test]
fn quickstart_over_raw_http() -> Result<()> {
    let p = init_pair()?;
    let alice = Daemon::start(&p.alice_dir, &run_args(p.alice_port, None))?;
    let bob = Daemon::start(
        &p.bob_dir,
        &run_args(p.bob_port, Some((p.alice_port, &p.alice_id))),
    )?;
    let (alice_api, alice_token) = alice.api()?;
    let (bob_api, bob_token) = bob.api()?;
    let http = reqwest::blocking::Client::new();

    let health: Value = http.get(format!("{alice_api}/v1/health")).send()?.json()?;
    ensure!(health["status"] == "ok");
    let r = http
        .post(format!("{alice_api}/v1/messages"))
        .bearer_auth(&alice_token)
        .json(&serde_json::json!({"to": p.bob_id, "body": "over http", "ttl": "1h"}))
        .send()?;
    ensure!(r.status().as_u16() == 202, "{}", r.status());
    let accepted: Value = r.json()?;
    let id = accepted["id"].as_str().context("id")?.to_string();

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let m: Value = http
            .get(format!("{alice_api}/v1/messages/{id}"))
            .bearer_auth(&alice_token)
            .send()?
            .json()?;
        if m["state"] == "delivered" {
            break;
        }
        ensure!(Instant::now() < deadline, "not delivered: {m}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let inbox: Value = http
        .get(format!("{bob_api}/v1/messages?direction=in"))
        .bearer_auth(&bob_token)
        .send()?
        .json()?;
    let messages = inbox["messages"].as_array().context("messages")?;
    ensure!(
        messages.len() == 1 && messages[0]["body"] == "over http",
        "{inbox}"
    );
    bob.stop()?;
    alice.stop()?;
    Ok(())
}

#[test]
fn a_message_accepted_with_202_survives_kill_9() -> Result<()> {
    let p = init_pair()?;
    // Alice knows where bob will be, but bob is down.
    let alice_args = run_args(p.alice_port, Some((p.bob_port, &p.bob_id)));
    let alice = Daemon::start(&p.alice_dir, &alice_args)?;
    let (api, token) = alice.api()?;
    let http = reqwest::blocking::Client::new();
    let r = http
        .post(format!("{api}/v1/messages"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"to": p.bob_id, "body": "survive this"}))
        .send()?;
    ensure!(r.status().as_u16() == 202, "{}", r.status());
    let id = r.json::<Value>()?["id"].as_str().context("id")?.to_string();
    alice.kill9()?;

    let bob = Daemon::start(&p.bob_dir, &run_args(p.bob_port, None))?;
    let alice = Daemon::start(&p.alice_dir, &alice_args)?;
    let (api, token) = alice.api()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let m: Value = http
            .get(format!("{api}/v1/messages/{id}"))
            .bearer_auth(&token)
            .send()?
            .json()?;
        if m["state"] == "delivered" {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "not delivered after restart: {m}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let inbox = json_of(&peercomm(&p.bob_dir, &["inbox", "--json"]))?;
    let messages = inbox["messages"].as_array().context("messages")?;
    ensure!(
        messages.len() == 1 && messages[0]["body"] == "survive this",
        "{inbox}"
    );
    bob.stop()?;
    alice.stop()?;
    Ok(())
}

#[test]
fn init_refuses_an_existing_identity_and_clients_explain_a_missing_daemon() -> Result<()> {
    let root = tempfile::tempdir()?;
    let dir = root.path().join("node");
    let first = json_of(&peercomm(&dir, &["init", "--json"]))?;
    let again = peercomm(&dir, &["init"]);
    ensure!(!again.status.success());
    ensure!(String::from_utf8_lossy(&again.stderr).contains("never overwritten"));
    let id = json_of(&peercomm(&dir, &["id", "--json"]))?;
    ensure!(id["peer_id"] == first["peer_id"]);
    for args in [
        &["status"][..],
        &["inbox"],
        &["send", "12D3KooWx", "hi"],
        &["peers"],
    ] {
        let out = peercomm(&dir, args);
        ensure!(out.status.code() == Some(3), "{args:?}: {:?}", out.status);
        ensure!(
            String::from_utf8_lossy(&out.stderr).contains("peercomm run --data-dir"),
            "{args:?}"
        );
    }
    let empty = root.path().join("empty");
    let out = peercomm(&empty, &["id"]);
    ensure!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("peercomm init")
    );
    Ok(())
}
