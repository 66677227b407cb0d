//! Offline delivery under churn: senders keep sending while recipients go
//! offline (half gracefully, half by crashing) and return at random times.
//! Every message must reach its recipient exactly once and come back as
//! `delivered`.
//!
//! Used by the churn test (`crates/node/tests/offline_churn.rs`) and by
//! `peercomm bench offline`, which prints the figures.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use peercomm_node::{Clock, DeliveryState, InboxQuery, MessageId, SendOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::scale::Spread;
use crate::{test_config, SimError, SimNet, SimOptions, SimTransport, Topology};

/// What to run.
#[derive(Debug, Clone)]
pub struct OfflineOptions {
    /// Nodes that only send (and serve as mailboxes); never go offline.
    pub senders: usize,
    /// Nodes that receive, and go offline and return at random.
    pub recipients: usize,
    /// Messages in all, spread evenly over `window`, each to a recipient in
    /// turn from a random sender.
    pub messages: usize,
    /// How long the sending lasts.
    pub window: Duration,
    /// Each recipient is away once, for a random time in this range,
    /// starting at a random time in the window.
    pub away: (Duration, Duration),
    /// How long, after the window, everything may take to arrive.
    pub deadline: Duration,
    /// Seed for every random choice.
    pub seed: u64,
}

impl OfflineOptions {
    /// `messages` to `recipients` from 6 senders over 20 s, each recipient
    /// away 2 to 8 s.
    pub fn new(recipients: usize, messages: usize, seed: u64) -> Self {
        Self {
            senders: 6,
            recipients,
            messages,
            window: Duration::from_secs(20),
            away: (Duration::from_secs(2), Duration::from_secs(8)),
            deadline: Duration::from_secs(180),
            seed,
        }
    }
}

/// What a run measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct OfflineReport {
    /// Nodes in the network.
    pub nodes: usize,
    /// Messages sent.
    pub messages: usize,
    /// Of those, sent while their recipient was away.
    pub sent_while_away: usize,
    /// Messages in their recipient's inbox (first copies).
    pub received: usize,
    /// Inbox rows beyond the first for one message (must be 0).
    pub duplicates: usize,
    /// Messages their sender saw `delivered`.
    pub delivered: usize,
    /// received / messages.
    pub delivery_rate: f64,
    /// From the recipient's return to the message in its inbox, for
    /// messages sent while it was away, in milliseconds.
    pub after_return_ms: Spread,
    /// The same, for the messages that waited at mailboxes.
    pub after_return_from_mailboxes_ms: Spread,
    /// Replicas that accepted each message deposited at mailboxes.
    pub replicas: Spread,
    /// Messages that went through mailboxes (deposited at least once).
    pub deposited: usize,
    /// Copies mailboxes made at other mailboxes (re-replication).
    pub replicated: u64,
    /// Wall-clock seconds from the first send until all had arrived.
    pub elapsed_s: f64,
}

/// One step of the schedule.
#[derive(Debug, Clone, Copy)]
enum Step {
    Away { node: usize, crash: bool },
    Back { node: usize },
    Send { message: usize },
}

