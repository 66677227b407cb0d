//! `peercomm bench`: measurements on a local simulated network.

use std::time::Duration;

use anyhow::{bail, Context};
use peercomm_sim::bandwidth::{
    bandwidth as bandwidth_runs, BandwidthOptions, BandwidthReport, Mechanism, RunReport,
    DEFAULT_SEED,
};
use peercomm_sim::load::{LoadKind, LoadOptions, LoadReport};
use peercomm_sim::mls_cost::{mls_costs, MlsCost, MlsCostOptions, MlsCostReport, MIN_MEMBERS};
use peercomm_sim::offline::{offline_churn, OfflineOptions, OfflineReport};
use peercomm_sim::scale::{dht_scale, DhtScaleOptions, DhtScaleReport, LookupRound, Spread};

/// `peercomm bench dht`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct DhtBenchArgs {
    /// Nodes in the network (one process, libp2p's memory transport).
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// Lookups before churn, and again after it [default: 2 per node, at most 1,000].
    #[arg(long)]
    lookups: Option<usize>,
    /// Fraction of nodes that leave abruptly before the second round of lookups.
    #[arg(long, default_value_t = 0.2)]
    churn: f64,
    /// Seed for every random choice (random if not given).
    #[arg(long)]
    seed: Option<u64>,
    /// Give up if the network has not formed after this long.
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    join_timeout: Duration,
    /// Each node's routing-table refresh (a bootstrap lookup) interval. All
    /// nodes share this machine's cores, so N nodes refresh N times as often
    /// as one real node would see.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    refresh_interval: Duration,
    /// How long the formed network is watched doing nothing for the idle
    /// CPU figure (longer windows are steadier, and leave time to profile).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    idle: Duration,
    /// Bootstrap peers each new node is given, picked at random among the
    /// nodes that have joined (1: every node joins through one of them).
    #[arg(long, default_value_t = 3)]
    bootstrap_peers: usize,
    /// How long an unused connection stays open on every node
    /// (`network.idle_connection_timeout`) [default: the node default, 2m].
    #[arg(long, value_parser = humantime::parse_duration)]
    idle_connection_timeout: Option<Duration>,
}

