//! Offline delivery through mailboxes: real nodes on loopback, the recipient
//! (and in one test the sender too) offline while the message waits at the
//! mailboxes closest to the recipient's mailbox key.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use peercomm_node::mailbox::{by_distance, mailbox_key};
use peercomm_node::{
    DeliveryState, InboxQuery, MessageId, NodeHandle, OutgoingMessage, PeerId, SendOptions,
};
use peercomm_sim::{wait_state, wait_until, SimNet, SimOptions, SimTransport, Topology};

const NODES: usize = 8;

async fn wait_joined(net: &SimNet, indices: &[usize]) -> Result<()> {
    for &i in indices {
        let handle = net.handle(i).clone();
        wait_until(Duration::from_secs(60), &format!("node {i} joined"), || {
            let handle = handle.clone();
            async move {
                handle.dht_stats().await.is_ok_and(|s| s.joined)
                    && handle.stats().dht_publish_ok > 0
            }
        })
        .await?;
    }
    Ok(())
}

async fn start() -> Result<SimNet> {
    start_with(|_| {}).await
}

async fn start_with(configure: impl FnOnce(&mut SimOptions)) -> Result<SimNet> {
    let mut options = SimOptions::new(NODES, Topology::Isolated);
    options.bootstrap_via = Some(0);
    options.transport = SimTransport::Tcp;
    configure(&mut options);
    let net = SimNet::start(options).await?;
    wait_joined(&net, &(0..NODES).collect::<Vec<_>>()).await?;
    Ok(net)
}

/// How many messages from `sender` with `body` the node's inbox holds.
async fn received(handle: &NodeHandle, body: &[u8]) -> Result<usize> {
    let inbox = handle.inbox(InboxQuery::default()).await?;
    Ok(inbox.iter().filter(|m| m.body == body).count())
}

/// Items the running mailboxes (all but `except`) hold in their stores now.
async fn held(net: &SimNet, except: &[usize]) -> Result<u64> {
    let mut items = 0;
    for i in (0..net.len()).filter(|i| !except.contains(i) && net.is_running(*i)) {
        items += net.handle(i).mailbox_stats().await?.items;
    }
    Ok(items)
}

