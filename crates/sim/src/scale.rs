//! The DHT at scale: many nodes in one process on the memory transport,
//! lookups measured against the Kademlia bound, then churn.
//!
//! Used by the scale test (small N in CI) and by `peercomm bench dht`, which
//! prints the figures for any N the machine can hold.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;

use crate::{has_joined, test_config, SimError, SimNet, SimOptions, SimTransport, Topology};

/// What to run.
#[derive(Debug, Clone)]
pub struct DhtScaleOptions {
    /// Nodes in the network.
    pub nodes: usize,
    /// Lookups before churn, and again after it.
    pub lookups: usize,
    /// Fraction of nodes that leave abruptly before the second round.
    pub churn: f64,
    /// Seed for every random choice.
    pub seed: u64,
    /// How long the whole network may take to form.
    pub join_timeout: Duration,
    /// Nodes started before waiting for the ones in flight to join.
    pub wave: usize,
    /// Each node's routing-table refresh interval.
    pub refresh_interval: Duration,
    /// How long the formed network is watched idle for its CPU use.
    pub idle: Duration,
    /// Bootstrap peers each new node is given: this many nodes picked at
    /// random among those that have joined (node 0 for the first ones), as
    /// a deployment ships several bootstrap addresses.
    pub bootstrap_peers: usize,
    /// How long an unused connection stays open
    /// (`network.idle_connection_timeout`).
    pub idle_connection_timeout: Duration,
}

impl DhtScaleOptions {
    /// `nodes` nodes, 2 lookups per node (at most 1,000), 20% churn.
    pub fn new(nodes: usize, seed: u64) -> Self {
        Self {
            nodes,
            lookups: (nodes * 2).clamp(20, 1000),
            churn: 0.2,
            seed,
            join_timeout: Duration::from_secs(1800),
            wave: 50,
            refresh_interval: Duration::from_secs(300),
            idle: Duration::from_secs(5),
            bootstrap_peers: 3,
            idle_connection_timeout: peercomm_node::Config::default()
                .network
                .idle_connection_timeout,
        }
    }
}

/// Percentiles of a set of figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Spread {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

/// `values` sorted, for [`quantile`].
pub(crate) fn sorted(values: &[f64]) -> Vec<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v
}

/// The `q` quantile (0 to 1, nearest rank) of `sorted` values; 0 if empty.
pub(crate) fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

impl Spread {
    /// The spread of `values` (empty: all zero).
    pub fn of(values: &[f64]) -> Self {
        let v = sorted(values);
        let at = |q: f64| quantile(&v, q);
        Self {
            p50: at(0.5),
            p95: at(0.95),
            p99: at(0.99),
            max: at(1.0),
        }
    }
}

/// One round of lookups.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LookupRound {
    /// Lookups made.
    pub lookups: usize,
    /// Of those, how many returned the right, verified record.
    pub found: usize,
    /// Of those found, how many the asker answered from its own record
    /// store (it was one of the record's holders) without a request.
    pub answered_locally: usize,
    /// Kademlia requests each lookup that went to the network sent.
    pub requests: Spread,
    /// Hops of the lookups that went to the network: rounds of `alpha`
    /// parallel requests (requests / alpha, rounded up), the figure the
    /// Kademlia bound speaks of.
    pub hops: Spread,
    /// Lookup latency in milliseconds.
    pub latency_ms: Spread,
}

impl LookupRound {
    /// Found / lookups.
    pub fn success(&self) -> f64 {
        if self.lookups == 0 {
            return 0.0;
        }
        self.found as f64 / self.lookups as f64
    }
}

/// What a scale run measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DhtScaleReport {
    /// Nodes started.
    pub nodes: usize,
    /// k (bucket size, replication).
    pub k: usize,
    /// Lookup parallelism.
    pub alpha: usize,
    /// Seconds until every node had joined and published its record.
    pub formed_secs: f64,
    /// Seconds from a node's start until it had joined and published.
    pub join_secs: Spread,
    /// CPU seconds the whole process used while the network formed, per
    /// node: what one join costs the network (the joiner and every node it
    /// talks to), idle upkeep of the nodes already up included.
    pub formation_cpu_secs_per_node: f64,
    /// Connections each node opened or accepted while the network formed
    /// (mean; each one exchanges peer records, so this counts the records
    /// received: accepted, refused or unchanged).
    pub connections_opened_per_node: f64,
    /// Kademlia requests each node sent to fill its routing table while the
    /// network formed (mean): bootstrap self-lookups and bucket refreshes,
    /// full or lean (DHT tuning).
    pub refresh_requests_per_node: f64,
    /// Bootstrap peers each new node was given.
    pub bootstrap_peers: usize,
    /// How long an unused connection stayed open, seconds.
    pub idle_connection_timeout_secs: f64,
    /// Resident memory added per node, KiB.
    pub rss_kib_per_node: f64,
    /// Open connections per node once the network had formed (mean).
    pub connections_per_node: f64,
    /// DHT records each node held once the network had formed (mean; a
    /// record lives on about k nodes, so this is near k).
    pub records_per_node: f64,
    /// CPU the whole formed network used while idle, in percent of one
    /// core, over a 5 s window: the background cost of keeping it up.
    pub idle_cpu_percent: f64,
    /// Open connections per node at the end of that idle window (mean):
    /// what stays open once the joins' connections have gone idle.
    pub connections_after_idle: f64,
    /// log2(N) / log2(k): the expected number of hops.
    pub hop_bound: f64,
    /// Lookups with every node up.
    pub before_churn: LookupRound,
    /// Nodes that left abruptly.
    pub left: usize,
    /// Lookups for live peers after they left.
    pub after_churn: LookupRound,
}