/// Runs the DHT scale benchmark and prints its figures.
pub(crate) async fn dht(args: DhtBenchArgs, json: bool) -> anyhow::Result<()> {
    if args.nodes < 3 {
        bail!("--nodes must be at least 3 (got {})", args.nodes);
    }
    if !(0.0..0.9).contains(&args.churn) {
        bail!(
            "--churn is a fraction below 0.9, e.g. 0.2 (got {})",
            args.churn
        );
    }
    let seed = args.seed.unwrap_or_else(rand::random);
    let mut options = DhtScaleOptions::new(args.nodes, seed);
    if let Some(lookups) = args.lookups {
        options.lookups = lookups.max(1);
    }
    options.churn = args.churn;
    options.join_timeout = args.join_timeout;
    if args.refresh_interval.is_zero() {
        bail!("--refresh-interval must be above zero, e.g. 5m");
    }
    options.refresh_interval = args.refresh_interval;
    if args.idle.is_zero() {
        bail!("--idle must be above zero, e.g. 5s");
    }
    options.idle = args.idle;
    if args.bootstrap_peers == 0 {
        bail!("--bootstrap-peers must be at least 1 (got 0)");
    }
    options.bootstrap_peers = args.bootstrap_peers;
    if let Some(timeout) = args.idle_connection_timeout {
        if timeout.is_zero() {
            bail!("--idle-connection-timeout must be above zero, e.g. 30s");
        }
        options.idle_connection_timeout = timeout;
    }
    if !json {
        println!(
            "peercomm bench dht: {} nodes on the memory transport (seed {seed})",
            args.nodes
        );
    }
    let mut progress = |line: &str| {
        if !json {
            println!("  {line}");
        }
    };
    let report = dht_scale(&options, &mut progress).await?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

fn print_round(name: &str, r: &LookupRound) {
    println!(
        "  {name:<13} {}/{} found ({:.2}%), {} from the asker's own store; \
         over the network: hops p50 {:.0} p95 {:.0} max {:.0}, \
         requests p50 {:.0} p95 {:.0}; latency p50 {:.1} ms p99 {:.1} ms",
        r.found,
        r.lookups,
        r.success() * 100.0,
        r.answered_locally,
        r.hops.p50,
        r.hops.p95,
        r.hops.max,
        r.requests.p50,
        r.requests.p95,
        r.latency_ms.p50,
        r.latency_ms.p99,
    );
}

fn print_report(r: &DhtScaleReport) {
    println!(
        "  network       {} nodes formed in {:.0} s; join p50 {:.1} s p95 {:.1} s; {:.1} MiB per node",
        r.nodes,
        r.formed_secs,
        r.join_secs.p50,
        r.join_secs.p95,
        r.rss_kib_per_node / 1024.0
    );
    println!(
        "  joining       {:.2} CPU s per node joined; {:.0} connections opened and {:.0} \
         table-filling requests sent per node; {} bootstrap peers each; idle connections \
         close after {:.0} s",
        r.formation_cpu_secs_per_node,
        r.connections_opened_per_node,
        r.refresh_requests_per_node,
        r.bootstrap_peers,
        r.idle_connection_timeout_secs
    );
    println!(
        "  upkeep        {:.1} connections and {:.1} DHT records per node; idle network CPU {:.0}% of a core; \
         {:.1} connections per node after the idle window",
        r.connections_per_node, r.records_per_node, r.idle_cpu_percent, r.connections_after_idle
    );
    println!(
        "  bound         log2(N)/log2(k) = {:.2} hops (k = {}, alpha = {})",
        r.hop_bound, r.k, r.alpha
    );
    print_round("lookups", &r.before_churn);
    print_round(&format!("after churn ({} left)", r.left), &r.after_churn);
}

/// `peercomm bench offline`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct OfflineBenchArgs {
    /// Recipients, each going offline once (half by crashing) and returning.
    #[arg(long, default_value_t = 50)]
    recipients: usize,
    /// Senders (never offline; they and the recipients are the mailboxes).
    #[arg(long, default_value_t = 6)]
    senders: usize,
    /// Messages in all, spread over the window, to the recipients in turn.
    #[arg(long, default_value_t = 1000)]
    messages: usize,
    /// How long the sending lasts.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    window: Duration,
    /// Each recipient is away for a random time between this...
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    away_min: Duration,
    /// ...and this.
    #[arg(long, default_value = "8s", value_parser = humantime::parse_duration)]
    away_max: Duration,
    /// Seed for every random choice (random if not given).
    #[arg(long)]
    seed: Option<u64>,
}

/// Runs the offline-delivery churn benchmark and prints its figures.
pub(crate) async fn offline(args: OfflineBenchArgs, json: bool) -> anyhow::Result<()> {
    if args.recipients == 0 || args.senders == 0 || args.messages == 0 {
        bail!("--recipients, --senders and --messages must each be at least 1");
    }
    if args.away_min > args.away_max || args.away_max >= args.window {
        bail!(
            "need --away-min <= --away-max < --window (got {}, {}, {})",
            humantime::format_duration(args.away_min),
            humantime::format_duration(args.away_max),
            humantime::format_duration(args.window)
        );
    }
    let seed = args.seed.unwrap_or_else(rand::random);
    let mut options = OfflineOptions::new(args.recipients, args.messages, seed);
    options.senders = args.senders;
    options.window = args.window;
    options.away = (args.away_min, args.away_max);
    if !json {
        println!(
            "peercomm bench offline: {} messages to {} recipients from {} senders over {}, \
             real nodes on loopback TCP (seed {seed})",
            args.messages,
            args.recipients,
            args.senders,
            humantime::format_duration(args.window)
        );
    }
    let mut progress = |line: &str| {
        if !json {
            println!("  {line}");
        }
    };
    let report = offline_churn(&options, &mut progress).await?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_offline(&report);
    }
    Ok(())
}

fn spread_ms(s: &Spread) -> String {
    format!(
        "p50 {:.0} ms p95 {:.0} ms p99 {:.0} ms max {:.0} ms",
        s.p50, s.p95, s.p99, s.max
    )
}

