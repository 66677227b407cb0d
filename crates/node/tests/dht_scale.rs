//! The DHT at scale: many nodes in one process on libp2p's memory transport,
//! then 20% of them leave abruptly. `peercomm bench dht --nodes N` runs the
//! same scenario at any size and prints its figures; this test runs it at
//! `PEERCOMM_SCALE_NODES` nodes (default 60, so CI stays quick) and checks
//! what must hold at every size.

use std::time::Duration;

use anyhow::{ensure, Result};
use peercomm_sim::scale::{dht_scale, DhtScaleOptions};
use peercomm_sim::{SimOptions, Topology};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_lookups_succeed_and_survive_churn() -> Result<()> {
    let nodes: usize = std::env::var("PEERCOMM_SCALE_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    // The seed from PEERCOMM_SIM_SEED, or a random one (printed).
    let seed = SimOptions::new(nodes, Topology::Isolated).seed;
    let mut options = DhtScaleOptions::new(nodes, seed);
    options.join_timeout = Duration::from_secs(900);
    let report = dht_scale(&options, &mut |line| eprintln!("{line}")).await?;
    eprintln!("{report:#?}");

    let before = &report.before_churn;
    ensure!(
        before.found == before.lookups && before.lookups > 0,
        "before churn: {} of {} lookups found",
        before.found,
        before.lookups
    );
    // Kademlia finds a record in O(log N) hops: allow the bound plus two
    // rounds for the slack of a real, unevenly filled routing table.
    ensure!(
        before.hops.p95 <= report.hop_bound.ceil() + 2.0,
        "hops p95 {} against a bound of {:.2}",
        before.hops.p95,
        report.hop_bound
    );
    ensure!(
        report.left == nodes / 5,
        "{} nodes left, not 20%",
        report.left
    );
    let after = &report.after_churn;
    ensure!(
        after.success() >= 0.99,
        "after churn only {} of {} lookups for live peers succeeded",
        after.found,
        after.lookups
    );
    ensure!(
        report.rss_kib_per_node > 0.0,
        "memory per node not measured"
    );
    Ok(())
}
