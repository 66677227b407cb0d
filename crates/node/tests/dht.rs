//! DHT discovery with no central registry: real nodes on loopback that know
//! only one bootstrap node.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use peercomm_node::{DeliveryState, NodeHandle, SendOptions};
use peercomm_sim::{wait_until, SimNet, SimOptions, SimTransport, Topology};
use rand::seq::SliceRandom;
use rand::SeedableRng;

/// Waits until every running node has joined and published its record.
async fn wait_joined(net: &SimNet, indices: &[usize], timeout: Duration) -> Result<()> {
    for &i in indices {
        let handle = net.handle(i).clone();
        let waited = wait_until(timeout, &format!("node {i} joined the DHT"), || {
            let handle = handle.clone();
            async move {
                handle.dht_stats().await.is_ok_and(|s| s.joined)
                    && handle.stats().dht_publish_ok > 0
            }
        })
        .await;
        if let Err(e) = waited {
            let dht = handle.dht_stats().await;
            let stats = handle.stats();
            anyhow::bail!(
                "{e}; node {i}: {dht:?}, publish ok {} failed {}",
                stats.dht_publish_ok,
                stats.dht_publish_failed
            );
        }
    }
    Ok(())
}

async fn find_ok(handle: &NodeHandle, peer: peercomm_node::PeerId) -> bool {
    handle
        .find_peer(peer)
        .await
        .is_ok_and(|r| r.peer_id == peer)
}