/// CPU time this process has used (user + system), in seconds (Linux; 0
/// elsewhere).
pub fn cpu_secs() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which is in parentheses).
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    let ticks: f64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum())
        .unwrap_or(0.0);
    ticks / 100.0
}

/// Resident memory of this process in KiB (Linux; 0 elsewhere).
pub fn rss_kib() -> u64 {
    status_kib("VmRSS:")
}

/// Peak resident memory of this process in KiB (Linux; 0 elsewhere).
pub fn peak_rss_kib() -> u64 {
    status_kib("VmHWM:")
}

/// A KiB figure of `/proc/self/status` (0 if there is none).
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// The configuration of a scale node: test timings, but no delivery work
/// to speak of, rare pings and the given refresh interval.
fn scale_config(options: &DhtScaleOptions) -> peercomm_node::Config {
    let mut config = test_config();
    config.delivery.tick = Duration::from_secs(1);
    config.dht.refresh_interval = options.refresh_interval;
    config.network.idle_connection_timeout = options.idle_connection_timeout;
    // No groups here: the gossipsub heartbeat at its default, not the fast
    // one group tests use.
    config.groups.heartbeat = peercomm_node::Config::default().groups.heartbeat;
    // Every lookup asks the network: no answers from the cache.
    config.dht.cache_ttl = Duration::ZERO;
    // Thousands of connections in one process: round-trip probes are the
    // bulk of an idle network's work and tell a scale run nothing.
    config.network.ping_interval = Duration::from_secs(300);
    config
}