fn print_offline(r: &OfflineReport) {
    println!(
        "  delivered     {}/{} received ({:.2}%), {} duplicates, {} receipts back at the senders",
        r.received,
        r.messages,
        r.delivery_rate * 100.0,
        r.duplicates,
        r.delivered
    );
    println!(
        "  away          {} sent while the recipient was away; {} went through mailboxes \
         (replicas p50 {:.0}, max {:.0}); {} copies re-replicated",
        r.sent_while_away, r.deposited, r.replicas.p50, r.replicas.max, r.replicated
    );
    println!("  after return  {}", spread_ms(&r.after_return_ms));
    println!(
        "  from mailboxes {}",
        spread_ms(&r.after_return_from_mailboxes_ms)
    );
    println!("  elapsed       {:.1} s", r.elapsed_s);
}

/// `peercomm bench mls`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct MlsBenchArgs {
    /// Group sizes (members, owner included), comma-separated; each is
    /// measured on its own group.
    #[arg(long, value_delimiter = ',', default_value = "50,200,1000")]
    sizes: Vec<usize>,
    /// Samples of each operation; every figure is their median.
    #[arg(long, default_value_t = 5)]
    samples: usize,
    /// Seed for the members' identities and the message payloads (random if
    /// not given; OpenMLS's own key generation is never seeded).
    #[arg(long)]
    seed: Option<u64>,
}

/// Measures MLS (RFC 9420) operations at each group size and prints the
/// figures.
pub(crate) async fn mls(args: MlsBenchArgs, json: bool) -> anyhow::Result<()> {
    if args.sizes.is_empty() {
        bail!("--sizes needs at least one group size, e.g. 50,200,1000");
    }
    if let Some(n) = args.sizes.iter().find(|n| **n < MIN_MEMBERS) {
        bail!("each group size must be at least {MIN_MEMBERS} (got {n})");
    }
    if args.samples == 0 {
        bail!("--samples must be at least 1");
    }
    let seed = args.seed.unwrap_or_else(rand::random);
    if !json {
        println!(
            "peercomm bench mls: OpenMLS, MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519, \
             in-memory storage, one thread; medians of {} samples (seed {seed})",
            args.samples
        );
    }
    let mut sizes = Vec::with_capacity(args.sizes.len());
    for &members in &args.sizes {
        let options = MlsCostOptions {
            sizes: vec![members],
            samples: args.samples,
            seed,
        };
        let started = std::time::Instant::now();
        let report = tokio::task::spawn_blocking(move || mls_costs(&options))
            .await
            .context("the measuring thread failed")??;
        if !json {
            println!(
                "  {members} members measured in {:.1} s",
                started.elapsed().as_secs_f64()
            );
        }
        sizes.extend(report.sizes);
    }
    let report = MlsCostReport { sizes };
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_mls(&report);
    }
    Ok(())
}

fn mls_row(c: &MlsCost) -> [String; 11] {
    [
        c.members.to_string(),
        format!("{:.1}", c.build_ms),
        format!("{:.2}", c.add_member_ms),
        format!("{:.2}", c.commit_ms),
        format!("{:.2}", c.process_commit_ms),
        format!("{:.2}", c.join_ms),
        format!("{:.0}", c.encrypt_us),
        format!("{:.0}", c.decrypt_us),
        c.commit_bytes.to_string(),
        c.welcome_bytes.to_string(),
        c.ratchet_tree_bytes.to_string(),
    ]
}

fn print_mls(r: &MlsCostReport) {
    let header = [
        "members",
        "build ms",
        "add member ms",
        "commit ms",
        "process commit ms",
        "join ms",
        "encrypt µs",
        "decrypt µs",
        "commit bytes",
        "welcome bytes",
        "tree bytes",
    ];
    let rows: Vec<Vec<String>> = r.sizes.iter().map(|c| mls_row(c).to_vec()).collect();
    print_table(&header, &rows, false);
    println!(
        "  build: the owner creates the group and adds everyone else in one commit (one run). \
         add member / commit: the owner creates, serializes and merges (commit = a rekey with \
         a path); process commit / join / decrypt: another member deserializes and applies. \
         As in the node, the ratchet tree travels beside the Welcome: a joiner receives \
         welcome bytes + tree bytes."
    );
}

/// `peercomm bench groups`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct GroupBenchArgs {
    /// Members (one per node; every node joins).
    #[arg(long, default_value_t = 50)]
    members: usize,
    /// Messages, each from a random member.
    #[arg(long, default_value_t = 5)]
    messages: usize,
    /// Members added per commit while the group forms.
    #[arg(long, default_value_t = 10)]
    invite_batch: usize,
    /// Run over the in-process memory transport instead of loopback TCP.
    #[arg(long)]
    memory: bool,
    /// Seed for every random choice (random if not given).
    #[arg(long)]
    seed: Option<u64>,
}