/// `sender` sends `body` (with `options`) to `recipient`, which is offline,
/// and waits until mailboxes hold it; returns its id and outbox row.
async fn send_while_away(
    net: &SimNet,
    sender: usize,
    recipient: usize,
    body: &[u8],
    options: SendOptions,
) -> Result<(MessageId, OutgoingMessage)> {
    let id = net
        .handle(sender)
        .send(net.peer_id(recipient), body.to_vec(), options)
        .await?;
    let stored = wait_state(
        net.handle(sender),
        id,
        DeliveryState::Stored,
        Duration::from_secs(60),
    )
    .await?;
    Ok((id, stored))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_recipient_returning_25_hours_later_gets_its_message_from_mailboxes(
) -> Result<()> {
    let mut net = start().await?;
    let (sender, recipient) = (1, NODES - 1);
    net.stop(recipient).await?;

    let body = b"waiting for you".to_vec();
    let (id, stored) =
        send_while_away(&net, sender, recipient, &body, SendOptions::default()).await?;
    // R = 4 mailboxes took it: 8 nodes, less the sender and the recipient.
    ensure!(
        stored.replicas == Some(4),
        "replicas: {:?}",
        stored.replicas
    );
    ensure!(held(&net, &[recipient]).await? == 4, "4 mailboxes hold it");

    // A day and an hour pass (the shared test clock) before it returns.
    net.clock().advance(Duration::from_secs(25 * 3600));
    net.restart(recipient).await?;
    let delivered = wait_state(
        net.handle(sender),
        id,
        DeliveryState::Delivered,
        Duration::from_secs(60),
    )
    .await
    .context("the receipt back to the sender")?;
    ensure!(delivered.state == DeliveryState::Delivered);
    // Exactly once, whether the sender's retry or the drain brought it
    // first (the drain still fetches, de-duplicates and acknowledges it).
    ensure!(received(net.handle(recipient), &body).await? == 1);
    // The recipient's acknowledgement emptied every mailbox.
    let acked = wait_until(Duration::from_secs(30), "mailboxes emptied", || async {
        held(&net, &[recipient]).await.is_ok_and(|n| n == 0)
    })
    .await;
    ensure!(
        acked.is_ok(),
        "mailboxes still hold {}",
        held(&net, &[recipient]).await?
    );
    net.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_that_went_offline_finds_its_receipt_in_its_own_mailboxes() -> Result<()> {
    let mut net = start().await?;
    let (sender, recipient) = (1, NODES - 1);
    net.stop(recipient).await?;
    let body = b"read this later".to_vec();
    let (id, _) = send_while_away(&net, sender, recipient, &body, SendOptions::default()).await?;
    net.stop(sender).await?;

    // The recipient returns while the sender is away: it gets the message,
    // and the receipt waits in the sender's mailboxes.
    net.restart(recipient).await?;
    let handle = net.handle(recipient).clone();
    wait_until(Duration::from_secs(60), "the message drained", || {
        let handle = handle.clone();
        async move { handle.stats().mailbox_drained == 1 }
    })
    .await?;
    ensure!(received(net.handle(recipient), &body).await? == 1);
    // The sender cannot be reached, so its mailboxes take the receipt: one
    // more item stored beyond the message's 4 replicas.
    let mailboxes: Vec<usize> = (0..NODES)
        .filter(|i| ![sender, recipient].contains(i))
        .collect();
    wait_until(Duration::from_secs(60), "the receipt deposited", || {
        let stored: u64 = mailboxes
            .iter()
            .map(|i| net.handle(*i).stats().mailbox_stored)
            .sum();
        async move { stored > 4 }
    })
    .await?;
    // Gone again before the sender returns: the receipt can only come from
    // the sender's mailboxes, not from a retry.
    net.stop(recipient).await?;

    net.restart(sender).await?;
    let waited = wait_state(
        net.handle(sender),
        id,
        DeliveryState::Delivered,
        Duration::from_secs(60),
    )
    .await;
    if waited.is_err() {
        for i in (0..NODES).filter(|i| net.is_running(*i)) {
            let s = net.handle(i).stats();
            eprintln!(
                "node {i}: stored {} refused {} fetches {} acks {} deposited {} drained {} receipts {}",
                s.mailbox_stored,
                s.mailbox_refused,
                s.mailbox_fetches,
                s.mailbox_acks,
                s.mailbox_deposited,
                s.mailbox_drained,
                s.mailbox_receipts
            );
        }
    }
    waited.context("the receipt from the sender's mailboxes")?;
    ensure!(net.handle(sender).stats().mailbox_receipts == 1);
    net.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_message_leaves_every_mailbox_and_is_never_delivered() -> Result<()> {
    let mut net =
        start_with(|o| o.config.mailbox.cleanup_interval = Duration::from_secs(1)).await?;
    let (sender, recipient) = (1, NODES - 1);
    net.stop(recipient).await?;
    let options = SendOptions {
        ttl: Some(Duration::from_secs(3600)),
        ..SendOptions::default()
    };
    let (id, stored) = send_while_away(&net, sender, recipient, b"too late", options).await?;
    ensure!(stored.replicas == Some(4), "replicas {:?}", stored.replicas);

    // Two hours later (the shared test clock): expired at the sender, and
    // purged from each of the 4 mailboxes by their cleanup job.
    net.clock().advance(Duration::from_secs(2 * 3600));
    wait_state(
        net.handle(sender),
        id,
        DeliveryState::Expired,
        Duration::from_secs(30),
    )
    .await?;
    let running: Vec<usize> = (0..NODES).filter(|i| *i != recipient).collect();
    let expired = |net: &SimNet| -> u64 {
        running
            .iter()
            .map(|i| net.handle(*i).stats().mailbox_expired)
            .sum()
    };
    wait_until(Duration::from_secs(30), "4 mailboxes purged it", || {
        let n = expired(&net);
        async move { n == 4 }
    })
    .await?;
    for i in &running {
        let held = net.handle(*i).mailbox_stats().await?;
        ensure!(held.items == 0, "node {i} still holds {held:?}");
    }

    // The recipient returns and drains its mailboxes: nothing arrives.
    let fetches_before: u64 = running
        .iter()
        .map(|i| net.handle(*i).stats().mailbox_fetches)
        .sum();
    net.restart(recipient).await?;
    wait_until(Duration::from_secs(60), "the recipient drained", || {
        let fetches: u64 = running
            .iter()
            .map(|i| net.handle(*i).stats().mailbox_fetches)
            .sum();
        async move { fetches >= fetches_before + 4 }
    })
    .await?;
    ensure!(received(net.handle(recipient), b"too late").await? == 0);
    ensure!(net.handle(recipient).stats().received == 0);
    let state = net.handle(sender).message_state(id).await?.map(|m| m.state);
    ensure!(state == Some(DeliveryState::Expired), "{state:?}");
    net.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_sender_is_refused_past_its_quota_and_others_get_through() -> Result<()> {
    let mut net = start_with(|o| o.config.mailbox.per_pair_items = 2).await?;
    let (flooder, other, recipient) = (1, 2, NODES - 1);
    let to = net.peer_id(recipient);
    net.stop(recipient).await?;
    // 6 mailbox candidates (8 nodes less the sender and the recipient), 2
    // items each from one sender for one recipient: 12 replicas at most.
    // The messages go one at a time, each settled before the next, so which
    // of them the quota refuses is fixed: the first two fill the 4 nearest
    // mailboxes, the next two the 2 spares, the last four find no room.
    // (Sent all at once, the 12 places are shared out in arrival order.)
    let handle = net.handle(flooder).clone();
    let mut replicas = Vec::new();
    let mut reasons = Vec::new();
    for n in 0..8u8 {
        let id = handle
            .send(to, vec![b'f', n], SendOptions::default())
            .await?;
        // The refusal this message recorded (a later retry may note another
        // error over it).
        let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
        let settled = seen.clone();
        wait_until(Duration::from_secs(60), "the deposit round settled", || {
            let (handle, seen) = (handle.clone(), settled.clone());
            async move {
                let Ok(Some(m)) = handle.message_state(id).await else {
                    return false;
                };
                let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(reason) = m.last_error.filter(|e| e.contains("no mailbox took")) {
                    seen.get_or_insert(reason);
                }
                m.replicas.is_some() || seen.is_some()
            }
        })
        .await?;
        let m = handle.message_state(id).await?.context("row")?;
        replicas.push(m.replicas.unwrap_or(0));
        reasons.push(seen.lock().unwrap_or_else(|p| p.into_inner()).clone());
    }
    ensure!(
        replicas == [4, 4, 2, 2, 0, 0, 0, 0],
        "replicas per message: {replicas:?}"
    );
    for (n, reason) in reasons.iter().enumerate().skip(4) {
        let reason = reason.as_deref().unwrap_or_default();
        ensure!(
            reason.contains("waiting here for this recipient"),
            "message {n}'s reason: {reason}"
        );
    }
    let refusals: u64 = (0..NODES)
        .filter(|i| *i != recipient)
        .map(|i| net.handle(i).stats().mailbox_refused)
        .sum();
    ensure!(refusals > 0);

    // Another sender to the same recipient still gets 4 replicas.
    let (_, stored) =
        send_while_away(&net, other, recipient, b"me too", SendOptions::default()).await?;
    ensure!(stored.replicas == Some(4), "replicas {:?}", stored.replicas);
    net.shutdown().await;
    Ok(())
}

/// The 4 running peers nearest `recipient`'s mailbox key, other than the
/// recipient itself (the sender too, once the message is out of its hands).
fn nearest(net: &SimNet, recipient: usize) -> Vec<usize> {
    let running: Vec<PeerId> = (0..net.len())
        .filter(|i| *i != recipient && net.is_running(*i))
        .map(|i| net.peer_id(i))
        .collect();
    let mut out: Vec<usize> = by_distance(&mailbox_key(&net.peer_id(recipient)), running)
        .into_iter()
        .take(4)
        .filter_map(|p| (0..net.len()).find(|i| net.peer_id(*i) == p))
        .collect();
    out.sort_unstable();
    out
}

/// Waits until exactly the 4 nearest running peers hold one copy each.
async fn settle(net: &SimNet, recipient: usize, what: &str) -> Result<()> {
    let outcome = wait_until(Duration::from_secs(60), what, || async {
        holders(net, &[recipient])
            .await
            .is_ok_and(|h| h == nearest(net, recipient))
            && held(net, &[recipient]).await.is_ok_and(|n| n == 4)
    })
    .await;
    if outcome.is_err() {
        eprintln!(
            "holders {:?}, nearest {:?}",
            holders(net, &[recipient]).await,
            nearest(net, recipient)
        );
    }
    Ok(outcome?)
}

/// The running nodes, less `except`, that hold at least one item.
async fn holders(net: &SimNet, except: &[usize]) -> Result<Vec<usize>> {
    let mut out = Vec::new();
    for i in (0..net.len()).filter(|i| !except.contains(i) && net.is_running(*i)) {
        if net.handle(i).mailbox_stats().await?.items > 0 {
            out.push(i);
        }
    }
    Ok(out)
}

/// Crashes two of the nodes holding items (never the bootstrap node 0 or
/// `recipient`); returns which.
async fn kill_two_holders(net: &mut SimNet, recipient: usize) -> Result<Vec<usize>> {
    let dying: Vec<usize> = holders(net, &[0, recipient])
        .await?
        .into_iter()
        .take(2)
        .collect();
    ensure!(dying.len() == 2, "holders besides node 0: {dying:?}");
    for i in &dying {
        net.kill(*i)?;
    }
    Ok(dying)
}

/// Waits until `node`'s inbox holds `body`.
async fn wait_received(net: &SimNet, node: usize, body: &[u8]) -> Result<()> {
    let handle = net.handle(node).clone();
    wait_until(Duration::from_secs(60), "the message drained", || {
        let (handle, body) = (handle.clone(), body.to_vec());
        async move { received(&handle, &body).await.is_ok_and(|n| n > 0) }
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_of_four_mailboxes_dying_still_deliver_exactly_once() -> Result<()> {
    let mut net = start().await?;
    let (sender, recipient) = (1, NODES - 1);
    net.stop(recipient).await?;
    let body = b"two of you will do".to_vec();
    let (id, stored) =
        send_while_away(&net, sender, recipient, &body, SendOptions::default()).await?;
    ensure!(stored.replicas == Some(4), "replicas {:?}", stored.replicas);
    // Two of the holders crash (not the bootstrap node), and the sender
    // leaves, so only the 2 remaining mailboxes can deliver.
    kill_two_holders(&mut net, recipient).await?;
    net.stop(sender).await?;

    net.restart(recipient).await?;
    wait_received(&net, recipient, &body).await?;
    // Both survivors served it; the recipient kept one copy.
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(received(net.handle(recipient), &body).await? == 1);
    ensure!(net.handle(recipient).stats().mailbox_drained == 1);

    // The sender returns to `delivered`, from the receipt in its mailboxes.
    net.restart(sender).await?;
    wait_state(
        net.handle(sender),
        id,
        DeliveryState::Delivered,
        Duration::from_secs(60),
    )
    .await?;
    net.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_follow_the_mailbox_set_as_it_changes() -> Result<()> {
    let mut net =
        start_with(|o| o.config.mailbox.replicate_interval = Duration::from_secs(1)).await?;
    let (sender, recipient) = (1, NODES - 1);
    net.stop(recipient).await?;
    let body = b"follow me".to_vec();
    send_while_away(&net, sender, recipient, &body, SendOptions::default()).await?;

    settle(&net, recipient, "the 4 nearest hold it").await?;

    // Two holders crash (not the bootstrap node): the survivors copy the
    // message to the next nearest, so 4 copies stay available.
    kill_two_holders(&mut net, recipient).await?;
    settle(&net, recipient, "4 copies again after 2 holders died").await?;
    let replicated: u64 = (0..net.len())
        .filter(|i| net.is_running(*i))
        .map(|i| net.handle(i).stats().mailbox_replicated)
        .sum();
    ensure!(replicated >= 2, "{replicated} copies made");

    // New peers join; wherever they land, the copies move to the 4 nearest
    // (farther holders hand off and drop theirs).
    for _ in 0..4 {
        let i = net.spawn(Some(0)).await?;
        wait_joined(&net, &[i]).await?;
    }
    settle(&net, recipient, "4 copies at the 4 nearest after 4 joined").await?;

    // The recipient returns and gets it exactly once.
    net.restart(recipient).await?;
    wait_received(&net, recipient, &body).await?;
    ensure!(received(net.handle(recipient), &body).await? == 1);
    net.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mailbox_killed_during_deposits_loses_nothing_it_acknowledged() -> Result<()> {
    // One replica per message, so each `stored` names exactly one mailbox's
    // acknowledgement.
    let mut net = start_with(|o| o.config.mailbox.replicas = 1).await?;
    let (sender, recipient) = (1, NODES - 1);
    let to = net.peer_id(recipient);
    // The mailbox the sender tries first: nearest the key, not the sender.
    let candidates: Vec<PeerId> = (0..NODES)
        .filter(|i| ![sender, recipient].contains(i))
        .map(|i| net.peer_id(i))
        .collect();
    let first = by_distance(&mailbox_key(&to), candidates)[0];
    let mailbox = (0..NODES)
        .find(|i| net.peer_id(*i) == first)
        .context("the first mailbox")?;
    net.stop(recipient).await?;

    const MESSAGES: usize = 40;
    let mut ids = Vec::new();
    for n in 0..MESSAGES {
        let body = format!("deposit {n}").into_bytes();
        let id = net
            .handle(sender)
            .send(to, body.clone(), SendOptions::default())
            .await?;
        ids.push((id, body));
    }
    // Kill it once some deposits were acknowledged and others are in flight.
    let handle = net.handle(sender).clone();
    let stored_ids = |handle: NodeHandle, ids: Vec<(MessageId, Vec<u8>)>| async move {
        let mut out = Vec::new();
        for (id, body) in ids {
            if let Ok(Some(m)) = handle.message_state(id).await {
                if m.state == DeliveryState::Stored {
                    out.push(body);
                }
            }
        }
        out
    };
    wait_until(
        Duration::from_secs(60),
        "some deposits acknowledged",
        || {
            let (handle, ids) = (handle.clone(), ids.clone());
            async move { stored_ids(handle, ids).await.len() >= 3 }
        },
    )
    .await?;
    net.kill(mailbox)?;
    let acknowledged = stored_ids(handle.clone(), ids.clone()).await;
    eprintln!(
        "{} of {MESSAGES} deposits acknowledged when the mailbox was killed",
        acknowledged.len()
    );
    // The sender leaves too: only mailboxes can deliver from here on.
    net.stop(sender).await?;

    net.restart(mailbox).await?;
    wait_joined(&net, &[mailbox]).await?;
    net.restart(recipient).await?;
    let inbox = net.handle(recipient).clone();
    let expected = acknowledged.clone();
    let outcome = wait_until(
        Duration::from_secs(60),
        "every acknowledged deposit delivered",
        || {
            let (inbox, expected) = (inbox.clone(), expected.clone());
            async move {
                let mut all = true;
                for body in &expected {
                    all &= received(&inbox, body).await.is_ok_and(|n| n == 1);
                }
                all
            }
        },
    )
    .await;
    outcome.with_context(|| format!("{} acknowledged before the kill", acknowledged.len()))?;

    // The sender returns: the rest arrive too, each exactly once.
    net.restart(sender).await?;
    for (id, _) in &ids {
        wait_state(
            net.handle(sender),
            *id,
            DeliveryState::Delivered,
            Duration::from_secs(60),
        )
        .await?;
    }
    for (_, body) in &ids {
        ensure!(received(net.handle(recipient), body).await? == 1);
    }
    net.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_stays_in_the_mailboxes_until_its_receipt_is_placed() -> Result<()> {
    // Each mailbox holds at most one item signed by any one peer, so the
    // recipient's receipt can be refused everywhere.
    let mut net = start_with(|o| {
        o.config.mailbox.per_sender_items = 1;
        o.config.mailbox.drain_interval = Duration::from_secs(2);
    })
    .await?;
    let (sender, recipient, other) = (1, NODES - 1, NODES - 2);
    // The recipient fills its one slot at every mailbox but `other`'s own:
    // two messages to `other`, who is away (4 replicas, then the 2 spares).
    net.stop(other).await?;
    let to_other = net.peer_id(other);
    for body in [b"one".to_vec(), b"two".to_vec()] {
        let id = net
            .handle(recipient)
            .send(to_other, body, SendOptions::default())
            .await?;
        let handle = net.handle(recipient).clone();
        wait_until(Duration::from_secs(60), "a deposit round settled", || {
            let handle = handle.clone();
            async move {
                handle
                    .message_state(id)
                    .await
                    .ok()
                    .flatten()
                    .is_some_and(|m| {
                        m.replicas.is_some()
                            || m.last_error.is_some_and(|e| e.contains("no mailbox took"))
                    })
            }
        })
        .await?;
    }
    ensure!(
        held(&net, &[recipient, other]).await? == 6,
        "the recipient's slot is taken at all 6 mailboxes"
    );

    // The sender's message waits for the recipient; then the sender leaves.
    net.stop(recipient).await?;
    let body = b"receipt first".to_vec();
    let (id, stored) =
        send_while_away(&net, sender, recipient, &body, SendOptions::default()).await?;
    ensure!(stored.replicas == Some(4), "replicas {:?}", stored.replicas);
    net.stop(sender).await?;
    let mailboxes: Vec<usize> = (0..NODES)
        .filter(|i| ![sender, recipient, other].contains(i))
        .collect();
    let before = held(&net, &[sender, recipient, other]).await?;

    // The recipient returns and reads it, but no mailbox of the sender takes
    // its receipt: the message is not acknowledged, so it stays.
    net.restart(recipient).await?;
    wait_received(&net, recipient, &body).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    ensure!(received(net.handle(recipient), &body).await? == 1);
    let refused: u64 = mailboxes
        .iter()
        .map(|i| net.handle(*i).stats().mailbox_refused)
        .sum();
    ensure!(refused > 0, "the receipt was refused");
    ensure!(
        held(&net, &[sender, recipient, other]).await? == before,
        "copies deleted before the receipt was placed"
    );

    // The sender returns: the receipt reaches it, then the copies go.
    net.restart(sender).await?;
    wait_state(
        net.handle(sender),
        id,
        DeliveryState::Delivered,
        Duration::from_secs(60),
    )
    .await?;
    wait_until(
        Duration::from_secs(60),
        "the copies acknowledged",
        || async {
            held(&net, &[sender, recipient, other])
                .await
                .is_ok_and(|n| n == before - 4)
        },
    )
    .await?;
    ensure!(received(net.handle(recipient), &body).await? == 1);
    net.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deposits_for_one_recipient_share_one_mailbox_lookup_with_dht_tuning() -> Result<()> {
    let mut net = start().await?;
    let (sender, recipient) = (1, NODES - 1);
    net.stop(recipient).await?;
    let stats = |net: &SimNet| net.handle(sender).stats().mailbox_lookups;

    // DHT tuning (the default): the first deposit looks the recipient's
    // mailboxes up, the next ones reuse what it found.
    let before = stats(&net);
    let mut ids = Vec::new();
    for k in 0..3 {
        let body = format!("tuned {k}").into_bytes();
        let (id, stored) =
            send_while_away(&net, sender, recipient, &body, SendOptions::default()).await?;
        ensure!(
            stored.replicas == Some(4),
            "replicas: {:?}",
            stored.replicas
        );
        ids.push(id);
    }
    let tuned = stats(&net) - before;
    ensure!(
        tuned == 1,
        "3 deposits made {tuned} mailbox lookups, want 1"
    );

    // Without it, every deposit looks them up again.
    net.stop(sender).await?;
    net.config_mut(sender).bandwidth.dht_tuning = false;
    net.restart(sender).await?;
    wait_joined(&net, &[sender]).await?;
    let before = stats(&net);
    for k in 0..3 {
        let body = format!("untuned {k}").into_bytes();
        let (id, _) =
            send_while_away(&net, sender, recipient, &body, SendOptions::default()).await?;
        ids.push(id);
    }
    let untuned = stats(&net) - before;
    ensure!(
        untuned == 3,
        "3 deposits made {untuned} mailbox lookups, want 3"
    );

    // Nothing is lost either way.
    net.restart(recipient).await?;
    for id in ids {
        wait_state(
            net.handle(sender),
            id,
            DeliveryState::Delivered,
            Duration::from_secs(60),
        )
        .await?;
    }
    net.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemeral_messages_to_an_unreachable_peer_are_shed_not_relayed_or_deposited() -> Result<()>
{
    let mut net = start().await?;
    let (sender, recipient) = (1, NODES - 1);
    net.stop(recipient).await?;
    let typing = SendOptions {
        priority: Some(peercomm_node::Priority::Ephemeral),
        ..SendOptions::default()
    };
    let id = net
        .handle(sender)
        .send(net.peer_id(recipient), b"typing".to_vec(), typing)
        .await?;
    let shed = wait_state(
        net.handle(sender),
        id,
        DeliveryState::Expired,
        Duration::from_secs(30),
    )
    .await?;
    ensure!(
        shed.last_error
            .as_deref()
            .is_some_and(|e| e.contains("could not be reached")),
        "why: {:?}",
        shed.last_error
    );
    let s = net.handle(sender).stats();
    ensure!(s.ephemeral_shed >= 1, "shed: {}", s.ephemeral_shed);
    ensure!(
        s.mailbox_lookups == 0 && s.mailbox_deposited == 0 && s.routed_sent == 0,
        "an ephemeral message went on: {} lookups, {} deposits, {} routed",
        s.mailbox_lookups,
        s.mailbox_deposited,
        s.routed_sent
    );

    // An interactive message to the same peer still waits for it.
    let (id, stored) = send_while_away(
        &net,
        sender,
        recipient,
        b"call me back",
        SendOptions::default(),
    )
    .await?;
    ensure!(
        stored.replicas == Some(4),
        "replicas: {:?}",
        stored.replicas
    );
    net.restart(recipient).await?;
    wait_state(
        net.handle(sender),
        id,
        DeliveryState::Delivered,
        Duration::from_secs(60),
    )
    .await?;
    net.shutdown().await;
    Ok(())
}