fn bootstrap_net(nodes: usize, transport: SimTransport) -> SimOptions {
    let mut options = SimOptions::new(nodes, Topology::Isolated);
    options.bootstrap_via = Some(0);
    options.transport = transport;
    options
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_nodes_find_each_other_through_one_bootstrap_node() -> Result<()> {
    const NODES: usize = 50;
    let options = bootstrap_net(NODES, SimTransport::Tcp);
    let mut rng = rand::rngs::StdRng::seed_from_u64(options.seed);
    let net = SimNet::start(options).await?;
    let all: Vec<usize> = (0..NODES).collect();
    wait_joined(&net, &all, Duration::from_secs(60)).await?;

    let mut lookups = 0;
    let mut found = 0;
    for i in 0..NODES {
        let mut others: Vec<usize> = (0..NODES).filter(|j| *j != i).collect();
        others.shuffle(&mut rng);
        for &j in others.iter().take(20) {
            lookups += 1;
            match net.handle(i).find_peer(net.peer_id(j)).await {
                Ok(r) if r.peer_id == net.peer_id(j) => found += 1,
                other => eprintln!("lookup {i} -> {j} failed: {other:?}"),
            }
        }
    }
    eprintln!("lookups {lookups}, found {found}");
    ensure!(found == lookups, "found {found} of {lookups}");
    let figures = net.handle(1).dht_stats().await?.lookups;
    eprintln!("node 1 lookups: {figures:?}");

    // A message to a peer the sender has never met, by PeerId alone.
    let (from, to) = (NODES - 1, NODES - 2);
    let id = net
        .handle(from)
        .send(
            net.peer_id(to),
            b"found you".to_vec(),
            SendOptions::default(),
        )
        .await?;
    let sender = net.handle(from).clone();
    wait_until(Duration::from_secs(30), "delivered by PeerId alone", || {
        let sender = sender.clone();
        async move {
            sender
                .message_state(id)
                .await
                .ok()
                .flatten()
                .is_some_and(|m| m.state == DeliveryState::Delivered)
        }
    })
    .await?;
    net.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_network_outlives_its_bootstrap_node() -> Result<()> {
    const NODES: usize = 12;
    let mut net = SimNet::start(bootstrap_net(NODES, SimTransport::Tcp)).await?;
    let all: Vec<usize> = (0..NODES).collect();
    wait_joined(&net, &all, Duration::from_secs(60)).await?;

    // Node 3 stops; then the bootstrap node goes away for good.
    net.stop(3).await?;
    net.stop(0).await?;

    // A new node joins through any other node.
    let newcomer = net.spawn(Some(5)).await?;
    wait_joined(&net, &[newcomer], Duration::from_secs(60)).await?;
    for j in [1, 2, 7, 11] {
        ensure!(
            find_ok(net.handle(newcomer), net.peer_id(j)).await,
            "newcomer cannot find {j}"
        );
    }

    // Node 3 restarts with only the dead bootstrap node configured: it
    // re-joins from the routing-table peers it saved.
    net.restart(3).await?;
    let h3 = net.handle(3).clone();
    wait_until(Duration::from_secs(60), "node 3 re-joined", || {
        let h3 = h3.clone();
        async move { h3.dht_stats().await.is_ok_and(|s| s.joined) }
    })
    .await?;
    for j in [1, 6, 10, newcomer] {
        ensure!(find_ok(&h3, net.peer_id(j)).await, "node 3 cannot find {j}");
    }
    net.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_on_a_new_port_is_found_and_reached_again() -> Result<()> {
    const NODES: usize = 10;
    let mut options = bootstrap_net(NODES, SimTransport::Tcp);
    options.config.dht.republish_interval = Duration::from_secs(2);
    options.config.dht.cache_ttl = Duration::from_secs(1);
    let mut net = SimNet::start(options).await?;
    let all: Vec<usize> = (0..NODES).collect();
    wait_joined(&net, &all, Duration::from_secs(60)).await?;

    // Node 8 and node 9 talk, so 9 holds 8's (soon outdated) address.
    let first = net
        .handle(9)
        .send(net.peer_id(8), b"before".to_vec(), SendOptions::default())
        .await?;
    let h9 = net.handle(9).clone();
    let delivered = |id| {
        let h9 = h9.clone();
        move || {
            let h9 = h9.clone();
            async move {
                h9.message_state(id)
                    .await
                    .ok()
                    .flatten()
                    .is_some_and(|m| m.state == DeliveryState::Delivered)
            }
        }
    };
    wait_until(Duration::from_secs(30), "first message", delivered(first)).await?;
    let old_addr = net.addr(8);

    net.stop(8).await?;
    net.restart_on_new_port(8).await?;
    ensure!(net.addr(8) != old_addr);
    let started = Instant::now();
    let new_addr = net.addr(8);
    let want = new_addr
        .iter()
        .take(2)
        .collect::<peercomm_node::Multiaddr>();
    let h5 = net.handle(5).clone();
    let peer8 = net.peer_id(8);
    wait_until(
        Duration::from_secs(20),
        "node 5 finds node 8's new address",
        || {
            let (h5, want) = (h5.clone(), want.clone());
            async move {
                h5.find_peer(peer8)
                    .await
                    .is_ok_and(|r| r.addrs.contains(&want))
            }
        },
    )
    .await?;
    eprintln!("new address found after {:?}", started.elapsed());

    let second = net
        .handle(9)
        .send(peer8, b"after".to_vec(), SendOptions::default())
        .await?;
    wait_until(
        Duration::from_secs(30),
        "message to the new address",
        delivered(second),
    )
    .await?;
    net.shutdown().await;
    Ok(())
}

/// Addresses set in `network.external_addrs` are announced in the record
/// the DHT serves, beside the listen addresses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_external_addresses_are_announced() -> Result<()> {
    let external: peercomm_node::Multiaddr = "/ip4/203.0.113.7/tcp/4001".parse()?;
    let mut options = bootstrap_net(3, SimTransport::Tcp);
    options.config.network.external_addrs = vec![external.clone()];
    let net = SimNet::start(options).await?;
    wait_joined(&net, &[0, 1, 2], Duration::from_secs(60)).await?;
    let record = net.handle(2).find_peer(net.peer_id(1)).await?;
    ensure!(
        record.addrs.contains(&external),
        "external address missing from {:?}",
        record.addrs
    );
    ensure!(
        record
            .addrs
            .iter()
            .any(|a| a.to_string().starts_with("/ip4/127.0.0.1/tcp/")),
        "listen address missing from {:?}",
        record.addrs
    );
    net.shutdown().await;
    Ok(())
}

/// A peer that floods DHT requests is throttled; a well-behaved one is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_flooding_dht_requests_is_rate_limited() -> Result<()> {
    let mut options = bootstrap_net(3, SimTransport::Tcp);
    // 60 a minute: bursts of 15, then one a second.
    options.config.dht.max_requests_per_peer_per_minute = 60;
    options.config.dht.query_timeout = Duration::from_secs(3);
    let net = SimNet::start(options).await?;
    wait_joined(&net, &[0, 1, 2], Duration::from_secs(60)).await?;
    ensure!(net.handle(0).stats().dht_inbound_rate_limited == 0);

    // Node 1 looks up 60 peers that do not exist, all at once.
    let flood: Vec<_> = (0..60)
        .map(|_| {
            let h1 = net.handle(1).clone();
            tokio::spawn(async move { h1.find_peer(peercomm_node::PeerId::random()).await })
        })
        .collect();
    for lookup in flood {
        ensure!(
            lookup.await?.is_err(),
            "a peer that does not exist was found"
        );
    }
    let limited = net.handle(0).stats().dht_inbound_rate_limited
        + net.handle(2).stats().dht_inbound_rate_limited;
    eprintln!("requests dropped by the rate limit: {limited}");
    ensure!(limited > 0, "nothing was rate limited");

    // The nodes still answer a peer within its rate.
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(
        find_ok(net.handle(2), net.peer_id(1)).await,
        "node 2 cannot find node 1"
    );
    net.shutdown().await;
    Ok(())
}

/// A joining node refreshes the buckets beyond its closest neighbour's.
/// With DHT tuning each refresh asks for the 3 peers closest to a random key
/// in the bucket, not the 20 of a full lookup: the joiner sends far fewer
/// requests (each to a peer it must connect to), and still finds peers all
/// over the network.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_node_refreshes_its_buckets_with_lean_lookups_under_dht_tuning() -> Result<()> {
    const NODES: usize = 60;
    let mut net = SimNet::start(bootstrap_net(NODES, SimTransport::Memory)).await?;
    let all: Vec<usize> = (0..NODES).collect();
    wait_joined(&net, &all, Duration::from_secs(120)).await?;
    let mut sent = Vec::new();
    for tuning in [false, true] {
        net.spawn_config_mut().bandwidth.dht_tuning = tuning;
        let joiner = net.spawn(Some(NODES / 2)).await?;
        wait_joined(&net, &[joiner], Duration::from_secs(60)).await?;
        // Its refreshes run on after it has published.
        let handle = net.handle(joiner).clone();
        wait_until(Duration::from_secs(30), "the refreshes to end", || {
            let handle = handle.clone();
            async move {
                let before = handle.stats().dht_refresh_requests;
                tokio::time::sleep(Duration::from_secs(1)).await;
                handle.stats().dht_refresh_requests == before
            }
        })
        .await?;
        let stats = handle.stats();
        eprintln!(
            "DHT tuning {tuning}: {} refresh requests, {} lean refreshes",
            stats.dht_refresh_requests, stats.dht_lean_refreshes
        );
        ensure!(
            (stats.dht_lean_refreshes > 0) == tuning,
            "{} lean refreshes with DHT tuning {tuning}",
            stats.dht_lean_refreshes
        );
        for target in (0..NODES).step_by(6) {
            ensure!(
                find_ok(&handle, net.peer_id(target)).await,
                "the joiner (DHT tuning {tuning}) cannot find node {target}"
            );
        }
        sent.push(stats.dht_refresh_requests);
    }
    let (full, lean) = (sent[0], sent[1]);
    ensure!(
        lean * 3 <= full * 2,
        "lean refreshes sent {lean} requests, full ones {full}"
    );
    net.shutdown().await;
    Ok(())
}