/// Runs the group multicast benchmark and prints its figures.
pub(crate) async fn groups(args: GroupBenchArgs, json: bool) -> anyhow::Result<()> {
    if args.members < 2 || args.messages == 0 {
        bail!("need --members of at least 2 and --messages of at least 1");
    }
    let seed = args.seed.unwrap_or_else(rand::random);
    let mut opts = peercomm_sim::groups::GroupOptions::new(args.members, args.messages, seed);
    opts.invite_batch = args.invite_batch;
    if args.memory {
        opts.transport = peercomm_sim::SimTransport::Memory;
    }
    if !json {
        println!(
            "peercomm bench groups: {} members, {} messages, {} (seed {seed})",
            args.members,
            args.messages,
            if args.memory {
                "memory transport"
            } else {
                "loopback TCP"
            }
        );
    }
    let r = peercomm_sim::groups::group_fanout(&opts).await?;
    if json {
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    let row = |name: &str, value: String| println!("  {name:<36} {value}");
    row("members", r.members.to_string());
    row("formed in (s)", format!("{:.1}", r.form_secs));
    row(
        "delivered / expected",
        format!("{}/{}", r.delivered, r.expected),
    );
    row("duplicates", r.duplicates.to_string());
    row("send to each member", spread_ms(&r.latency_ms));
    row("send to the last member", spread_ms(&r.last_member_ms));
    row("post size (bytes)", format!("{:.0}", r.post_bytes));
    row(
        "sender upload per message (bytes)",
        format!("{:.0} (raw {:.0})", r.upload_bytes, r.upload_bytes_raw),
    );
    row("naive fan-out (bytes)", format!("{:.0}", r.naive_bytes));
    row("upload / naive", format!("{:.3}", r.upload_ratio));
    row("copies uploaded", format!("{:.1}", r.upload_copies));
    if r.delivered < r.expected || r.duplicates > 0 {
        bail!("not every member got every message exactly once");
    }
    Ok(())
}

/// `peercomm bench bandwidth`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct BandwidthBenchArgs {
    /// Nodes in the network. Node 0 is everyone's bootstrap peer, the last
    /// one is a "phone" behind a slow 24 KiB/s link; the group has 8 members
    /// (fewer when there are fewer nodes).
    #[arg(long, default_value_t = 12)]
    nodes: usize,
    /// Length of the measured window, in seconds: the same scripted traffic
    /// plays over it in every run [default: 30, or 12 with --quick].
    #[arg(long)]
    seconds: Option<u64>,
    /// Seed of the script, the texts and the payloads; the default is fixed
    /// so figures compare across builds.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    seed: u64,
    /// Two runs only, adaptation off and then every mechanism on, over a
    /// 12 s window (the demo's short form; about a minute in all).
    #[arg(long)]
    quick: bool,
}

