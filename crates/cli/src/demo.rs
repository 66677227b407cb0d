//! `peercomm demo`: a local network exercising every capability, with the
//! figures measured while it runs.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use peercomm_node::{DeliveryState, MessageId, NodeEvent, Route, SendOptions};
use peercomm_sim::{SimNet, SimOptions, Topology};
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;

/// Options of `peercomm demo`.
#[derive(Debug, Clone, Args)]
pub(crate) struct DemoArgs {
    /// Nodes in the local network.
    #[arg(long, default_value_t = 20)]
    nodes: usize,
    /// Direct messages sent between random pairs.
    #[arg(long, default_value_t = 2000)]
    messages: usize,
    /// Message body size in bytes.
    #[arg(long, default_value_t = 256)]
    body_bytes: usize,
    /// Seed for the topology and the pairs (random if not given).
    #[arg(long)]
    seed: Option<u64>,
    /// Give up waiting for deliveries after this long.
    #[arg(long, default_value = "120s", value_parser = humantime_duration)]
    timeout: Duration,
}

fn humantime_duration(s: &str) -> Result<Duration, String> {
    s.parse::<humantime::Duration>()
        .map(Into::into)
        .map_err(|e| format!("{e} (write durations like 30s, 2m)"))
}

/// Latencies in milliseconds, sorted, to quantiles.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