/// Kademlia bootstraps again whenever a peer enters a table of fewer than 20.
/// With DHT tuning, one that starts within a minute of a complete bootstrap
/// keeps its self-lookup and skips the bucket refreshes; without it none is
/// cut. Either way every node still finds every other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstraps_soon_after_a_complete_one_skip_their_bucket_refreshes_with_dht_tuning(
) -> Result<()> {
    const NODES: usize = 8;
    for tuning in [true, false] {
        let mut options = bootstrap_net(NODES, SimTransport::Memory);
        options.config.dht.refresh_interval = Duration::from_secs(300);
        options.config.bandwidth.dht_tuning = tuning;
        let net = SimNet::start(options).await?;
        let all: Vec<usize> = (0..NODES).collect();
        wait_joined(&net, &all, Duration::from_secs(60)).await?;
        let cut = |net: &SimNet| -> u64 {
            (0..NODES)
                .map(|i| net.handle(i).stats().dht_refreshes_cut)
                .sum()
        };
        if tuning {
            // Nodes that joined later entered the tables of those that
            // joined earlier, each start of a bootstrap there.
            wait_until(Duration::from_secs(30), "a bootstrap cut short", || {
                let c = cut(&net);
                async move { c > 0 }
            })
            .await?;
        } else {
            tokio::time::sleep(Duration::from_secs(3)).await;
            ensure!(cut(&net) == 0, "cut {} with DHT tuning off", cut(&net));
        }
        for i in 0..NODES {
            for j in 0..NODES {
                if i != j {
                    ensure!(
                        find_ok(net.handle(i), net.peer_id(j)).await,
                        "node {i} cannot find node {j} (DHT tuning {tuning})"
                    );
                }
            }
        }
        net.shutdown().await;
    }
    Ok(())
}