/// Runs the scale scenario; `progress` hears a line now and then.
pub async fn dht_scale(
    options: &DhtScaleOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<DhtScaleReport, SimError> {
    let mut rng = StdRng::seed_from_u64(options.seed);
    let config = scale_config(options);
    let (k, alpha) = (config.dht.k, config.dht.alpha);
    let mut sim = SimOptions::new(1, Topology::Isolated);
    sim.seed = options.seed;
    sim.transport = SimTransport::Memory;
    sim.config = config;
    let (rss_before, cpu_at_start) = (rss_kib(), cpu_secs());
    let started = Instant::now();
    let mut net = SimNet::start(sim).await?;
    let mut spawned_at = vec![Instant::now()];
    let mut joined_at: Vec<Option<Instant>> = vec![None];
    let mut joined_nodes: Vec<usize> = Vec::new();
    let deadline = started + options.join_timeout;
    // Start nodes in waves, each through a few nodes that have joined (the
    // first through node 0); a wave's nodes join while the next one starts.
    while net.len() < options.nodes || joined_at.iter().any(Option::is_none) {
        let wave_end = (net.len() + options.wave.max(1)).min(options.nodes);
        while net.len() < wave_end {
            let through: Vec<usize> = if joined_nodes.is_empty() {
                vec![0]
            } else {
                joined_nodes
                    .choose_multiple(&mut rng, options.bootstrap_peers.max(1))
                    .copied()
                    .collect()
            };
            net.spawn_through(&through).await?;
            spawned_at.push(Instant::now());
            joined_at.push(None);
        }
        for (i, at) in joined_at.iter_mut().enumerate() {
            if at.is_none() && has_joined(net.handle(i)).await {
                *at = Some(Instant::now());
                joined_nodes.push(i);
            }
        }
        let joined = joined_at.iter().filter(|j| j.is_some()).count();
        progress(&format!(
            "{} of {} nodes started, {joined} joined, {:.0}s",
            net.len(),
            options.nodes,
            started.elapsed().as_secs_f64()
        ));
        if Instant::now() >= deadline {
            return Err(SimError::Timeout(
                options.join_timeout,
                format!("all of {} nodes to join ({joined} did)", options.nodes),
            ));
        }
        if net.len() >= options.nodes {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let formed_secs = started.elapsed().as_secs_f64();
    let formation_cpu = cpu_secs() - cpu_at_start;
    let rss_after = rss_kib();
    let join: Vec<f64> = spawned_at
        .iter()
        .zip(&joined_at)
        .filter_map(|(s, j)| j.map(|j| j.duration_since(*s).as_secs_f64()))
        .collect();

    let all: Vec<usize> = (0..options.nodes).collect();
    let connections = open_connections(&net, &all).await;
    let (mut records, mut opened, mut refresh_requests) = (0usize, 0u64, 0u64);
    for i in &all {
        let stats = net.handle(*i).stats();
        opened += stats.records_accepted + stats.records_rejected + stats.records_unchanged;
        refresh_requests += stats.dht_refresh_requests;
        records += net
            .handle(*i)
            .dht_stats()
            .await
            .map(|s| s.records_held)
            .unwrap_or(0);
    }
    let (cpu_before, idle_start) = (cpu_secs(), Instant::now());
    tokio::time::sleep(options.idle).await;
    let idle_cpu_percent =
        100.0 * (cpu_secs() - cpu_before) / idle_start.elapsed().as_secs_f64().max(0.001);
    let after_idle = open_connections(&net, &all).await;
    progress(&format!(
        "formed in {formed_secs:.0}s, {:.1} connections per node, idle CPU {idle_cpu_percent:.0}%; {} lookups",
        connections as f64 / options.nodes.max(1) as f64,
        options.lookups
    ));
    let before_churn = lookup_round(&net, &all, options.lookups, alpha, &mut rng).await;

    let mut leaving: Vec<usize> = all.clone();
    leaving.shuffle(&mut rng);
    leaving.truncate((options.nodes as f64 * options.churn) as usize);
    for &i in &leaving {
        net.kill(i)?;
    }
    let live: Vec<usize> = all.iter().copied().filter(|i| net.is_running(*i)).collect();
    progress(&format!(
        "{} nodes left abruptly; {} lookups for live peers",
        leaving.len(),
        options.lookups
    ));
    let after_churn = lookup_round(&net, &live, options.lookups, alpha, &mut rng).await;
    net.shutdown().await;
    let n = options.nodes.max(1) as f64;
    Ok(DhtScaleReport {
        nodes: options.nodes,
        k,
        alpha,
        formed_secs,
        join_secs: Spread::of(&join),
        formation_cpu_secs_per_node: formation_cpu / n,
        connections_opened_per_node: opened as f64 / n,
        refresh_requests_per_node: refresh_requests as f64 / n,
        bootstrap_peers: options.bootstrap_peers,
        idle_connection_timeout_secs: options.idle_connection_timeout.as_secs_f64(),
        rss_kib_per_node: rss_after.saturating_sub(rss_before) as f64 / n,
        connections_per_node: connections as f64 / n,
        records_per_node: records as f64 / n,
        idle_cpu_percent,
        connections_after_idle: after_idle as f64 / n,
        hop_bound: n.log2() / (k.max(2) as f64).log2(),
        before_churn,
        left: leaving.len(),
        after_churn,
    })
}

/// Connections open at the `nodes`, summed (each counted at both ends).
async fn open_connections(net: &SimNet, nodes: &[usize]) -> usize {
    let mut open = 0;
    for i in nodes {
        open += net.handle(*i).peers().await.map(|p| p.len()).unwrap_or(0);
    }
    open
}

/// `lookups` lookups, one at a time, each from a random node among `among`
/// for another random one; requests counted from the asker's counters.
async fn lookup_round(
    net: &SimNet,
    among: &[usize],
    lookups: usize,
    alpha: usize,
    rng: &mut StdRng,
) -> LookupRound {
    let mut round = LookupRound::default();
    let (mut requests, mut hops, mut latency) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..lookups {
        let pair: Vec<usize> = among.choose_multiple(rng, 2).copied().collect();
        let [from, to] = pair[..] else {
            break;
        };
        let asker = net.handle(from);
        let target = net.peer_id(to);
        let before = asker.stats().dht_lookup_requests;
        let t = Instant::now();
        let found = asker
            .find_peer(target)
            .await
            .is_ok_and(|r| r.peer_id == target);
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        let sent = asker.stats().dht_lookup_requests.saturating_sub(before) as f64;
        round.lookups += 1;
        if found {
            round.found += 1;
            latency.push(ms);
            // A record the asker holds itself takes no request; such
            // answers are counted apart so they do not flatter the hops.
            if sent == 0.0 {
                round.answered_locally += 1;
                continue;
            }
            requests.push(sent);
            hops.push((sent / alpha.max(1) as f64).ceil());
        }
    }
    round.requests = Spread::of(&requests);
    round.hops = Spread::of(&hops);
    round.latency_ms = Spread::of(&latency);
    round
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_are_order_statistics() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = Spread::of(&v);
        assert_eq!(s.p50, 51.0);
        assert_eq!(s.p95, 95.0);
        assert_eq!(s.p99, 99.0);
        assert_eq!(s.max, 100.0);
        assert_eq!(Spread::of(&[]), Spread::default());
    }
}
