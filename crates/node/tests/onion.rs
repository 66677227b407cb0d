//! Onion routing between real nodes over loopback TCP: a message crosses
//! three relays inside fixed-size Sphinx packets, the receipt comes back
//! through the SURB, each relay learns only its neighbours, a failed relay
//! is replaced, keys rotate with a grace window, and a sender without
//! enough relays gets a clear error.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use peercomm_node::{
    Config, DeliveryState, NodeHandle, OnionStatus, PeerId, Role, Route, SendOptions,
};
use peercomm_sim::{message, test_config, wait_state, wait_until, SimNet, SimOptions, Topology};

async fn onion(handle: &NodeHandle) -> Result<OnionStatus> {
    Ok(handle.onion_status().await?)
}

/// Waits until node `at` knows exactly `n` relays.
async fn wait_relays(net: &SimNet, at: usize, n: usize) -> Result<()> {
    let h = net.handle(at).clone();
    wait_until(
        Duration::from_secs(30),
        &format!("{n} relays known"),
        || {
            let h = h.clone();
            async move { h.onion_status().await.is_ok_and(|s| s.relays_known == n) }
        },
    )
    .await?;
    Ok(())
}

/// The index of the node with PeerId `p`.
fn index(net: &SimNet, p: &PeerId) -> Result<usize> {
    (0..net.len())
        .find(|i| net.peer_id(*i) == *p)
        .context("unknown peer")
}

/// What node `i` saw of the onion packets it handled.
async fn seen(net: &SimNet, i: usize) -> Result<Vec<peercomm_node::onion::HopSeen>> {
    Ok(onion(net.handle(i)).await?.hops_seen)
}

fn onion_config() -> Config {
    let mut config = test_config();
    config.onion.keep_hop_log = true;
    config.onion.check_timeout = Duration::from_secs(10);
    config.onion.answer_timeout = Duration::from_secs(15);
    config
}

