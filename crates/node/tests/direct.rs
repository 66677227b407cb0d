//! Direct delivery between real nodes over loopback TCP.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use peercomm_node::{DeliveryState, InboxQuery, MessageId, NodeHandle, SendOptions};
use peercomm_sim::{wait_until, SimNet, SimOptions, Topology};
use rand::{Rng, SeedableRng};

async fn state_of(handle: &NodeHandle, id: MessageId) -> Option<DeliveryState> {
    handle
        .message_state(id)
        .await
        .ok()
        .flatten()
        .map(|m| m.state)
}

async fn all_inbox(handle: &NodeHandle) -> Result<Vec<peercomm_node::IncomingMessage>> {
    let mut out = Vec::new();
    let mut after = None;
    for _ in 0..10_000 {
        let page = handle
            .inbox(InboxQuery {
                peer: None,
                after,
                limit: Some(500),
            })
            .await?;
        let Some(last) = page.last() else { break };
        after = Some(last.seq);
        out.extend(page);
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_nodes_two_thousand_messages_each_delivered_exactly_once() -> Result<()> {
    const NODES: usize = 10;
    const MESSAGES: usize = 2000;
    let options = SimOptions::new(NODES, Topology::FullMesh);
    let mut rng = rand::rngs::StdRng::seed_from_u64(options.seed);
    let net = SimNet::start(options).await?;

    // (sender, recipient) -> ids, in both directions between random pairs.
    let mut sent: Vec<(usize, usize, MessageId, Vec<u8>)> = Vec::with_capacity(MESSAGES);
    for n in 0..MESSAGES {
        let from = rng.gen_range(0..NODES);
        let mut to = rng.gen_range(0..NODES - 1);
        if to >= from {
            to += 1;
        }
        let body = format!("message {n} from {from} to {to}").into_bytes();
        let id = net
            .handle(from)
            .send(net.peer_id(to), body.clone(), SendOptions::default())
            .await?;
        sent.push((from, to, id, body));
    }
    let directions: HashSet<(usize, usize)> = sent.iter().map(|(f, t, _, _)| (*f, *t)).collect();
    ensure!(directions
        .iter()
        .any(|(f, t)| directions.contains(&(*t, *f))));

    // Every sender sees `delivered`.
    let pending: Vec<_> = sent.iter().map(|(f, _, id, _)| (*f, *id)).collect();
    let handles: Vec<_> = (0..NODES).map(|i| net.handle(i).clone()).collect();
    wait_until(Duration::from_secs(120), "every message delivered", || {
        let pending = pending.clone();
        let handles = handles.clone();
        async move {
            for (from, id) in pending {
                if state_of(&handles[from], id).await != Some(DeliveryState::Delivered) {
                    return false;
                }
            }
            true
        }
    })
    .await?;

    // Every recipient holds each message exactly once, with its body.
    let mut expected: HashMap<usize, HashMap<MessageId, Vec<u8>>> = HashMap::new();
    for (_, to, id, body) in &sent {
        expected.entry(*to).or_default().insert(*id, body.clone());
    }
    for i in 0..NODES {
        let inbox = all_inbox(net.handle(i)).await?;
        let want = expected.remove(&i).unwrap_or_default();
        ensure!(
            inbox.len() == want.len(),
            "node {i}: {} in inbox, {} sent to it",
            inbox.len(),
            want.len()
        );
        let mut seen = HashSet::new();
        for m in inbox {
            let id = MessageId::from(m.id);
            ensure!(seen.insert(id), "node {i}: {id} stored twice");
            let body = want
                .get(&id)
                .with_context(|| format!("node {i}: unexpected {id}"))?;
            ensure!(&m.body == body, "node {i}: body of {id} differs");
        }
        let stats = net.handle(i).stats();
        ensure!(
            stats.rejected_total() == 0,
            "node {i} rejected something: {stats:?}"
        );
    }
    net.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_recipient_gets_the_message_when_it_returns() -> Result<()> {
    let mut net = SimNet::start(SimOptions::new(2, Topology::FullMesh)).await?;
    let bob = net.peer_id(1);
    net.stop(1).await?;
    let id = net
        .handle(0)
        .send(bob, b"are you there?".to_vec(), SendOptions::default())
        .await?;

    // The sender keeps trying while bob is away.
    let alice = net.handle(0).clone();
    wait_until(Duration::from_secs(20), "three failed attempts", || {
        let alice = alice.clone();
        async move {
            alice
                .message_state(id)
                .await
                .ok()
                .flatten()
                .is_some_and(|m| m.attempts >= 3 && m.state == DeliveryState::Queued)
        }
    })
    .await?;

    net.restart(1).await?;
    wait_until(Duration::from_secs(30), "delivered after restart", || {
        let alice = alice.clone();
        async move { state_of(&alice, id).await == Some(DeliveryState::Delivered) }
    })
    .await?;
    let inbox = all_inbox(net.handle(1)).await?;
    ensure!(inbox.len() == 1 && inbox[0].body == b"are you there?");
    net.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_survives_a_sender_crash_right_after_send() -> Result<()> {
    let mut net = SimNet::start(SimOptions::new(2, Topology::Isolated)).await?;
    let bob = net.peer_id(1);
    // Alice knows where bob is but has never connected: nothing can go out
    // before the crash except by luck, so also stop bob first.
    net.stop(1).await?;
    let id = net
        .handle(0)
        .send(
            bob,
            b"written before the crash".to_vec(),
            SendOptions::default(),
        )
        .await?;
    net.kill(0)?;
    net.restart(0).await?;
    let alice = net.handle(0).clone();
    let state = state_of(&alice, id).await;
    ensure!(
        state == Some(DeliveryState::Queued),
        "after the crash: {state:?}"
    );

    net.restart(1).await?;
    net.handle(0).add_peer_address(bob, net.addr(1)).await?;
    wait_until(Duration::from_secs(30), "delivered after the crash", || {
        let alice = alice.clone();
        async move { state_of(&alice, id).await == Some(DeliveryState::Delivered) }
    })
    .await?;
    let inbox = all_inbox(net.handle(1)).await?;
    ensure!(inbox.len() == 1 && inbox[0].body == b"written before the crash");
    net.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_to_an_absent_peer_expires() -> Result<()> {
    let mut net = SimNet::start(SimOptions::new(2, Topology::FullMesh)).await?;
    let bob = net.peer_id(1);
    net.stop(1).await?;
    let id = net
        .handle(0)
        .send(
            bob,
            b"too late".to_vec(),
            SendOptions {
                ttl: Some(Duration::from_secs(3600)),
                priority: None,
                route: None,
            },
        )
        .await?;
    let alice = net.handle(0).clone();
    ensure!(state_of(&alice, id).await == Some(DeliveryState::Queued));
    net.clock().advance(Duration::from_secs(3601));
    wait_until(Duration::from_secs(10), "expired", || {
        let alice = alice.clone();
        async move { state_of(&alice, id).await == Some(DeliveryState::Expired) }
    })
    .await?;
    // Expired stays expired even when the peer returns.
    net.restart(1).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    ensure!(state_of(&alice, id).await == Some(DeliveryState::Expired));
    ensure!(all_inbox(net.handle(1)).await?.is_empty());
    net.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_refuses_bad_input_with_a_reason() -> Result<()> {
    let net = SimNet::start(SimOptions::new(2, Topology::Isolated)).await?;
    let me = net.peer_id(0);
    let err = net
        .handle(0)
        .send(me, b"x".to_vec(), SendOptions::default())
        .await
        .unwrap_err();
    ensure!(err.to_string().contains("itself"), "{err}");
    let err = net
        .handle(0)
        .send(net.peer_id(1), vec![0; 65 * 1024], SendOptions::default())
        .await
        .unwrap_err();
    ensure!(err.to_string().contains("limit"), "{err}");
    let err = net
        .handle(0)
        .send(
            net.peer_id(1),
            b"x".to_vec(),
            SendOptions {
                ttl: Some(Duration::from_secs(365 * 86400)),
                priority: None,
                route: None,
            },
        )
        .await
        .unwrap_err();
    ensure!(err.to_string().contains("max_ttl"), "{err}");
    net.shutdown().await;
    Ok(())
}