pub(crate) async fn run(args: DemoArgs) -> anyhow::Result<()> {
    if args.nodes < 2 {
        bail!("--nodes must be at least 2 (got {})", args.nodes);
    }
    let mut options = SimOptions::new(args.nodes, Topology::Random(3.min(args.nodes - 1)));
    if let Some(seed) = args.seed {
        options.seed = seed;
    }
    let seed = options.seed;
    println!(
        "peercomm demo: starting {} nodes on loopback (seed {seed})",
        args.nodes
    );
    let started = Instant::now();
    let mut net = SimNet::start(options)
        .await
        .context("starting the network")?;
    net.introduce_all().await?;
    wait_dht_settled(&net).await;
    println!(
        "  network up and DHT settled in {:.2}s: random topology of degree 3, other links made on demand",
        started.elapsed().as_secs_f64()
    );

    // Watch every node's events: deliveries at senders, arrivals at recipients.
    let (tx, mut rx) = mpsc::unbounded_channel();
    for i in 0..net.len() {
        let mut events = net.handle(i).subscribe();
        let tx = tx.clone();
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(event) => {
                        if tx.send((Instant::now(), event)).is_err() {
                            break;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        eprintln!("demo: missed {n} events of a node (slow consumer)");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
        });
    }
    drop(tx);

    let wire_before: u64 = (0..net.len())
        .map(|i| net.handle(i).stats().wire_bytes_out)
        .sum();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let bar = ProgressBar::new(args.messages as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "  {spinner} direct messages [{bar:40}] {pos}/{len} delivered  {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut sent_at: HashMap<MessageId, Instant> = HashMap::with_capacity(args.messages);
    let send_start = Instant::now();
    for _ in 0..args.messages {
        let (from, to) = random_pair(net.len(), &mut rng);
        let mut body = vec![0u8; args.body_bytes];
        rng.fill(&mut body[..]);
        let id = net
            .handle(from)
            .send(net.peer_id(to), body, SendOptions::default())
            .await
            .context("send")?;
        sent_at.insert(id, Instant::now());
    }
    let send_secs = send_start.elapsed().as_secs_f64();

    let mut latencies = Vec::with_capacity(args.messages);
    let mut received: HashMap<MessageId, u32> = HashMap::new();
    let mut delivered = 0usize;
    let deadline = tokio::time::Instant::now() + args.timeout;
    while delivered < args.messages {
        let next = tokio::time::timeout_at(deadline, rx.recv()).await;
        let Ok(Some((at, event))) = next else { break };
        match event {
            NodeEvent::MessageState {
                id,
                state: DeliveryState::Delivered,
            } => {
                if let Some(t0) = sent_at.get(&id) {
                    latencies.push(at.duration_since(*t0).as_secs_f64() * 1000.0);
                    delivered += 1;
                    bar.inc(1);
                }
            }
            NodeEvent::MessageReceived { id, .. } => {
                *received.entry(id).or_default() += 1;
            }
            _ => {}
        }
    }
    // Let arrivals that raced the last receipt be counted.
    while let Ok((_, event)) = rx.try_recv() {
        if let NodeEvent::MessageReceived { id, .. } = event {
            *received.entry(id).or_default() += 1;
        }
    }
    let elapsed = send_start.elapsed().as_secs_f64();
    bar.finish_and_clear();

    latencies.sort_by(|a, b| a.total_cmp(b));
    let dht = dht_lookups(&net, &mut rng).await;
    let stats: Vec<_> = (0..net.len()).map(|i| net.handle(i).stats()).collect();
    let wire_after: u64 = stats.iter().map(|s| s.wire_bytes_out).sum();
    let wire = wire_after.saturating_sub(wire_before);
    let routed = multihop(&net, &mut rng).await?;
    let onion = onion(&net, &mut rng).await?;
    let offline = offline(&mut net, &mut rng).await?;
    // Groups run on a network of their own: a 50-member group.
    let group = {
        let mut opts = peercomm_sim::groups::GroupOptions::new(50, 1, rng.gen());
        opts.invite_batch = 10;
        peercomm_sim::groups::group_fanout(&opts)
            .await
            .context("the 50-member group")?
    };
    // Bandwidth adaptation, short form: the same seeded workload with
    // adaptation off and then on, each on a network of its own.
    let bandwidth = {
        let opts =
            peercomm_sim::bandwidth::BandwidthOptions::quick(peercomm_sim::bandwidth::DEFAULT_SEED);
        peercomm_sim::bandwidth::bandwidth(&opts, &mut |line| eprintln!("  bandwidth {line}"))
            .await
            .context("the bandwidth runs")?
    };
    let duplicates_delivered = received.values().filter(|n| **n > 1).count();
    let retransmits_deduplicated: u64 = stats.iter().map(|s| s.duplicates).sum();
    let rejected: u64 = stats.iter().map(|s| s.rejected_total()).sum();
    let lost = args.messages - delivered;
    let arrived_once = sent_at
        .keys()
        .filter(|id| received.get(id) == Some(&1))
        .count();

    println!();
    println!("  {:<34} {:>14}", "capability / figure", "measured");
    println!("  {}", "-".repeat(50));
    let row = |name: &str, value: String| println!("  {name:<34} {value:>14}");
    row("nodes", net.len().to_string());
    row("direct: sent", args.messages.to_string());
    row("direct: delivered (receipt)", delivered.to_string());
    row("direct: arrived exactly once", arrived_once.to_string());
    row("direct: lost", lost.to_string());
    row("direct: delivered twice", duplicates_delivered.to_string());
    row(
        "direct: retransmits deduplicated",
        retransmits_deduplicated.to_string(),
    );
    row(
        "direct: latency p50 (ms)",
        format!("{:.1}", quantile(&latencies, 0.50)),
    );
    row(
        "direct: latency p99 (ms)",
        format!("{:.1}", quantile(&latencies, 0.99)),
    );
    row(
        "direct: send rate (msg/s)",
        format!("{:.0}", args.messages as f64 / send_secs),
    );
    row(
        "direct: delivered rate (msg/s)",
        format!("{:.0}", delivered as f64 / elapsed),
    );
    row("dht: lookups", dht.lookups.to_string());
    row(
        "dht: success rate (%)",
        format!(
            "{:.1}",
            100.0 * dht.found as f64 / dht.lookups.max(1) as f64
        ),
    );
    row(
        "dht: requests per lookup p50",
        format!("{:.1}", dht.requests_p50),
    );
    row(
        "dht: requests per lookup p95",
        format!("{:.1}", dht.requests_p95),
    );
    row(
        "dht: lookup latency p50 (ms)",
        format!("{:.1}", dht.latency_p50),
    );
    row(
        "dht: lookup latency p99 (ms)",
        format!("{:.1}", dht.latency_p99),
    );
    row("multihop: sent (direct link cut)", routed.sent.to_string());
    row(
        "multihop: delivered (receipt)",
        routed.delivered.to_string(),
    );
    row("multihop: hops p50", format!("{:.0}", routed.hops_p50));
    row("multihop: hops max", format!("{:.0}", routed.hops_max));
    row(
        "multihop: latency p50 (ms)",
        format!("{:.1}", routed.latency_p50),
    );
    row("onion: sent (3 relays)", onion.sent.to_string());
    row(
        "onion: delivered (receipt via SURB)",
        onion.delivered.to_string(),
    );
    row("onion: hops (relays + 1)", format!("{:.0}", onion.hops_p50));
    row(
        "onion: latency p50 (ms)",
        format!("{:.1}", onion.latency_p50),
    );
    row("offline: sent to offline peers", offline.sent.to_string());
    row(
        "offline: mailboxes per message p50",
        format!("{:.0}", offline.replicas_p50),
    );
    row(
        "offline: delivered after return",
        offline.delivered.to_string(),
    );
    row(
        "offline: return to delivery p50 (ms)",
        format!("{:.0}", offline.after_return_p50),
    );
    row(
        "offline: return to delivery max (ms)",
        format!("{:.0}", offline.after_return_max),
    );
    row("group: members (MLS, gossipsub)", group.members.to_string());
    row(
        "group: delivered / expected",
        format!("{}/{}", group.delivered, group.expected),
    );
    row(
        "group: to the last member (ms)",
        format!("{:.0}", group.last_member_ms.max),
    );
    row(
        "group: sender upload / naive",
        format!("{:.3}", group.upload_ratio),
    );
    let kib = |m: peercomm_sim::bandwidth::Mechanism| {
        bandwidth
            .runs
            .iter()
            .find(|r| r.mechanism == m)
            .map_or(0.0, |r| r.bytes_total as f64 / 1024.0)
    };
    row(
        "bandwidth: less traffic, adapted",
        format!(
            "{:.0}% (off {:.0} KiB -> on {:.0} KiB), lost {}",
            bandwidth.reduction_percent,
            kib(peercomm_sim::bandwidth::Mechanism::Off),
            kib(peercomm_sim::bandwidth::Mechanism::All),
            bandwidth.lost
        ),
    );
    row("bytes on the wire (TCP, out)", wire.to_string());
    row(
        "bytes on the wire per message",
        format!("{:.0}", wire as f64 / args.messages.max(1) as f64),
    );
    row("inbound envelopes rejected", rejected.to_string());
    println!();
    net.shutdown().await;
    if dht.found < dht.lookups {
        bail!(
            "{} of {} DHT lookups failed",
            dht.lookups - dht.found,
            dht.lookups
        );
    }
    if routed.delivered < routed.sent {
        bail!(
            "{} of {} multi-hop messages were not delivered",
            routed.sent - routed.delivered,
            routed.sent
        );
    }
    if onion.delivered < onion.sent {
        bail!(
            "{} of {} onion messages were not delivered",
            onion.sent - onion.delivered,
            onion.sent
        );
    }
    if offline.delivered < offline.sent {
        bail!(
            "{} of {} messages to offline peers were not delivered after they returned",
            offline.sent - offline.delivered,
            offline.sent
        );
    }
    if group.delivered < group.expected || group.duplicates > 0 {
        bail!(
            "group: {} of {} member deliveries, {} duplicated",
            group.delivered,
            group.expected,
            group.duplicates
        );
    }
    if bandwidth.lost > 0 {
        bail!(
            "bandwidth: {} non-ephemeral message(s) lost with adaptation off or on",
            bandwidth.lost
        );
    }
    if lost > 0 || duplicates_delivered > 0 || arrived_once != args.messages {
        bail!(
            "{lost} message(s) lost, {duplicates_delivered} delivered twice, {} arrived exactly once of {}",
            arrived_once,
            args.messages
        );
    }
    println!("all {} messages delivered exactly once", args.messages);
    Ok(())
}

/// Multi-hop figures.
struct MultihopFigures {
    sent: usize,
    delivered: usize,
    hops_p50: f64,
    hops_max: f64,
    latency_p50: f64,
}

/// Cuts the direct link of random pairs and sends across each: the sender
/// cannot dial, so the message goes hop by hop and its receipt comes back
/// the same way. The links are restored afterwards.
async fn multihop(net: &SimNet, rng: &mut rand::rngs::StdRng) -> anyhow::Result<MultihopFigures> {
    // Two nodes with their link cut have no one to go through.
    let messages = if net.len() < 3 { 0 } else { 20 };
    let mut pairs = Vec::with_capacity(messages);
    for _ in 0..messages {
        let (from, to) = random_pair(net.len(), rng);
        net.cut(from, to).await?;
        pairs.push((from, to));
    }
    let mut sent = Vec::with_capacity(messages);
    for (from, to) in &pairs {
        let id = net
            .handle(*from)
            .send(
                net.peer_id(*to),
                b"hop by hop".to_vec(),
                SendOptions::default(),
            )
            .await
            .context("send")?;
        sent.push((*from, id));
    }
    let figures = await_delivered(net, "multihop", sent).await;
    for (from, to) in pairs {
        net.heal(from, to).await?;
    }
    Ok(figures)
}

/// Two distinct random node indices below `n` (at least 2).
fn random_pair(n: usize, rng: &mut rand::rngs::StdRng) -> (usize, usize) {
    let from = rng.gen_range(0..n);
    let mut to = rng.gen_range(0..n - 1);
    if to >= from {
        to += 1;
    }
    (from, to)
}

/// Waits (at most a minute) for each `(sender, id)` to be delivered; the
/// hop counts and latencies of those that were, sorted.
async fn await_delivered(
    net: &SimNet,
    label: &str,
    sent: Vec<(usize, MessageId)>,
) -> MultihopFigures {
    let messages = sent.len();
    let mut hops = Vec::new();
    let mut latency = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut pending = sent;
    while !pending.is_empty() && Instant::now() < deadline {
        let mut left = Vec::new();
        for (from, id) in pending {
            match net.handle(from).message_state(id).await {
                Ok(Some(m)) if m.state == DeliveryState::Delivered => {
                    hops.push(f64::from(m.hops.unwrap_or(0)));
                    latency.push(m.delivered_ms.unwrap_or(0).saturating_sub(m.created_ms) as f64);
                }
                _ => left.push((from, id)),
            }
        }
        pending = left;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (from, id) in &pending {
        if let Ok(Some(m)) = net.handle(*from).message_state(*id).await {
            eprintln!(
                "  {label} message {id} from node {from} not delivered: {:?}, attempts {}, last error: {}",
                m.state,
                m.attempts,
                m.last_error.as_deref().unwrap_or("none")
            );
        }
    }
    hops.sort_by(|a, b| a.total_cmp(b));
    latency.sort_by(|a, b| a.total_cmp(b));
    MultihopFigures {
        sent: messages,
        delivered: hops.len(),
        hops_p50: quantile(&hops, 0.5),
        hops_max: hops.last().copied().unwrap_or(0.0),
        latency_p50: quantile(&latency, 0.5),
    }
}

/// Onion messages between random pairs through 3 relays (what each relay
/// learns is checked by the tests in `crates/node/tests/onion.rs`).
async fn onion(net: &SimNet, rng: &mut rand::rngs::StdRng) -> anyhow::Result<MultihopFigures> {
    // A sender, a recipient and three relays.
    let messages = if net.len() < 5 { 0 } else { 20 };
    let mut sent = Vec::with_capacity(messages);
    for _ in 0..messages {
        let (from, to) = random_pair(net.len(), rng);
        let options = SendOptions {
            route: Some(Route::Onion),
            ..SendOptions::default()
        };
        let id = net
            .handle(from)
            .send(net.peer_id(to), b"through the onion".to_vec(), options)
            .await
            .context("send")?;
        sent.push((from, id));
    }
    Ok(await_delivered(net, "onion", sent).await)
}

/// Offline-delivery figures.
struct OfflineFigures {
    sent: usize,
    replicas_p50: f64,
    delivered: usize,
    after_return_p50: f64,
    after_return_max: f64,
}

/// Three recipients go offline; two messages to each wait in their
/// mailboxes; they come back, and the time from each one's return to the
/// sender's receipt is measured.
async fn offline(net: &mut SimNet, rng: &mut rand::rngs::StdRng) -> anyhow::Result<OfflineFigures> {
    const AWAY: usize = 3;
    const EACH: usize = 2;
    if net.len() < AWAY + 6 {
        return Ok(OfflineFigures {
            sent: 0,
            replicas_p50: 0.0,
            delivered: 0,
            after_return_p50: 0.0,
            after_return_max: 0.0,
        });
    }
    let mut away: Vec<usize> = Vec::new();
    while away.len() < AWAY {
        let i = rng.gen_range(0..net.len());
        if !away.contains(&i) {
            away.push(i);
        }
    }
    for &i in &away {
        net.stop(i).await?;
    }
    let mut sent = Vec::new();
    for &to in &away {
        for _ in 0..EACH {
            let from = loop {
                let i = rng.gen_range(0..net.len());
                if !away.contains(&i) {
                    break i;
                }
            };
            let id = net
                .handle(from)
                .send(
                    net.peer_id(to),
                    b"while you were away".to_vec(),
                    SendOptions::default(),
                )
                .await
                .context("send to an offline peer")?;
            sent.push((from, id));
        }
    }
    // Each waits in the recipient's mailboxes.
    let mut replicas = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    for (from, id) in &sent {
        loop {
            let m = net.handle(*from).message_state(*id).await.ok().flatten();
            if let Some(n) = m.as_ref().and_then(|m| m.replicas) {
                replicas.push(f64::from(n));
                break;
            }
            if Instant::now() >= deadline {
                bail!("message {id} to an offline peer was not deposited in mailboxes: {m:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let returned = Instant::now();
    for &i in &away {
        net.restart(i).await?;
    }
    let mut after_return = Vec::new();
    let mut pending = sent.clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !pending.is_empty() && Instant::now() < deadline {
        let mut left = Vec::new();
        for (from, id) in pending {
            match net.handle(from).message_state(id).await {
                Ok(Some(m)) if m.state == DeliveryState::Delivered => {
                    after_return.push(returned.elapsed().as_secs_f64() * 1000.0);
                }
                _ => left.push((from, id)),
            }
        }
        pending = left;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    replicas.sort_by(|a, b| a.total_cmp(b));
    after_return.sort_by(|a, b| a.total_cmp(b));
    Ok(OfflineFigures {
        sent: sent.len(),
        replicas_p50: quantile(&replicas, 0.5),
        delivered: after_return.len(),
        after_return_p50: quantile(&after_return, 0.5),
        after_return_max: after_return.last().copied().unwrap_or(0.0),
    })
}

/// DHT figures over the whole network.
struct DhtFigures {
    lookups: u64,
    found: u64,
    requests_p50: f64,
    requests_p95: f64,
    latency_p50: f64,
    latency_p99: f64,
}

/// Every node looks up five random others by PeerId alone.
async fn dht_lookups(net: &SimNet, rng: &mut rand::rngs::StdRng) -> DhtFigures {
    const PER_NODE: usize = 5;
    let mut requests = Vec::new();
    let mut latency = Vec::new();
    let mut lookups = 0u64;
    let mut found = 0u64;
    for i in 0..net.len() {
        for _ in 0..PER_NODE {
            let mut j = rng.gen_range(0..net.len() - 1);
            if j >= i {
                j += 1;
            }
            let t0 = Instant::now();
            lookups += 1;
            match net.handle(i).find_peer(net.peer_id(j)).await {
                Ok(_) => {
                    found += 1;
                    latency.push(t0.elapsed().as_secs_f64() * 1000.0);
                }
                Err(e) => eprintln!("  dht lookup by node {i} of node {j} failed: {e}"),
            }
        }
        if let Ok(s) = net.handle(i).dht_stats().await {
            if s.lookups.lookups > 0 {
                requests.push(s.lookups.requests_p50);
            }
        }
    }
    requests.sort_by(|a, b| a.total_cmp(b));
    latency.sort_by(|a, b| a.total_cmp(b));
    DhtFigures {
        lookups,
        found,
        requests_p50: quantile(&requests, 0.50),
        requests_p95: quantile(&requests, 0.95),
        latency_p50: quantile(&latency, 0.50),
        latency_p99: quantile(&latency, 0.99),
    }
}

/// Waits (at most 30 s) until every node has joined the DHT and published
/// its record, as a network that has been up a while would have.
async fn wait_dht_settled(net: &SimNet) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for i in 0..net.len() {
        while Instant::now() < deadline {
            let h = net.handle(i);
            if h.dht_stats().await.is_ok_and(|s| s.joined) && h.stats().dht_publish_ok > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
