//! A group on a simulated network: every node joins one MLS group (invited
//! one by one by the owner, key packages from the DHT), then members picked
//! at random send messages. Measures delivery to every member (exactly
//! once), the time to the last member, and what a sender uploads per
//! message against naive fan-out (one copy per member).
//!
//! Used by the group tests (`crates/node/tests/groups.rs`), `peercomm bench
//! groups` and the demo's group row.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use peercomm_node::{GroupError, GroupId, GroupState, NodeEvent, NodeHandle, PeerId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::scale::Spread;
use crate::{wait_until, SimError, SimNet, SimOptions, SimTransport, Topology};

/// What to run.
#[derive(Debug, Clone)]
pub struct GroupOptions {
    /// Nodes; every one becomes a member.
    pub nodes: usize,
    /// Messages, each from a random member.
    pub messages: usize,
    /// The transport.
    pub transport: SimTransport,
    /// Members invited per commit while the group forms.
    pub invite_batch: usize,
    /// Seed for every random choice.
    pub seed: u64,
}

/// What a run measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GroupReport {
    /// Members of the group.
    pub members: usize,
    /// Messages sent.
    pub messages: usize,
    /// Member-message deliveries expected: `messages × (members − 1)`.
    pub expected: usize,
    /// Member-message deliveries seen (each member's history holds it).
    pub delivered: usize,
    /// Messages some member holds more than once.
    pub duplicates: usize,
    /// Seconds to form the group (all invited, all in the last epoch).
    pub form_secs: f64,
    /// Time from send to each member having the message, ms.
    pub latency_ms: Spread,
    /// Time from send to the last member, per message, ms (p50 and p99 of
    /// these are "time to the last member").
    pub last_member_ms: Spread,
    /// Bytes a sender uploaded per message on the protocols that carry a
    /// post (gossipsub, with its control messages, and mailbox deposits):
    /// what it sent on them from the send until a second after the first
    /// copy left, less what it sends on them in as long when quiet. The DHT's background traffic
    /// and connection framing are left out: on a loaded machine a routing
    /// refresh landing in one of the two seconds swamped the figure.
    pub upload_bytes: f64,
    /// Every byte the sender put on the wire over the same span,
    /// background and framing included (an upper bound).
    pub upload_bytes_raw: f64,
    /// Size of one post (the MLS ciphertext in its envelope), bytes.
    pub post_bytes: f64,
    /// Naive fan-out: one copy per other member, bytes.
    pub naive_bytes: f64,
    /// `upload_bytes / naive_bytes`.
    pub upload_ratio: f64,
    /// `upload_bytes / post_bytes`: copies the sender uploaded.
    pub upload_copies: f64,
}

impl GroupOptions {
    /// `nodes` members, `messages` messages, TCP.
    pub fn new(nodes: usize, messages: usize, seed: u64) -> Self {
        Self {
            nodes,
            messages,
            transport: SimTransport::Tcp,
            invite_batch: 10,
            seed,
        }
    }
}

fn err(e: impl std::fmt::Display) -> SimError {
    SimError::Node {
        index: 0,
        reason: e.to_string(),
    }
}

/// Waits until every node in `who` is active in `group` at `epoch`.
pub async fn wait_epoch(
    net: &SimNet,
    who: &[usize],
    group: GroupId,
    epoch: u64,
    deadline: Duration,
) -> Result<(), SimError> {
    for &i in who {
        let h = net.handle(i).clone();
        wait_until(
            deadline,
            &format!("node {i} in group epoch {epoch}"),
            || {
                let h = h.clone();
                async move {
                    h.group(group)
                        .await
                        .is_ok_and(|g| g.state == GroupState::Active && g.epoch == epoch)
                }
            },
        )
        .await?;
    }
    Ok(())
}

/// Invites `peer`, retrying while its key packages are not in the DHT yet.
pub async fn invite(h: &NodeHandle, group: GroupId, peer: PeerId) -> Result<(), SimError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match h.group_invite(group, peer).await {
            Err(GroupError::NoKeyPackage(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(e) => return Err(err(e)),
            Ok(_) => return Ok(()),
        }
    }
}

