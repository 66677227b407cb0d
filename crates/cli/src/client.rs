//! Client commands: they talk to the running daemon's local HTTP API, whose
//! address and token the daemon writes into the data dir.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::Args;
use futures::StreamExt;
use peercomm_node::Route;
use serde_json::{json, Value};

use crate::daemon::{API_ADDR_FILE, API_TOKEN_FILE};
use crate::exit;

/// Options of `peercomm send`.
#[derive(Debug, Clone, Args)]
pub(crate) struct SendArgs {
    /// The recipient's PeerId (as printed by its `peercomm id`).
    peer_id: String,
    /// The message text.
    text: String,
    /// How long the message may wait for the recipient, e.g. 30m, 1d (default: the node's default_ttl).
    #[arg(long, value_name = "DURATION")]
    ttl: Option<String>,
    /// Priority class: control, interactive, group, bulk, ephemeral.
    #[arg(long)]
    priority: Option<String>,
    /// Route preference (default: auto, the node chooses).
    #[arg(long, value_enum, value_name = "ROUTE")]
    route: Option<RouteArg>,
    /// Wait until the message is delivered (exit 0) or expires or fails (exit 4).
    #[arg(long)]
    wait: bool,
    /// With --wait, give up waiting after this long (exit 1); the message stays queued.
    #[arg(long, value_name = "DURATION")]
    timeout: Option<humantime::Duration>,
}

/// `send --route`: how the message should be routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum RouteArg {
    /// The node chooses.
    Auto,
    /// Only over a direct connection to the recipient.
    Direct,
    /// Hop by hop through other peers.
    Multihop,
    /// Through onion relays, so no relay sees both ends.
    Onion,
}

impl From<RouteArg> for Route {
    fn from(r: RouteArg) -> Self {
        match r {
            RouteArg::Auto => Route::Auto,
            RouteArg::Direct => Route::Direct,
            RouteArg::Multihop => Route::Multihop,
            RouteArg::Onion => Route::Onion,
        }
    }
}

/// Options of `peercomm inbox`.
#[derive(Debug, Clone, Args)]
pub(crate) struct InboxArgs {
    /// Keep running and print messages as they arrive.
    #[arg(long)]
    follow: bool,
    /// Only messages from this PeerId.
    #[arg(long, value_name = "PEER_ID")]
    peer: Option<String>,
}

/// A located API: base URL and token.
pub(crate) struct Api {
    base: String,
    token: String,
    data_dir: PathBuf,
    http: reqwest::Client,
}

/// Why a request failed.
pub(crate) enum Failure {
    /// No daemon answers.
    Down(String),
    /// The API answered with an error.
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// Anything else.
    Other(anyhow::Error),
}