/// Plays one seeded chat workload with bandwidth adaptation off, each
/// mechanism alone and all on, and prints the bytes each put on the wire.
/// Fails if a non-ephemeral message was lost in any run.
pub(crate) async fn bandwidth(args: BandwidthBenchArgs, json: bool) -> anyhow::Result<()> {
    let mut opts = if args.quick {
        BandwidthOptions::quick(args.seed)
    } else {
        BandwidthOptions::new(args.seed)
    };
    opts.nodes = args.nodes;
    opts.members = opts.members.min(args.nodes.saturating_sub(1));
    if let Some(seconds) = args.seconds {
        opts.window = Duration::from_secs(seconds);
    }
    if let Err(problem) = opts.check() {
        bail!("{problem} (see --nodes and --seconds)");
    }
    if !json {
        println!(
            "peercomm bench bandwidth: {} nodes (a {}-member group, a phone at {} KiB/s), \
             {} s of scripted chat, {} runs on the memory transport (seed {})",
            opts.nodes,
            opts.members,
            opts.link_rate_bytes_per_sec / 1024,
            opts.window.as_secs(),
            opts.runs.len(),
            opts.seed
        );
    }
    let mut progress = |line: &str| eprintln!("  {line}");
    let report = bandwidth_runs(&opts, &mut progress).await?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_bandwidth(&report);
    }
    if report.lost > 0 {
        bail!(
            "{} non-ephemeral message(s) lost: {}",
            report.lost,
            report
                .runs
                .iter()
                .filter(|r| r.lost > 0)
                .map(|r| format!("{} in run {}", r.lost, r.mechanism.name()))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

fn bandwidth_row(r: &RunReport) -> [String; 9] {
    [
        r.mechanism.name().to_string(),
        format!("{:.1}", r.bytes_total as f64 / 1024.0),
        if r.mechanism == Mechanism::Off {
            "baseline".to_string()
        } else {
            format!("{:+.1}%", -r.reduction_percent)
        },
        format!("{:.1}", r.bytes_per_node / 1024.0),
        format!("{:.2}%", r.delivery_rate * 100.0),
        r.lost.to_string(),
        format!("{}/{}", r.ephemeral_delivered, r.ephemeral_sent),
        format!(
            "{:.0} / {:.0}",
            r.interactive_latency_ms.p50, r.interactive_latency_ms.p99
        ),
        format!(
            "{:.0} / {:.0}",
            r.bulk_latency_ms.p50, r.bulk_latency_ms.p99
        ),
    ]
}

fn print_bandwidth(r: &BandwidthReport) {
    let header = [
        "run",
        "KiB out",
        "vs off",
        "KiB / node",
        "delivered",
        "lost",
        "typing+presence",
        "interactive p50/p99 ms",
        "bulk p50/p99 ms",
    ];
    let rows: Vec<Vec<String>> = r.runs.iter().map(|x| bandwidth_row(x).to_vec()).collect();
    print_table(&header, &rows, true);
    println!(
        "  {} events over {:.0} s ({:.1} KiB of message bodies); bytes are every node's socket \
         writes from the window's start until the last delivery. Latencies: send to the \
         phone's arrival while a burst of files loads its {} KiB/s link.",
        r.events,
        r.window_secs,
        r.body_bytes as f64 / 1024.0,
        r.link_rate_bytes_per_sec / 1024
    );
    println!(
        "  every mechanism on: {:.1}% less traffic than adaptation off; {} message(s) lost",
        r.reduction_percent, r.lost
    );
}

/// Prints a Markdown table, columns right-aligned (the first one left if
/// `first_left`), each as wide as its widest cell.
fn print_table(header: &[&str], rows: &[Vec<String>], first_left: bool) {
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .filter_map(|row| row.get(i).map(|c| c.chars().count()))
                .chain([header[i].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let left = |i: usize| first_left && i == 0;
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let cells: Vec<String> = cells
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, &w))| {
                if left(i) {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect();
        println!("| {} |", cells.join(" | "));
    };
    line(&mut header.iter().copied());
    let rules: Vec<String> = widths
        .iter()
        .enumerate()
        .map(|(i, &w)| {
            if left(i) {
                "-".repeat(w.max(1))
            } else {
                format!("{}:", "-".repeat(w.max(2) - 1))
            }
        })
        .collect();
    line(&mut rules.iter().map(String::as_str));
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
}

/// `peercomm bench load`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct LoadBenchArgs {
    /// Nodes in the network (one process, all sharing this machine's cores).
    #[arg(long, default_value_t = 10)]
    nodes: usize,
    /// Messages offered per second, all kinds together (the first step with --saturate).
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// How long messages are offered (each step with --saturate).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// The kinds of message, taken in turn: direct, multihop, onion, group, offline.
    #[arg(long, default_value = "direct,onion,group,offline")]
    mix: String,
    /// Body size of each message, bytes.
    #[arg(long, default_value_t = 256)]
    body_bytes: usize,
    /// Members of the group (at most the nodes that stay online).
    #[arg(long, default_value_t = 20)]
    group_size: usize,
    /// After the window, how long deliveries are waited for at most.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    drain: Duration,
    /// Run over the in-process memory transport instead of loopback TCP.
    #[arg(long)]
    memory: bool,
    /// Keep the group to nodes that never go offline (by default, with
    /// offline traffic in the mix, the nodes that go away are members too).
    #[arg(long)]
    members_stay: bool,
    /// At half time the group's owner invites a node that was not a member.
    #[arg(long)]
    add_member: bool,
    /// Put one node behind a congested link of this many KiB/s.
    #[arg(long)]
    congested_link_kib: Option<u64>,
    /// Find the rate the network sustains: steps from --rate up by half
    /// each time, each on a fresh network, until the delivered rate falls
    /// below 90% of the offered one, a message is lost or p99 passes 5 s.
    #[arg(long)]
    saturate: bool,
    /// Seed for every random choice (random if not given).
    #[arg(long)]
    seed: Option<u64>,
    /// Turn the nodes' group commit off (each acknowledging write then
    /// commits, and syncs, on its own).
    #[arg(long, conflicts_with = "compare_group_commit")]
    no_group_commit: bool,
    /// Run everything twice, group commit off then on, same seed, and print
    /// the ratios.
    #[arg(long)]
    compare_group_commit: bool,
}

/// Runs the load benchmark and prints its figures.
pub(crate) async fn load(args: LoadBenchArgs, json: bool) -> anyhow::Result<()> {
    if !(args.rate > 0.0 && args.rate.is_finite()) {
        bail!(
            "--rate must be a number of messages per second above 0 (got {})",
            args.rate
        );
    }
    if args.duration < Duration::from_secs(1) {
        bail!("--duration must be at least 1s");
    }
    let kinds =
        peercomm_sim::load::parse_mix(&args.mix).map_err(|e| anyhow::anyhow!("--mix: {e}"))?;
    if args.saturate && kinds.contains(&LoadKind::Offline) {
        bail!("--saturate measures live traffic: leave offline out of --mix (e.g. --mix direct)");
    }
    let seed = args.seed.unwrap_or_else(rand::random);
    let mut options = LoadOptions::new(args.nodes, args.rate, args.duration, seed);
    options.mix = kinds.clone();
    options.body_bytes = args.body_bytes;
    options.group_size = args.group_size;
    options.drain = args.drain;
    options.members_away = !args.members_stay;
    options.add_member = args.add_member;
    options.congested_link = args.congested_link_kib.map(|k| k * 1024);
    options.group_commit = !args.no_group_commit;
    if args.memory {
        options.transport = peercomm_sim::SimTransport::Memory;
    }
    let mix: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
    if !json {
        println!(
            "peercomm bench load: {} nodes, {} msg/s for {}, mix {}, {} B bodies, {} (seed {seed})",
            args.nodes,
            args.rate,
            humantime::format_duration(args.duration),
            mix.join(","),
            args.body_bytes,
            if args.memory {
                "memory transport"
            } else {
                "loopback TCP"
            }
        );
    }
    let mut progress = |line: &str| {
        if json {
            eprintln!("  {line}");
        } else {
            println!("  {line}");
        }
    };
    if args.compare_group_commit {
        let mut both = Vec::new();
        for on in [false, true] {
            options.group_commit = on;
            progress(&format!("group commit {}", if on { "on" } else { "off" }));
            both.push(measure(&mut options, args.saturate, &mut progress).await?);
        }
        let on = both.pop().unwrap_or_default();
        let off = both.pop().unwrap_or_default();
        let ratios = GroupCommitRatios::of(&off, &on);
        if json {
            println!(
                "{}",
                serde_json::json!({
                    "group_commit_off": off.json(),
                    "group_commit_on": on.json(),
                    "ratios": ratios,
                })
            );
        } else {
            for (name, m) in [("off", &off), ("on", &on)] {
                println!("\ngroup commit {name}:");
                m.print(&mix);
            }
            ratios.print();
        }
        return [off, on].iter().try_for_each(Measured::check);
    }
    let m = measure(&mut options, args.saturate, &mut progress).await?;
    if json {
        println!("{}", m.json());
    } else {
        m.print(&mix);
    }
    m.check()
}

/// One load run, or the steps of a saturation search.
#[derive(Debug, Default)]
struct Measured {
    steps: Vec<LoadReport>,
    saturate: bool,
}

impl Measured {
    /// The last step that kept up (the run itself without --saturate).
    fn sustained(&self) -> Option<&LoadReport> {
        if self.saturate {
            self.steps.iter().rfind(|r| kept_up(r))
        } else {
            self.steps.first()
        }
    }

    fn json(&self) -> serde_json::Value {
        if self.saturate {
            serde_json::json!({
                "steps": self.steps,
                "sustained_rate": self.sustained().map(|r| r.offered),
            })
        } else {
            serde_json::to_value(self.steps.first()).unwrap_or_default()
        }
    }

    fn print(&self, mix: &[&str]) {
        if !self.saturate {
            if let Some(r) = self.steps.first() {
                print_load(r);
            }
            return;
        }
        let rows: Vec<Vec<String>> = self.steps.iter().map(load_step_row).collect();
        print_table(
            &[
                "target/s",
                "offered/s",
                "delivered/s",
                "p50 ms",
                "p99 ms",
                "p99.9 ms",
                "lost",
                "CPU %",
                "CPU s/1k msgs",
                "above idle",
                "writes/commit",
            ],
            &rows,
            false,
        );
        match self.sustained() {
            Some(r) => println!(
                "  sustained: {:.0} msg/s ({}) with {:.0}% of the two cores busy; at that cost the two cores would carry about {:.0} msg/s",
                r.offered,
                mix.join(","),
                r.cpu_busy * 100.0,
                r.offered / r.cpu_busy.max(0.01)
            ),
            None => println!("  not even the first step kept up: lower --rate"),
        }
    }

    /// Fails on a lost or duplicated copy (in a single run; a saturation
    /// search stops at the first step that loses one).
    fn check(&self) -> anyhow::Result<()> {
        match self.steps.first() {
            Some(r) if !self.saturate && (r.lost > 0 || r.duplicates > 0) => {
                bail!("{} copies lost and {} duplicated", r.lost, r.duplicates)
            }
            _ => Ok(()),
        }
    }
}

/// Runs the load once, or steps its rate up by half until the network no
/// longer keeps up.
async fn measure(
    options: &mut LoadOptions,
    saturate: bool,
    progress: &mut (dyn FnMut(&str) + Send),
) -> anyhow::Result<Measured> {
    if !saturate {
        let r = load_run(options, progress).await?;
        return Ok(Measured {
            steps: vec![r],
            saturate,
        });
    }
    let first = options.rate;
    let mut steps: Vec<LoadReport> = Vec::new();
    for _ in 0..12 {
        let rate = options.rate;
        progress(&format!("step at {rate:.0} msg/s"));
        let r = load_run(options, progress).await?;
        let kept_up = kept_up(&r);
        progress(&format!(
            "{rate:.0} msg/s: delivered {:.1}/s of {:.1}/s offered, p99 {:.0} ms, lost {}, CPU {:.0}% of 2 cores",
            r.delivered,
            r.offered,
            r.p99_ms,
            r.lost,
            r.cpu_busy * 100.0
        ));
        steps.push(r);
        if !kept_up {
            break;
        }
        options.rate = rate * 1.5;
    }
    options.rate = first;
    Ok(Measured { steps, saturate })
}

/// Group commit off against on, from one invocation.
#[derive(Debug, serde::Serialize)]
struct GroupCommitRatios {
    /// Sustained (or delivered) rate, on ÷ off.
    rate: f64,
    /// CPU seconds per 1,000 messages, off ÷ on, at the rate both ran.
    cpu_per_message: f64,
    /// Commits per 1,000 messages, off and on.
    commits_per_1000_off: f64,
    commits_per_1000_on: f64,
    /// p99 latency, off and on, at the first rate (both kept up there).
    p99_ms_off: f64,
    p99_ms_on: f64,
}

impl GroupCommitRatios {
    fn of(off: &Measured, on: &Measured) -> Self {
        let per_1000 = |r: Option<&LoadReport>| {
            r.map_or(0.0, |r| {
                r.store_commits as f64 * 1000.0 / r.offered_messages.max(1) as f64
            })
        };
        let rate = |m: &Measured| m.sustained().map_or(0.0, |r| r.delivered);
        // The CPU per message is compared at the first rate, which both ran.
        let (first_off, first_on) = (off.steps.first(), on.steps.first());
        let cpu = |r: Option<&LoadReport>| r.map_or(0.0, |r| r.cpu_secs_per_1000);
        GroupCommitRatios {
            rate: rate(on) / rate(off).max(f64::MIN_POSITIVE),
            cpu_per_message: cpu(first_off) / cpu(first_on).max(f64::MIN_POSITIVE),
            commits_per_1000_off: per_1000(first_off),
            commits_per_1000_on: per_1000(first_on),
            p99_ms_off: first_off.map_or(0.0, |r| r.p99_ms),
            p99_ms_on: first_on.map_or(0.0, |r| r.p99_ms),
        }
    }

    fn print(&self) {
        println!("\ngroup commit on against off (one invocation, same seed):");
        println!(
            "  rate {:.2}x; CPU per message {:.2}x less; commits per 1,000 messages {:.0} -> {:.0}; p99 {:.0} -> {:.0} ms (first rate)",
            self.rate,
            self.cpu_per_message,
            self.commits_per_1000_off,
            self.commits_per_1000_on,
            self.p99_ms_off,
            self.p99_ms_on
        );
    }
}

/// A step kept up: at least 90% of the offered rate delivered in the
/// window, nothing lost, p99 within 5 s.
fn kept_up(r: &LoadReport) -> bool {
    r.delivered >= 0.9 * r.offered && r.lost == 0 && r.p99_ms <= 5000.0
}

async fn load_run(
    options: &LoadOptions,
    progress: &mut (dyn FnMut(&str) + Send),
) -> anyhow::Result<LoadReport> {
    Ok(peercomm_sim::load::load(options, progress).await?)
}

fn load_step_row(r: &LoadReport) -> Vec<String> {
    vec![
        format!("{:.0}", r.target_rate),
        format!("{:.1}", r.offered),
        format!("{:.1}", r.delivered),
        format!("{:.0}", r.p50_ms),
        format!("{:.0}", r.p99_ms),
        format!("{:.0}", r.p999_ms),
        r.lost.to_string(),
        format!("{:.0}", r.cpu_busy * 100.0),
        format!("{:.2}", r.cpu_secs_per_1000),
        format!("{:.2}", r.cpu_secs_per_1000_net),
        writes_per_commit(r),
    ]
}

fn writes_per_commit(r: &LoadReport) -> String {
    if r.store_commits == 0 {
        return "-".into();
    }
    format!(
        "{:.1}",
        r.store_commit_writes as f64 / r.store_commits as f64
    )
}

fn print_load(r: &LoadReport) {
    println!(
        "  offered {:.1} msg/s ({} messages), delivered {:.1} msg/s in the window; {} delivered by the end, {} lost, {} duplicated, {} errors",
        r.offered, r.offered_messages, r.delivered, r.delivered_messages, r.lost, r.duplicates, r.errors
    );
    let rows: Vec<Vec<String>> = r
        .kinds
        .iter()
        .map(|k| {
            vec![
                k.kind.clone(),
                k.sent.to_string(),
                k.delivered.to_string(),
                format!("{}/{}", k.copies, k.copies_expected),
                k.duplicates.to_string(),
                format!("{:.0}", k.latency.p50_ms),
                format!("{:.0}", k.latency.p99_ms),
                format!("{:.0}", k.latency.p999_ms),
                k.after_return
                    .map(|a| format!("{:.0}/{:.0}", a.p50_ms, a.p99_ms))
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    print_table(
        &[
            "kind",
            "sent",
            "delivered",
            "copies",
            "dup",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "after return p50/p99 ms",
        ],
        &rows,
        true,
    );
    println!(
        "  live kinds: latency p50 {:.0} ms, p99 {:.0} ms, p99.9 {:.0} ms",
        r.p50_ms, r.p99_ms, r.p999_ms
    );
    println!(
        "  CPU {:.1} s ({:.0}% of 2 cores; {:.0}% idle), {:.2} CPU s per 1,000 messages ({:.2} above idle); peak RSS {:.1} MiB ({:.1} MiB per node)",
        r.cpu_secs,
        r.cpu_busy * 100.0,
        r.idle_cpu_busy * 100.0,
        r.cpu_secs_per_1000,
        r.cpu_secs_per_1000_net,
        r.peak_rss_kib as f64 / 1024.0,
        r.peak_rss_kib_per_node / 1024.0
    );
    println!(
        "  set-up {:.1} s (group of {}), drain {:.1} s; group commit {}: {} writes in {} commits ({} per commit)",
        r.setup_s,
        r.group_members,
        r.drain_s,
        if r.group_commit { "on" } else { "off" },
        r.store_commit_writes,
        r.store_commits,
        writes_per_commit(r)
    );
}
