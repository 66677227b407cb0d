//! Multi-hop routing between real nodes over loopback TCP, with links cut
//! by connection gating: messages cross 3+ hops, receipts come back, routes
//! are learned both ways, a failed next hop is replaced, TTL and relay
//! policy hold.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use libp2p::kad::KBucketKey;
use peercomm_node::{
    Config, DeliveryState, Multiaddr, NodeEvent, NodeHandle, PeerId, Route, SendOptions,
};
use peercomm_sim::{message, test_config, wait_state, wait_until, SimNet, SimOptions, Topology};

/// The nodes of `net` ordered so that each is XOR-closer to the last one
/// than the one before it: greedy forwarding along the order works.
fn greedy_line(net: &SimNet, destination: usize) -> Vec<usize> {
    let target = KBucketKey::from(net.peer_id(destination));
    let mut others: Vec<usize> = (0..net.len()).filter(|i| *i != destination).collect();
    others.sort_by_key(|i| std::cmp::Reverse(KBucketKey::from(net.peer_id(*i)).distance(&target)));
    others.push(destination);
    others
}

/// Cuts every link but those between neighbours of `line`.
async fn keep_only_line(net: &SimNet, line: &[usize]) -> Result<()> {
    for (a_pos, a) in line.iter().enumerate() {
        for b in line.iter().skip(a_pos + 2) {
            net.cut(*a, *b).await?;
        }
    }
    Ok(())
}

/// Waits until each neighbour pair of `line` is connected (the full mesh
/// they started in) and nobody else is.
async fn wait_line(net: &SimNet, line: &[usize]) -> Result<()> {
    for pair in line.windows(2) {
        net.connect(pair[0], pair[1]).await.ok();
    }
    let handles: Vec<(NodeHandle, Vec<PeerId>)> = line
        .iter()
        .enumerate()
        .map(|(pos, i)| {
            let mut want = Vec::new();
            if pos > 0 {
                want.push(net.peer_id(line[pos - 1]));
            }
            if pos + 1 < line.len() {
                want.push(net.peer_id(line[pos + 1]));
            }
            (net.handle(*i).clone(), want)
        })
        .collect();
    wait_until(Duration::from_secs(20), "only the line's links", || {
        let handles = handles.clone();
        async move {
            for (h, want) in handles {
                let Ok(peers) = h.peers().await else {
                    return false;
                };
                let mut got: Vec<PeerId> = peers.iter().map(|p| p.peer_id).collect();
                got.sort();
                let mut want = want;
                want.sort();
                if got != want {
                    return false;
                }
            }
            true
        }
    })
    .await?;
    Ok(())
}

/// Waits until node `at` holds the peer record of node `of`.
async fn wait_record(net: &SimNet, at: usize, of: usize) -> Result<()> {
    let h = net.handle(at).clone();
    let peer = net.peer_id(of);
    wait_until(Duration::from_secs(20), "records exchanged", || {
        let h = h.clone();
        async move { h.known_record(peer).await.ok().flatten().is_some() }
    })
    .await?;
    Ok(())
}