impl Api {
    /// The API of the daemon for `data_dir`, from its address and token files.
    pub(crate) fn locate(data_dir: &Path) -> Result<Self, Failure> {
        let addr_path = data_dir.join(API_ADDR_FILE);
        let addr = std::fs::read_to_string(&addr_path)
            .map_err(|_| Failure::Down(format!("no API address in {}", addr_path.display())))?;
        let token_path = data_dir.join(API_TOKEN_FILE);
        let token = std::fs::read_to_string(&token_path).map_err(|e| {
            Failure::Other(anyhow!(
                "cannot read the API token {}: {e}",
                token_path.display()
            ))
        })?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| Failure::Other(e.into()))?;
        Ok(Self {
            base: format!("http://{}", addr.trim()),
            token: token.trim().to_string(),
            data_dir: data_dir.to_path_buf(),
            http,
        })
    }

    async fn call(&self, request: reqwest::RequestBuilder) -> Result<Value, Failure> {
        let response = request
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() {
                    Failure::Down(format!("nothing answers at {}", self.base))
                } else {
                    Failure::Other(e.into())
                }
            })?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(body);
        }
        Err(Failure::Api {
            status: status.as_u16(),
            code: body["error"]["code"]
                .as_str()
                .unwrap_or("unknown")
                .to_string(),
            message: body["error"]["message"]
                .as_str()
                .unwrap_or("no message")
                .to_string(),
        })
    }

    /// GET `path`; the JSON answer.
    pub(crate) async fn get(&self, path: &str) -> Result<Value, Failure> {
        self.call(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    /// POST `body` as JSON to `path`; the JSON answer.
    pub(crate) async fn post(&self, path: &str, body: Value) -> Result<Value, Failure> {
        self.call(self.http.post(format!("{}{path}", self.base)).json(&body))
            .await
    }

    /// PATCH `body` as JSON to `path`; the JSON answer.
    pub(crate) async fn patch(&self, path: &str, body: Value) -> Result<Value, Failure> {
        self.call(self.http.patch(format!("{}{path}", self.base)).json(&body))
            .await
    }

    /// PUT `path` without a body; the JSON answer.
    pub(crate) async fn put(&self, path: &str) -> Result<Value, Failure> {
        self.call(self.http.put(format!("{}{path}", self.base)))
            .await
    }

    /// DELETE `path`; the JSON answer.
    pub(crate) async fn delete(&self, path: &str) -> Result<Value, Failure> {
        self.call(self.http.delete(format!("{}{path}", self.base)))
            .await
    }
}

/// Turns a failure into the message and exit code a user sees.
pub(crate) fn report(data_dir: &Path, failure: Failure) -> anyhow::Result<ExitCode> {
    match failure {
        Failure::Down(why) => {
            eprintln!(
                "error: the peercomm daemon is not running for {} ({why}).\n\
                 Start it with `peercomm run --data-dir {}` (or `peercomm init` first for a new node).",
                data_dir.display(),
                data_dir.display()
            );
            Ok(ExitCode::from(exit::DAEMON_DOWN))
        }
        Failure::Api {
            status,
            code,
            message,
        } => {
            eprintln!("error: {message} ({code}, HTTP {status})");
            Ok(ExitCode::FAILURE)
        }
        Failure::Other(e) => Err(e),
    }
}

macro_rules! api_try {
    ($data_dir:expr, $e:expr) => {
        match $e {
            Ok(v) => v,
            Err(f) => return $crate::client::report($data_dir, f),
        }
    };
}
pub(crate) use api_try;

/// Prints one JSON value on a line.
pub(crate) fn print_json(value: &Value) {
    println!("{value}");
}

pub(crate) async fn status(data_dir: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let api = api_try!(data_dir, Api::locate(data_dir));
    let s = api_try!(data_dir, api.get("/v1/status").await);
    if json {
        print_json(&s);
        return Ok(ExitCode::SUCCESS);
    }
    println!("peer id          {}", s["peer_id"].as_str().unwrap_or("?"));
    for addr in s["listen_addrs"].as_array().into_iter().flatten() {
        println!("listening on     {}", addr.as_str().unwrap_or("?"));
    }
    println!("uptime           {}s", s["uptime_secs"]);
    println!("connected peers  {}", s["connected_peers"]);
    println!("known peers      {}", s["known_peers"]);
    println!("inbox            {}", s["incoming"]);
    if let Some(out) = s["outgoing"].as_object() {
        let parts: Vec<String> = out
            .iter()
            .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        println!(
            "outbox           {}",
            if parts.is_empty() {
                "empty".into()
            } else {
                parts.join(", ")
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn peers(data_dir: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let api = api_try!(data_dir, Api::locate(data_dir));
    let p = api_try!(data_dir, api.get("/v1/peers").await);
    if json {
        print_json(&p);
        return Ok(ExitCode::SUCCESS);
    }
    let peers = p["peers"].as_array().cloned().unwrap_or_default();
    if peers.is_empty() {
        println!("no connected peers (add one with `peercomm peers add MULTIADDR`)");
    }
    for peer in peers {
        println!("{}", peer["peer_id"].as_str().unwrap_or("?"));
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn peers_add(
    data_dir: &Path,
    addr: &peercomm_node::Multiaddr,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let api = api_try!(data_dir, Api::locate(data_dir));
    let r = api_try!(
        data_dir,
        api.post("/v1/peers", json!({ "addr": addr.to_string() }))
            .await
    );
    if json {
        print_json(&r);
    } else {
        println!("dialling {addr}");
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn dht_find(data_dir: &Path, peer: &str, json: bool) -> anyhow::Result<ExitCode> {
    let api = api_try!(data_dir, Api::locate(data_dir));
    let r = api_try!(data_dir, api.get(&format!("/v1/dht/peers/{peer}")).await);
    if json {
        print_json(&r);
        return Ok(ExitCode::SUCCESS);
    }
    println!("peer id   {}", r["peer_id"].as_str().unwrap_or("?"));
    for addr in r["addrs"].as_array().into_iter().flatten() {
        println!("address   {}", addr.as_str().unwrap_or("?"));
    }
    println!("box key   {}", r["box_key"].as_str().unwrap_or("?"));
    println!("sequence  {}", r["seq"]);
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn dht_stats(data_dir: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let api = api_try!(data_dir, Api::locate(data_dir));
    let s = api_try!(data_dir, api.get("/v1/dht/stats").await);
    if json {
        print_json(&s);
        return Ok(ExitCode::SUCCESS);
    }
    println!("joined               {}", s["joined"]);
    println!("routing table peers  {}", s["routing_table_peers"]);
    let buckets: Vec<String> = s["buckets"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| format!("{}:{}", b[0], b[1]))
        .collect();
    println!("buckets (index:peers) {}", buckets.join(" "));
    println!("records held         {}", s["records_held"]);
    println!(
        "lookups              {} ({} found)",
        s["lookups"], s["lookups_succeeded"]
    );
    println!(
        "requests per lookup  p50 {} p95 {}",
        s["requests_p50"], s["requests_p95"]
    );
    println!(
        "lookup latency ms    p50 {} p99 {}",
        s["latency_ms_p50"], s["latency_ms_p99"]
    );
    Ok(ExitCode::SUCCESS)
}

fn is_terminal(state: &str) -> bool {
    matches!(state, "delivered" | "expired" | "failed")
}

pub(crate) async fn send(data_dir: &Path, args: &SendArgs, json: bool) -> anyhow::Result<ExitCode> {
    let api = api_try!(data_dir, Api::locate(data_dir));
    let mut body = json!({ "to": args.peer_id, "body": args.text });
    if let Some(ttl) = &args.ttl {
        body["ttl"] = json!(ttl);
    }
    if let Some(priority) = &args.priority {
        body["priority"] = json!(priority);
    }
    if let Some(route) = args.route {
        body["route"] = json!(Route::from(route).as_str());
    }
    let queued = api_try!(data_dir, api.post("/v1/messages", body).await);
    let id = queued["id"]
        .as_str()
        .ok_or_else(|| anyhow!("the daemon answered without a message id: {queued}"))?
        .to_string();
    if !args.wait {
        if json {
            print_json(&json!({ "id": id, "state": queued["state"] }));
        } else {
            println!("{id}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    if !json {
        eprintln!("queued {id}; waiting for delivery");
    }
    let deadline = args
        .timeout
        .map(|t| tokio::time::Instant::now() + Duration::from(t));
    loop {
        let m = api_try!(data_dir, api.get(&format!("/v1/messages/{id}")).await);
        let state = m["state"].as_str().unwrap_or("").to_string();
        if is_terminal(&state) {
            if json {
                print_json(&json!({
                    "id": id,
                    "state": state,
                    "route": m["route"],
                    "hops": m["hops"],
                }));
            } else {
                println!("{id} {state}");
            }
            return Ok(if state == "delivered" {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(exit::NOT_DELIVERED)
            });
        }
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            bail!("{id} is still {state} after the --timeout; it stays queued in the daemon");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn print_message(m: &Value, json: bool) {
    if json {
        print_json(m);
        return;
    }
    let when = m["received_ms"]
        .as_u64()
        .or_else(|| m["created_ms"].as_u64())
        .map(|ms| {
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms))
                .to_string()
        })
        .unwrap_or_default();
    let direction = if m["direction"] == "out" {
        "to"
    } else {
        "from"
    };
    println!(
        "{when}  {direction} {}  [{}]  {}",
        m["peer"].as_str().unwrap_or("?"),
        m["state"].as_str().unwrap_or("?"),
        m["body"].as_str().unwrap_or("")
    );
}

/// `route auto, hops 2` (`hops unknown` until the node knows the path).
fn route_line(m: &Value) -> String {
    let hops = m["hops"]
        .as_u64()
        .map_or_else(|| "unknown".to_string(), |h| h.to_string());
    format!(
        "route {}, hops {hops}",
        m["route"].as_str().unwrap_or(Route::default().as_str())
    )
}

pub(crate) async fn message(data_dir: &Path, id: &str, json: bool) -> anyhow::Result<ExitCode> {
    let api = api_try!(data_dir, Api::locate(data_dir));
    let m = api_try!(data_dir, api.get(&format!("/v1/messages/{id}")).await);
    if json {
        print_json(&m);
    } else {
        print_message(&m, false);
        if m["direction"] == "out" {
            println!("  {}", route_line(&m));
            println!(
                "  attempts {}{}",
                m["attempts"],
                m["last_error"]
                    .as_str()
                    .map(|e| format!(", last error: {e}"))
                    .unwrap_or_default()
            );
            if let Some(n) = m["replicas"].as_u64() {
                println!("  held by {n} mailboxes while the recipient was unreachable");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn mailbox_stats(data_dir: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let api = api_try!(data_dir, Api::locate(data_dir));
    let s = api_try!(data_dir, api.get("/v1/mailbox/stats").await);
    if json {
        print_json(&s);
        return Ok(ExitCode::SUCCESS);
    }
    println!("items held   {} ({} bytes)", s["items"], s["bytes"]);
    println!("recipients   {}", s["recipients"]);
    println!("senders      {}", s["senders"]);
    println!("tombstones   {}", s["tombstones"]);
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn bandwidth_stats(data_dir: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let api = api_try!(data_dir, Api::locate(data_dir));
    let s = api_try!(data_dir, api.get("/v1/bandwidth").await);
    if json {
        print_json(&s);
        return Ok(ExitCode::SUCCESS);
    }
    let kib = |v: &Value| v.as_u64().unwrap_or(0) as f64 / 1024.0;
    println!(
        "total          {:.1} KiB in, {:.1} KiB out",
        kib(&s["total_in"]),
        kib(&s["total_out"])
    );
    let c = &s["config"];
    let on: Vec<&str> = [
        "compression",
        "priorities",
        "batching",
        "adaptive_retry",
        "gossip_tuning",
        "idle_tuning",
        "dht_tuning",
    ]
    .into_iter()
    .filter(|k| c["adaptive"] == true && c[*k] == true)
    .collect();
    println!(
        "adaptation     {}",
        if on.is_empty() {
            "off".to_string()
        } else {
            on.join(", ")
        }
    );
    if c["budget_bytes_per_sec"].as_u64().unwrap_or(0) > 0 {
        println!("budget         {} B/s up", c["budget_bytes_per_sec"]);
    }
    println!(
        "sealed         {} with the dictionary, {} zstd, {} uncompressed",
        s["sealed_dictionary"], s["sealed_zstd"], s["sealed_uncompressed"]
    );
    println!(
        "batches sent   {}, ephemeral shed {}",
        s["batches_sent"], s["ephemeral_shed"]
    );
    let table = |title: &str, rows: &Value, limit: usize| {
        println!("{title:<52} {:>10} {:>10}", "KiB in", "KiB out");
        for r in rows.as_array().into_iter().flatten().take(limit) {
            println!(
                "  {:<50} {:>10.1} {:>10.1}",
                r["name"].as_str().unwrap_or("?"),
                kib(&r["bytes_in"]),
                kib(&r["bytes_out"])
            );
        }
    };
    table("by class", &s["classes"], usize::MAX);
    table("by protocol", &s["protocols"], usize::MAX);
    table("by peer (busiest 20)", &s["peers"], 20);
    let links = s["links"].as_array().map_or(&[][..], Vec::as_slice);
    if !links.is_empty() {
        println!(
            "{:<54} {:>6} {:>9} {:>6} {:>8}  state",
            "links", "queued", "in flight", "window", "rtt ms"
        );
        for l in links.iter().take(20) {
            println!(
                "  {:<52} {:>6} {:>9} {:>6} {:>8}  {}",
                l["peer"].as_str().unwrap_or("?"),
                l["queued"],
                l["in_flight"],
                l["window"],
                l["rtt_ms"]
                    .as_f64()
                    .map_or("-".to_string(), |v| format!("{v:.0}")),
                l["state"].as_str().unwrap_or("?")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn inbox(
    data_dir: &Path,
    args: &InboxArgs,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let api = api_try!(data_dir, Api::locate(data_dir));
    // Subscribe before listing, so nothing arrives unseen in between.
    let events = if args.follow {
        Some(api_try!(data_dir, open_events(&api).await))
    } else {
        None
    };
    let mut printed = HashSet::new();
    let mut all = Vec::new();
    let mut after: Option<i64> = None;
    loop {
        let mut path = "/v1/messages?direction=in&limit=500".to_string();
        if let Some(a) = after {
            path.push_str(&format!("&after={a}"));
        }
        if let Some(peer) = &args.peer {
            path.push_str(&format!("&peer={peer}"));
        }
        let page = api_try!(data_dir, api.get(&path).await);
        let messages = page["messages"].as_array().cloned().unwrap_or_default();
        if messages.is_empty() {
            break;
        }
        for m in messages {
            if let Some(id) = m["id"].as_str() {
                printed.insert(id.to_string());
            }
            if args.follow || !json {
                print_message(&m, json);
            } else {
                all.push(m);
            }
        }
        match page["next_after"].as_i64() {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    if !args.follow {
        if json {
            print_json(&json!({ "messages": all }));
        } else if printed.is_empty() {
            eprintln!("no messages");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let Some(response) = events else {
        return Ok(ExitCode::SUCCESS);
    };
    let mut stream = response.bytes_stream();
    let mut buffer = String::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.context("the event stream broke")?;
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let (event, data) = parse_sse(&block);
            if event != "message_received" {
                continue;
            }
            let Ok(data) = serde_json::from_str::<Value>(&data) else {
                continue;
            };
            let Some(id) = data["id"].as_str() else {
                continue;
            };
            if let Some(peer) = &args.peer {
                if data["from"].as_str() != Some(peer.as_str()) {
                    continue;
                }
            }
            if !printed.insert(id.to_string()) {
                continue;
            }
            let m = api_try!(data_dir, api.get(&format!("/v1/messages/{id}")).await);
            print_message(&m, json);
        }
    }
    eprintln!("the daemon closed the event stream");
    Ok(ExitCode::FAILURE)
}

/// Opens the daemon's event stream (`GET /v1/events`).
pub(crate) async fn open_events(api: &Api) -> Result<reqwest::Response, Failure> {
    let response = api
        .http
        .get(format!("{}/v1/events", api.base))
        .bearer_auth(&api.token)
        .send()
        .await
        .map_err(|e| {
            if e.is_connect() {
                Failure::Down(format!("nothing answers at {}", api.base))
            } else {
                Failure::Other(e.into())
            }
        })?;
    if !response.status().is_success() {
        return Err(Failure::Api {
            status: response.status().as_u16(),
            code: "events".into(),
            message: format!("cannot follow events of {}", api.data_dir.display()),
        });
    }
    Ok(response)
}

/// The `event:` name and joined `data:` lines of one server-sent event.
pub(crate) fn parse_sse(block: &str) -> (String, String) {
    let mut event = String::from("message");
    let mut data = Vec::new();
    for line in block.lines() {
        if let Some(v) = line.strip_prefix("event:") {
            event = v.trim().to_string();
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
        }
    }
    (event, data.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_values_match_the_api_names() {
        use clap::ValueEnum;
        for arg in RouteArg::value_variants() {
            let name = arg.to_possible_value().unwrap().get_name().to_string();
            assert_eq!(name, Route::from(*arg).as_str());
        }
        assert_eq!(RouteArg::value_variants().len(), Route::ALL.len());
    }

    #[test]
    fn route_line_shows_unknown_hops() {
        assert_eq!(
            route_line(&json!({"route": "multihop", "hops": 3})),
            "route multihop, hops 3"
        );
        assert_eq!(
            route_line(&json!({"route": "direct", "hops": null})),
            "route direct, hops unknown"
        );
    }

    #[test]
    fn sse_blocks_parse_to_event_and_data() {
        let (e, d) = parse_sse("id: 4\nevent: message_received\ndata: {\"id\":\"ab\"}\n\n");
        assert_eq!(e, "message_received");
        assert_eq!(d, "{\"id\":\"ab\"}");
        let (e, d) = parse_sse(": keep-alive\n\n");
        assert_eq!((e.as_str(), d.as_str()), ("message", ""));
    }
}