/// Runs the scenario. `progress` gets a line now and then.
pub async fn offline_churn(
    options: &OfflineOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<OfflineReport, SimError> {
    let nodes = options.senders + options.recipients;
    let mut config = test_config();
    // Production timers but for handoffs, which should happen within the
    // run (and routing-table refreshes: all nodes share two cores).
    config.mailbox.replicate_interval = Duration::from_secs(10);
    config.dht.refresh_interval = Duration::from_secs(300);
    let mut sim = SimOptions::new(nodes, Topology::Isolated);
    sim.seed = options.seed;
    sim.transport = SimTransport::Tcp;
    sim.bootstrap_via = Some(0);
    sim.config = config;
    let mut net = SimNet::start(sim).await?;
    for i in 0..nodes {
        let handle = net.handle(i).clone();
        crate::wait_until(
            Duration::from_secs(120),
            &format!("node {i} joined"),
            || {
                let handle = handle.clone();
                async move { handle.dht_stats().await.is_ok_and(|s| s.joined) }
            },
        )
        .await?;
    }
    progress(&format!("{nodes} nodes joined"));

    let mut rng = StdRng::seed_from_u64(options.seed);
    let recipients: Vec<usize> = (options.senders..nodes).collect();
    let mut schedule: Vec<(Duration, Step)> = Vec::new();
    let window = options.window.as_secs_f64();
    for &node in &recipients {
        let (lo, hi) = (options.away.0.as_secs_f64(), options.away.1.as_secs_f64());
        let length = rng.gen_range(lo..=hi.max(lo));
        let at = rng.gen_range(0.0..(window - length).max(0.1));
        let crash = rng.gen_bool(0.5);
        schedule.push((Duration::from_secs_f64(at), Step::Away { node, crash }));
        schedule.push((Duration::from_secs_f64(at + length), Step::Back { node }));
    }
    for message in 0..options.messages {
        let at = window * message as f64 / options.messages.max(1) as f64;
        schedule.push((Duration::from_secs_f64(at), Step::Send { message }));
    }
    schedule.sort_by_key(|(at, _)| *at);

    // Per message: (sender, recipient, id, away when sent).
    let mut sent: Vec<(usize, usize, MessageId, bool)> = Vec::with_capacity(options.messages);
    // Per recipient: (left at, returned at), in clock ms.
    let mut absences: HashMap<usize, (u64, Option<u64>)> = HashMap::new();
    let start = Instant::now();
    for (at, step) in schedule {
        if let Some(wait) = at.checked_sub(start.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        let now = net.clock().now_ms();
        match step {
            Step::Away { node, crash } => {
                absences.insert(node, (now, None));
                if crash {
                    net.kill(node)?;
                } else {
                    net.stop(node).await?;
                }
            }
            Step::Back { node } => {
                net.restart(node).await?;
                if let Some(absence) = absences.get_mut(&node) {
                    absence.1 = Some(net.clock().now_ms());
                }
            }
            Step::Send { message } => {
                let recipient = recipients[message % recipients.len()];
                let sender = rng.gen_range(0..options.senders);
                let away = !net.is_running(recipient);
                let id = net
                    .handle(sender)
                    .send(
                        net.peer_id(recipient),
                        body(message),
                        SendOptions::default(),
                    )
                    .await
                    .map_err(|e| SimError::Node {
                        index: sender,
                        reason: e.to_string(),
                    })?;
                sent.push((sender, recipient, id, away));
                if (message + 1) % 250 == 0 {
                    progress(&format!("{} messages sent", message + 1));
                }
            }
        }
    }
    progress("every recipient is back; waiting for the rest to arrive");

    // Wait until every recipient holds its messages and every sender saw
    // its receipts.
    let deadline = Instant::now() + options.deadline;
    let (mut inboxes, mut delivered);
    loop {
        inboxes = read_inboxes(&net, &recipients).await?;
        delivered = count_delivered(&net, &sent).await;
        let received = (0..options.messages)
            .filter(|m| inboxes.contains_key(&body(*m)))
            .count();
        if (received == options.messages && delivered == options.messages)
            || Instant::now() >= deadline
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let elapsed_s = start.elapsed().as_secs_f64();

    let mut report = OfflineReport {
        nodes,
        messages: options.messages,
        delivered,
        elapsed_s,
        ..OfflineReport::default()
    };
    // Replicas per message (`None`: never deposited).
    let mut replicas = Vec::with_capacity(sent.len());
    for (sender, _, id, _) in &sent {
        let row = net.handle(*sender).message_state(*id).await.ok().flatten();
        replicas.push(row.and_then(|m| m.replicas));
    }
    let (mut after_return, mut from_mailboxes) = (Vec::new(), Vec::new());
    for (message, (_, recipient, _, away)) in sent.iter().enumerate() {
        let Some(rows) = inboxes.get(&body(message)) else {
            continue;
        };
        report.received += 1;
        report.duplicates += rows.len() - 1;
        if *away {
            report.sent_while_away += 1;
            if let Some((_, Some(back))) = absences.get(recipient) {
                let first = rows.iter().min().copied().unwrap_or(*back);
                let took = first.saturating_sub(*back) as f64;
                after_return.push(took);
                if replicas[message].is_some() {
                    from_mailboxes.push(took);
                }
            }
        }
    }
    report.delivery_rate = report.received as f64 / options.messages.max(1) as f64;
    report.after_return_ms = Spread::of(&after_return);
    report.after_return_from_mailboxes_ms = Spread::of(&from_mailboxes);
    let replicas: Vec<f64> = replicas.into_iter().flatten().map(f64::from).collect();
    report.deposited = replicas.len();
    report.replicas = Spread::of(&replicas);
    report.replicated = (0..nodes)
        .filter(|i| net.is_running(*i))
        .map(|i| net.handle(i).stats().mailbox_replicated)
        .sum();
    net.shutdown().await;
    Ok(report)
}

fn body(message: usize) -> Vec<u8> {
    format!("offline-churn message {message}").into_bytes()
}

/// Each body in the recipients' inboxes, with the times its rows arrived.
async fn read_inboxes(
    net: &SimNet,
    recipients: &[usize],
) -> Result<HashMap<Vec<u8>, Vec<u64>>, SimError> {
    let mut out: HashMap<Vec<u8>, Vec<u64>> = HashMap::new();
    for &i in recipients {
        let mut after = None;
        // Bounded: a recipient holds at most every message.
        for _ in 0..1000 {
            let page = net
                .handle(i)
                .inbox(InboxQuery {
                    after,
                    limit: Some(500),
                    ..InboxQuery::default()
                })
                .await
                .map_err(|e| SimError::Node {
                    index: i,
                    reason: e.to_string(),
                })?;
            let Some(last) = page.last() else {
                break;
            };
            after = Some(last.seq);
            for m in page {
                out.entry(m.body).or_default().push(m.received_ms);
            }
        }
    }
    Ok(out)
}

async fn count_delivered(net: &SimNet, sent: &[(usize, usize, MessageId, bool)]) -> usize {
    let mut n = 0;
    for (sender, _, id, _) in sent {
        if let Ok(Some(m)) = net.handle(*sender).message_state(*id).await {
            n += usize::from(m.state == DeliveryState::Delivered);
        }
    }
    n
}