/// `owner` creates a group and invites `members`, `batch` per commit
/// (retrying those whose key packages are not in the DHT yet); returns it
/// once every one of them is in the final epoch.
pub async fn form(
    net: &SimNet,
    owner: usize,
    members: &[usize],
    batch: usize,
) -> Result<GroupId, SimError> {
    let h = net.handle(owner);
    let g = h.group_create("sim group", "").await.map_err(err)?;
    for chunk in members.chunks(batch.max(1)) {
        let mut left: Vec<PeerId> = chunk.iter().map(|i| net.peer_id(*i)).collect();
        let deadline = Instant::now() + Duration::from_secs(120);
        while !left.is_empty() {
            match h.group_invite_many(g.id, left.clone()).await {
                Ok(_) | Err(GroupError::NoKeyPackage(_)) => {}
                Err(e) => return Err(err(e)),
            }
            let now_in: Vec<PeerId> = h
                .group_members(g.id)
                .await
                .map_err(err)?
                .into_iter()
                .map(|m| m.peer)
                .collect();
            left.retain(|p| !now_in.contains(p));
            if Instant::now() > deadline {
                return Err(err(format!("no key packages for {left:?}")));
            }
            if !left.is_empty() {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    let epoch = h.group(g.id).await.map_err(err)?.epoch;
    let mut all = vec![owner];
    all.extend_from_slice(members);
    wait_epoch(net, &all, g.id, epoch, Duration::from_secs(300)).await?;
    Ok(g.id)
}

/// Bytes `h` has sent on gossipsub and mailbox streams (the protocols a
/// group post travels on).
async fn multicast_out(h: &NodeHandle) -> Result<u64, SimError> {
    let r = h.bandwidth().await.map_err(err)?;
    Ok(r.meter
        .protocols
        .iter()
        .filter(|p| {
            p.protocol.starts_with("/meshsub") || p.protocol.starts_with("/peercomm/mailbox")
        })
        .map(|p| p.bytes_out)
        .sum())
}

/// Runs the scenario on a fresh network.
pub async fn group_fanout(opts: &GroupOptions) -> Result<GroupReport, SimError> {
    let mut options = SimOptions::new(opts.nodes, Topology::Isolated);
    options.seed = opts.seed;
    options.bootstrap_via = Some(0);
    options.transport = opts.transport;
    // The product's routing-table refresh (5 min), not the tests' 30 s: in
    // a 200-node network on one machine, every node walking every bucket
    // every 30 s was some 2,000 FIND_NODE a second, which held both cores
    // and stretched a post's delivery to 30 s.
    options.config.dht.refresh_interval = peercomm_node::Config::default().dht.refresh_interval;
    let net = SimNet::start(options).await?;
    let result = run(&net, opts).await;
    net.shutdown().await;
    result
}

async fn run(net: &SimNet, opts: &GroupOptions) -> Result<GroupReport, SimError> {
    let n = net.len();
    crate::wait_joined(net, Duration::from_secs(120)).await?;
    let started = Instant::now();
    let owner = 1 % n;
    let members: Vec<usize> = (0..n).filter(|i| *i != owner).collect();
    let group = form(net, owner, &members, opts.invite_batch).await?;
    let form_secs = started.elapsed().as_secs_f64();
    // Let the mesh settle (a few heartbeats) before measuring.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Every member records when each message reached it.
    let seen: Arc<Mutex<HashMap<(usize, i64), Instant>>> = Arc::default();
    let mut watchers = Vec::new();
    for i in 0..n {
        let mut events = net.handle(i).subscribe();
        let seen = seen.clone();
        watchers.push(tokio::spawn(async move {
            while let Ok(event) = events.recv().await {
                if let NodeEvent::GroupMessage { group: g, seq, .. } = event {
                    if g == group {
                        seen.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert((i, seq), Instant::now());
                    }
                }
            }
        }));
    }
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let mut sent = Vec::new();
    let mut upload = 0u64;
    let mut raw_upload = 0u64;
    let mut post_bytes = 0usize;
    for k in 0..opts.messages {
        let sender = rng.gen_range(0..n);
        let body = format!("group message {k} from node {sender}: {}", "x".repeat(120));
        // What the sender uploads anyway on the post's protocols (gossip
        // heartbeats and control) in a quiet second, subtracted from the
        // second after its send.
        let h = net.handle(sender).clone();
        let idle_start = multicast_out(&h).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let idle = multicast_out(&h).await?.saturating_sub(idle_start);
        let before = multicast_out(&h).await?;
        let raw_before = h.stats().wire_bytes_out;
        let at = Instant::now();
        let m = h
            .group_send(group, body.clone().into_bytes())
            .await
            .map_err(err)?;
        // The sender's upload for this message: from the send until a
        // second after its first copy went out (gossip to its mesh, mailbox
        // deposits), less the quiet rate over as long. On a loaded machine
        // (200 nodes sharing 2 cores) the first copy can leave seconds after
        // the send; a post that never leaves fails the run here.
        let post = m.post_bytes as u64;
        let sending = h.clone();
        wait_until(
            Duration::from_secs(60),
            &format!("node {sender} uploading message {k}"),
            || {
                let sending = sending.clone();
                async move {
                    multicast_out(&sending)
                        .await
                        .is_ok_and(|b| b.saturating_sub(before) >= post)
                }
            },
        )
        .await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let window = multicast_out(&h).await?.saturating_sub(before);
        let quiet = (idle as f64 * at.elapsed().as_secs_f64()) as u64;
        upload += window.saturating_sub(quiet);
        raw_upload += h.stats().wire_bytes_out.saturating_sub(raw_before);
        post_bytes = post_bytes.max(m.post_bytes);
        sent.push((sender, body, at, m.id));
    }
    // Every member must hold every message (its own included): wait on the
    // events, then check the histories once.
    let want = opts.messages * n;
    let expected = opts.messages * (n - 1);
    let counter = seen.clone();
    wait_until(
        Duration::from_secs(180),
        "every member has every message",
        || {
            let counter = counter.clone();
            async move { counter.lock().unwrap_or_else(|p| p.into_inner()).len() >= want }
        },
    )
    .await?;
    for w in watchers {
        w.abort();
    }
    // Count deliveries and duplicates; map history seqs to send times.
    let seen = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut delivered = 0;
    let mut duplicates = 0;
    let mut latencies = Vec::new();
    let mut last = Vec::new();
    for (sender, body, at, id) in &sent {
        let mut slowest: f64 = 0.0;
        for i in 0..n {
            let hist = net
                .handle(i)
                .group_history(group, 0, Some(500))
                .await
                .map_err(err)?;
            let copies: Vec<_> = hist.iter().filter(|m| m.body == body.as_bytes()).collect();
            if copies.len() > 1 {
                duplicates += 1;
            }
            if i == *sender {
                continue;
            }
            if let Some(m) = copies.first() {
                delivered += 1;
                if m.id != *id {
                    return Err(err(format!("node {i} has another id for a message")));
                }
                if let Some(t) = seen.get(&(i, m.seq)) {
                    let ms = t.saturating_duration_since(*at).as_secs_f64() * 1000.0;
                    latencies.push(ms);
                    slowest = slowest.max(ms);
                }
            }
        }
        last.push(slowest);
    }
    let upload_bytes = upload as f64 / opts.messages.max(1) as f64;
    let naive_bytes = (post_bytes * (n - 1)) as f64;
    Ok(GroupReport {
        members: n,
        messages: opts.messages,
        expected,
        delivered,
        duplicates,
        form_secs,
        latency_ms: Spread::of(&latencies),
        last_member_ms: Spread::of(&last),
        upload_bytes,
        upload_bytes_raw: raw_upload as f64 / opts.messages.max(1) as f64,
        post_bytes: post_bytes as f64,
        naive_bytes,
        upload_ratio: upload_bytes / naive_bytes.max(1.0),
        upload_copies: upload_bytes / (post_bytes as f64).max(1.0),
    })
}