/// A node that restarts on its data dir knows its peers from last run and
/// holds what it held. With DHT tuning it hands none of its records to the
/// peers it knew (they hold them already) and keeps the key-package record
/// it put last run instead of putting it again; the record is still found:
/// the node can be invited. Without tuning it does neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_keeps_its_key_packages_and_hands_nothing_to_peers_it_knew() -> Result<()>
{
    const NODES: usize = 6;
    let back = NODES - 1;
    for tuning in [true, false] {
        let mut options = bootstrap_net(NODES, SimTransport::Memory);
        options.config.dht.refresh_interval = Duration::from_secs(300);
        options.config.bandwidth.dht_tuning = tuning;
        let mut net = SimNet::start(options).await?;
        let all: Vec<usize> = (0..NODES).collect();
        wait_joined(&net, &all, Duration::from_secs(60)).await?;
        // Its key-package record out (put once the node joined).
        let h = net.handle(back).clone();
        wait_until(Duration::from_secs(30), "key packages put", || {
            let h = h.clone();
            async move { h.stats().dht_publish_ok > 0 }
        })
        .await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        net.stop(back).await?;
        net.restart_on_new_port(back).await?;
        wait_joined(&net, &[back], Duration::from_secs(60)).await?;
        let h = net.handle(back).clone();
        if tuning {
            wait_until(Duration::from_secs(30), "key packages kept", || {
                let h = h.clone();
                async move { h.stats().key_packages_kept > 0 }
            })
            .await?;
        } else {
            // Its groups' first tick, which puts key packages, is long done.
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        // Invited from the key packages it did not put again.
        let owner = net.handle(1).clone();
        let group = owner.group_create("restart", "").await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let change = loop {
            match owner.group_invite(group.id, net.peer_id(back)).await {
                Err(peercomm_node::GroupError::NoKeyPackage(_)) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                other => break other?,
            }
        };
        ensure!(
            matches!(change, peercomm_node::GroupChange::Committed { .. }),
            "{change:?}"
        );
        let s = net.handle(back).stats();
        println!(
            "DHT tuning {tuning}: handoffs {}, skipped {}, key packages kept {}",
            s.dht_handoffs, s.dht_handoffs_skipped, s.key_packages_kept
        );
        if tuning {
            ensure!(s.dht_handoffs == 0, "{} hand-offs", s.dht_handoffs);
            ensure!(s.dht_handoffs_skipped > 0);
            ensure!(s.key_packages_kept == 1);
        } else {
            ensure!(s.dht_handoffs_skipped == 0 && s.key_packages_kept == 0);
        }
        net.shutdown().await;
    }
    Ok(())
}