fn routed_options(ttl: Option<u32>) -> (SimOptions, Config) {
    let mut config = test_config();
    if let Some(ttl) = ttl {
        config.routing.default_ttl = ttl;
    }
    let mut options = SimOptions::new(5, Topology::FullMesh);
    options.config = config.clone();
    (options, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_cross_four_hops_and_receipts_and_routes_come_back() -> Result<()> {
    let (options, _) = routed_options(None);
    let net = SimNet::start(options).await?;
    // Everyone met everyone (records exchanged), then the links went down:
    // only a line of five remains.
    let line = greedy_line(&net, 4);
    let (a, e) = (line[0], line[4]);
    wait_record(&net, a, e).await?;
    keep_only_line(&net, &line).await?;
    wait_line(&net, &line).await?;

    // A cannot dial E: the message goes along the line by itself.
    let mut events = net.handle(a).subscribe();
    let id = net
        .handle(a)
        .send(
            net.peer_id(e),
            b"four hops".to_vec(),
            SendOptions::default(),
        )
        .await?;
    let done = wait_state(
        net.handle(a),
        id,
        DeliveryState::Delivered,
        Duration::from_secs(60),
    )
    .await?;
    ensure!(done.hops == Some(4), "hops recorded: {:?}", done.hops);
    let mut states = Vec::new();
    while let Ok(event) = events.try_recv() {
        if let NodeEvent::MessageState { id: of, state } = event {
            if of == id {
                states.push(state);
            }
        }
    }
    ensure!(
        states.contains(&DeliveryState::Routed) && states.last() == Some(&DeliveryState::Delivered),
        "the sender saw it routed, then delivered: {states:?}"
    );
    let inbox = net.handle(e).inbox(Default::default()).await?;
    ensure!(
        inbox.iter().any(|m| m.body == b"four hops"),
        "E holds the message"
    );
    for relay in &line[1..4] {
        let s = net.handle(*relay).stats();
        ensure!(s.routed_forwarded >= 1, "relay {relay} forwarded: {s:?}");
        ensure!(s.received == 0, "a relay stored nothing for itself");
    }
    ensure!(net.handle(e).stats().routed_delivered >= 1);

    // A learned the way to E from the receipt that came back.
    let routes = net.handle(a).routes().await?;
    let to_e = routes
        .iter()
        .find(|r| r.destination == net.peer_id(e))
        .context("A has a route to E")?;
    ensure!(
        to_e.next_hop == net.peer_id(line[1]) && to_e.hops == 4,
        "{to_e:?}"
    );

    // E answers along the reverse path it learned.
    let reply = net
        .handle(e)
        .send(net.peer_id(a), b"and back".to_vec(), SendOptions::default())
        .await?;
    let back = wait_state(
        net.handle(e),
        reply,
        DeliveryState::Delivered,
        Duration::from_secs(60),
    )
    .await?;
    ensure!(back.hops == Some(4), "reply hops {:?}", back.hops);

    // Asked for explicitly: routed, even where a direct link exists.
    let explicit = net
        .handle(line[1])
        .send(
            net.peer_id(line[2]),
            b"by request".to_vec(),
            SendOptions {
                route: Some(Route::Multihop),
                ..SendOptions::default()
            },
        )
        .await?;
    let m = wait_state(
        net.handle(line[1]),
        explicit,
        DeliveryState::Delivered,
        Duration::from_secs(30),
    )
    .await?;
    ensure!(m.hops == Some(1) && m.route == Route::Multihop, "{m:?}");
    net.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_next_hop_is_replaced_by_the_next_best() -> Result<()> {
    let mut options = SimOptions::new(4, Topology::FullMesh);
    options.config = test_config();
    let mut net = SimNet::start(options).await?;
    // A diamond: A - {B, C} - D, with A-D and B-C cut; A is the farthest
    // from D, so both B and C are greedy choices.
    let order = greedy_line(&net, 3);
    let (a, b, c, d) = (order[0], order[1], order[2], order[3]);
    wait_record(&net, a, d).await?;
    net.cut(a, d).await?;
    net.cut(b, c).await?;
    for (x, y) in [(a, b), (a, c), (b, d), (c, d)] {
        net.connect(x, y).await.ok();
    }

    let first = net
        .handle(a)
        .send(net.peer_id(d), b"first".to_vec(), SendOptions::default())
        .await?;
    wait_state(
        net.handle(a),
        first,
        DeliveryState::Delivered,
        Duration::from_secs(60),
    )
    .await?;
    let via = net
        .handle(a)
        .routes()
        .await?
        .into_iter()
        .find(|r| r.destination == net.peer_id(d))
        .context("a route to D")?
        .next_hop;
    let (gone, other) = if via == net.peer_id(b) {
        (b, c)
    } else {
        (c, b)
    };

    // The relay A learned goes away abruptly; the next message still
    // arrives, through the other one, and the dead route is dropped.
    net.kill(gone)?;
    let second = net
        .handle(a)
        .send(net.peer_id(d), b"second".to_vec(), SendOptions::default())
        .await?;
    let m = wait_state(
        net.handle(a),
        second,
        DeliveryState::Delivered,
        Duration::from_secs(90),
    )
    .await?;
    ensure!(m.hops == Some(2), "hops {:?}", m.hops);
    let routes = net.handle(a).routes().await?;
    ensure!(
        routes
            .iter()
            .filter(|r| r.destination == net.peer_id(d))
            .all(|r| r.next_hop == net.peer_id(other)),
        "only the live relay is left: {routes:?}"
    );
    ensure!(net.handle(a).stats().routed_hop_failures >= 1);
    net.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_and_relay_policy_stop_messages_and_are_counted() -> Result<()> {
    // TTL 3 cannot cover four hops: the fourth node drops it.
    let (options, _) = routed_options(Some(3));
    let mut net = SimNet::start(options).await?;
    let line = greedy_line(&net, 4);
    let (a, e) = (line[0], line[4]);
    wait_record(&net, a, e).await?;
    keep_only_line(&net, &line).await?;
    wait_line(&net, &line).await?;
    let id = net
        .handle(a)
        .send(net.peer_id(e), b"too far".to_vec(), SendOptions::default())
        .await?;
    let dropped_at = net.handle(line[3]).clone();
    wait_until(Duration::from_secs(30), "the TTL drop", || {
        let h = dropped_at.clone();
        async move { h.stats().routed_dropped_ttl >= 1 }
    })
    .await?;
    // The refusal travels back to the sender, who notes why.
    let sender = net.handle(a).clone();
    wait_until(Duration::from_secs(30), "the sender to see why", || {
        let h = sender.clone();
        async move {
            message(&h, id)
                .await
                .and_then(|m| m.last_error)
                .is_some_and(|e| e.contains("no route"))
        }
    })
    .await?;
    let m = message(net.handle(a), id).await.context("the message")?;
    ensure!(m.state != DeliveryState::Delivered, "{m:?}");
    ensure!(net.handle(e).stats().received == 0);

    // A node without the relay role refuses to forward, and says so.
    let middle = line[2];
    net.config_mut(middle).roles.clear();
    net.config_mut(middle).routing.default_ttl = 8;
    net.stop(middle).await?;
    net.restart(middle).await?;
    keep_only_line(&net, &line).await?;
    wait_line(&net, &line).await?;
    let id = net
        .handle(line[1])
        .send(
            net.peer_id(e),
            b"through a non-relay".to_vec(),
            SendOptions {
                route: Some(Route::Multihop),
                ..SendOptions::default()
            },
        )
        .await?;
    let refuser = net.handle(middle).clone();
    wait_until(Duration::from_secs(30), "the policy refusal", || {
        let h = refuser.clone();
        async move { h.stats().routed_refused_policy >= 1 }
    })
    .await?;
    let m = message(net.handle(line[1]), id)
        .await
        .context("the message")?;
    ensure!(m.state != DeliveryState::Delivered, "{m:?}");
    net.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_a_record_names_carries_the_message() -> Result<()> {
    let mut options = SimOptions::new(3, Topology::Isolated);
    options.config = test_config();
    let mut net = SimNet::start(options).await?;
    // R is the farthest from E, so greed alone would never pick it: only
    // E's record, which names R as its relay, leads A there.
    let order = greedy_line(&net, 2);
    let (r, a, e) = (order[0], order[1], order[2]);
    let circuit: Multiaddr = format!(
        "{}/p2p/{}/p2p-circuit/p2p/{}",
        net.addr(r),
        net.peer_id(r),
        net.peer_id(e)
    )
    .parse()?;
    net.config_mut(e).network.external_addrs = vec![circuit];
    net.stop(e).await?;
    net.restart(e).await?;
    net.connect(a, e).await?;
    wait_until(Duration::from_secs(20), "E's record at A", || {
        let h = net.handle(a).clone();
        let peer = net.peer_id(e);
        async move {
            h.known_record(peer)
                .await
                .ok()
                .flatten()
                .is_some_and(|rec| {
                    rec.addrs
                        .iter()
                        .any(|x| x.to_string().contains("p2p-circuit"))
                })
        }
    })
    .await?;
    net.cut(a, e).await?;
    net.connect(a, r).await?;
    net.connect(r, e).await?;
    let id = net
        .handle(a)
        .send(
            net.peer_id(e),
            b"via your relay".to_vec(),
            SendOptions::default(),
        )
        .await?;
    let m = wait_state(
        net.handle(a),
        id,
        DeliveryState::Delivered,
        Duration::from_secs(60),
    )
    .await?;
    ensure!(m.hops == Some(2), "hops {:?}", m.hops);
    ensure!(net.handle(r).stats().routed_forwarded >= 1);
    net.shutdown().await;
    Ok(())
}