fn send_onion() -> SendOptions {
    SendOptions {
        route: Some(Route::Onion),
        ..SendOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_crosses_three_relays_and_each_relay_sees_only_its_neighbours() -> Result<()> {
    let mut options = SimOptions::new(6, Topology::FullMesh);
    options.config = onion_config();
    let net = SimNet::start(options).await?;
    let (s, d) = (0, 5);
    let (sender, recipient) = (net.peer_id(s), net.peer_id(d));
    // Relays: every other node (the recipient is never one of its own).
    wait_relays(&net, s, 5).await?;

    let body = b"through the onion".to_vec();
    let id = net
        .handle(s)
        .send(recipient, body.clone(), send_onion())
        .await?;
    let out = wait_state(
        net.handle(s),
        id,
        DeliveryState::Delivered,
        Duration::from_secs(40),
    )
    .await?;
    ensure!(
        out.hops == Some(4),
        "hops {:?}, expected 3 relays + 1",
        out.hops
    );
    let inbox = net.handle(d).inbox(Default::default()).await?;
    let got = inbox
        .iter()
        .find(|m| m.id == *id.as_bytes())
        .context("not in the inbox")?;
    ensure!(
        got.body == body && got.sender == sender.to_base58(),
        "wrong message arrived"
    );

    let status = onion(net.handle(s)).await?;
    let path = status.paths.first().context("no path held")?.clone();
    ensure!(path.len() == 3, "path of {} relays", path.len());
    ensure!(!path.contains(&sender) && !path.contains(&recipient));
    let mut distinct = path.clone();
    distinct.sort();
    distinct.dedup();
    ensure!(distinct.len() == 3, "relays repeat: {path:?}");
    let (r1, r2, r3) = (path[0], path[1], path[2]);
    let log1 = seen(&net, index(&net, &r1)?).await?;
    let log2 = seen(&net, index(&net, &r2)?).await?;
    let log3 = seen(&net, index(&net, &r3)?).await?;
    let logd = seen(&net, d).await?;
    let mentions = |log: &[peercomm_node::onion::HopSeen], p: PeerId| {
        log.iter().any(|h| h.from == p || h.to == Some(p))
    };
    // Relay 1: the sender's connection, never the recipient.
    ensure!(
        log1.iter().any(|h| h.from == sender && h.to == Some(r2)),
        "relay 1: {log1:?}"
    );
    ensure!(
        !mentions(&log1, recipient),
        "relay 1 learned the recipient: {log1:?}"
    );
    // A middle relay: neither end.
    ensure!(
        log2.iter().any(|h| h.from == r1 && h.to == Some(r3)),
        "relay 2: {log2:?}"
    );
    ensure!(
        !mentions(&log2, sender) && !mentions(&log2, recipient),
        "relay 2: {log2:?}"
    );
    // The last relay: the recipient, never the sender.
    ensure!(
        log3.iter().any(|h| h.from == r2 && h.to == Some(recipient)),
        "relay 3: {log3:?}"
    );
    ensure!(
        !mentions(&log3, sender),
        "relay 3 learned the sender: {log3:?}"
    );
    // The recipient: only the last relay, and the answer went back to it.
    ensure!(
        logd.iter().any(|h| h.from == r3 && h.to.is_none()),
        "recipient: {logd:?}"
    );
    ensure!(
        !mentions(&logd, sender),
        "the recipient saw the sender's connection: {logd:?}"
    );
    // The answer came back along the same relays, reversed.
    ensure!(
        log3.iter().any(|h| h.from == recipient && h.to == Some(r2)),
        "relay 3 back: {log3:?}"
    );
    ensure!(
        log1.iter().any(|h| h.from == r2 && h.to == Some(sender)),
        "relay 1 back: {log1:?}"
    );

    let stats = net.handle(s).stats();
    ensure!(
        stats.onion_sent == 1 && stats.onion_answers == 1,
        "{stats:?}"
    );
    ensure!(stats.onion_path_checks >= 1, "no path check: {stats:?}");
    ensure!(net.handle(d).stats().onion_delivered == 1);
    for r in [r1, r2, r3] {
        ensure!(
            net.handle(index(&net, &r)?).stats().onion_relayed >= 2,
            "relay {r} relayed too little"
        );
    }

    // A second message reuses the checked path: no new check.
    let checks = stats.onion_path_checks;
    let id2 = net
        .handle(s)
        .send(recipient, b"again".to_vec(), send_onion())
        .await?;
    wait_state(
        net.handle(s),
        id2,
        DeliveryState::Delivered,
        Duration::from_secs(30),
    )
    .await?;
    ensure!(
        net.handle(s).stats().onion_path_checks == checks,
        "the path was checked again"
    );
    net.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_dies_is_replaced_and_the_message_still_arrives() -> Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
    let mut options = SimOptions::new(8, Topology::FullMesh);
    options.config = onion_config();
    let mut net = SimNet::start(options).await?;
    let (s, d) = (0, 7);
    let recipient = net.peer_id(d);
    wait_relays(&net, s, 7).await?;
    let id = net
        .handle(s)
        .send(recipient, b"first".to_vec(), send_onion())
        .await?;
    wait_state(
        net.handle(s),
        id,
        DeliveryState::Delivered,
        Duration::from_secs(40),
    )
    .await?;
    let path = onion(net.handle(s)).await?.paths[0].clone();
    let dead = path[1];
    let dead_index = index(&net, &dead)?;
    net.kill(dead_index)?;

    let id = net
        .handle(s)
        .send(recipient, b"second".to_vec(), send_onion())
        .await?;
    wait_state(
        net.handle(s),
        id,
        DeliveryState::Delivered,
        Duration::from_secs(60),
    )
    .await?;
    let stats = net.handle(s).stats();
    ensure!(
        stats.onion_hop_failures >= 1,
        "no hop failure counted: {stats:?}"
    );
    let now = onion(net.handle(s)).await?;
    ensure!(
        now.paths.iter().all(|p| !p.contains(&dead)),
        "the dead relay is still on a path: {:?}",
        now.paths
    );
    let inbox = net.handle(d).inbox(Default::default()).await?;
    ensure!(
        inbox.iter().any(|m| m.body == b"second"),
        "second message missing"
    );
    net.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_keys_are_published_and_the_old_key_works_through_its_grace() -> Result<()> {
    let mut config = onion_config();
    config.onion.key_rotation = Duration::from_secs(3);
    config.onion.key_grace = Duration::from_secs(3600);
    let mut options = SimOptions::new(5, Topology::FullMesh);
    options.config = config;
    let net = SimNet::start(options).await?;
    let (s, d) = (0, 4);
    wait_relays(&net, s, 4).await?;
    let first = onion(net.handle(d)).await?.epoch;
    let h = net.handle(d).clone();
    wait_until(Duration::from_secs(20), "a key rotation", || {
        let h = h.clone();
        async move { h.onion_status().await.is_ok_and(|st| st.epoch > first) }
    })
    .await?;
    let status = onion(net.handle(d)).await?;
    ensure!(
        status.live_epochs.len() >= 2,
        "old key gone: {:?}",
        status.live_epochs
    );
    ensure!(
        status.live_epochs.contains(&first),
        "first epoch not live: {status:?}"
    );
    // Whichever key the sender holds for the recipient, the message arrives.
    let id = net
        .handle(s)
        .send(net.peer_id(d), b"rotated".to_vec(), send_onion())
        .await?;
    wait_state(
        net.handle(s),
        id,
        DeliveryState::Delivered,
        Duration::from_secs(40),
    )
    .await?;
    ensure!(net.handle(d).stats().onion_dropped_unknown_key == 0);
    net.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_few_relays_is_a_clear_error_and_large_bodies_are_refused() -> Result<()> {
    // Only two nodes offer the relay role; three relays are needed.
    let mut options = SimOptions::new(5, Topology::FullMesh);
    options.config = onion_config();
    let mut net = SimNet::start(options).await?;
    for i in [1, 2] {
        net.stop(i).await?;
        net.config_mut(i).roles = vec![Role::Mailbox];
        net.restart(i).await?;
    }
    net.introduce_all().await?;
    let (s, d) = (0, 4);
    // Nodes 3 and 4 (the recipient, never its own relay) are left.
    wait_relays(&net, s, 2).await?;
    let id = net
        .handle(s)
        .send(net.peer_id(d), b"x".to_vec(), send_onion())
        .await?;
    let h = net.handle(s).clone();
    wait_until(Duration::from_secs(20), "the relay error", || {
        let h = h.clone();
        async move {
            message(&h, id).await.is_some_and(|m| {
                m.last_error
                    .as_deref()
                    .is_some_and(|e| e.contains("not enough onion relays"))
            })
        }
    })
    .await?;
    // Never left at mailboxes either: they would see both ends.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let out = message(net.handle(s), id).await.context("message")?;
    ensure!(
        out.state != DeliveryState::Delivered,
        "delivered without relays"
    );
    ensure!(out.replicas.is_none(), "deposited: {:?}", out.replicas);
    for i in 0..5 {
        let held = net.handle(i).mailbox_stats().await?.items;
        ensure!(held == 0, "node {i}'s mailbox holds {held} items");
    }

    let too_big = vec![b'a'; peercomm_wire::MAX_ONION_BODY_BYTES + 1];
    let err = net
        .handle(s)
        .send(net.peer_id(d), too_big, send_onion())
        .await
        .err()
        .context("an oversized onion body was accepted")?;
    ensure!(
        err.to_string().contains("onion message carries at most"),
        "{err}"
    );
    net.shutdown().await;
    Ok(())
}
