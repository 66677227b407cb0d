//! Bandwidth adaptation on real nodes: dictionary negotiation with a peer
//! that has none, batching of bursts, and a congested link where
//! interactive messages overtake bulk ones and nothing is lost.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use peercomm_node::{DeliveryState, MessageId, NodeEvent, Priority, SendOptions};
use peercomm_sim::{wait_state, wait_until, SimNet, SimOptions, SimTransport, Topology};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

async fn start(nodes: usize, transport: SimTransport) -> Result<SimNet> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut options = SimOptions::new(nodes, Topology::FullMesh);
    options.transport = transport;
    println!("seed {}", options.seed);
    Ok(SimNet::start(options).await?)
}

/// Restarts node `i` with its configuration changed by `change`.
async fn reconfigure(
    net: &mut SimNet,
    i: usize,
    change: impl FnOnce(&mut peercomm_node::Config),
) -> Result<()> {
    net.stop(i).await?;
    change(net.config_mut(i));
    net.restart(i).await?;
    for j in 0..net.len() {
        if j != i {
            net.connect(i, j).await?;
        }
    }
    Ok(())
}

fn chat_text(n: usize) -> Vec<u8> {
    format!(
        "hey, are we still on for dinner tonight at 7? I can bring the wine \
         if you want, just let me know what you are cooking (message {n})"
    )
    .into_bytes()
}

fn opts(priority: Priority) -> SendOptions {
    SendOptions {
        priority: Some(priority),
        ..SendOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_the_dictionary_gets_messages_it_can_open() -> Result<()> {
    let mut net = start(3, SimTransport::Tcp).await?;
    // Node 2 runs without compression: its record offers no dictionary.
    reconfigure(&mut net, 2, |c| c.bandwidth.compression = false).await?;
    let (a, b, old) = (
        net.handle(1).clone(),
        net.handle(0).clone(),
        net.handle(2).clone(),
    );

    // To a peer that has the dictionary: sealed with it.
    let id = a
        .send(net.peer_id(0), chat_text(1), opts(Priority::Interactive))
        .await?;
    wait_state(&a, id, DeliveryState::Delivered, Duration::from_secs(30)).await?;
    ensure!(a.stats().sealed_dictionary == 1, "{:?}", a.stats());
    let got = b.inbox(Default::default()).await?;
    ensure!(
        got.iter().any(|m| m.body == chat_text(1)),
        "node 0 has no such body"
    );

    // To the peer without it: no dictionary, and it opens the message.
    let id = a
        .send(net.peer_id(2), chat_text(2), opts(Priority::Interactive))
        .await?;
    wait_state(&a, id, DeliveryState::Delivered, Duration::from_secs(30)).await?;
    ensure!(a.stats().sealed_dictionary == 1, "{:?}", a.stats());
    let got = old.inbox(Default::default()).await?;
    ensure!(
        got.iter().any(|m| m.body == chat_text(2)),
        "node 2 has no such body"
    );

    // And the other way: node 2 compresses nothing, node 1 opens it.
    let id = old
        .send(net.peer_id(1), chat_text(3), opts(Priority::Interactive))
        .await?;
    wait_state(&old, id, DeliveryState::Delivered, Duration::from_secs(30)).await?;
    ensure!(old.stats().sealed_dictionary == 0 && old.stats().sealed_zstd == 0);
    let got = a.inbox(Default::default()).await?;
    ensure!(
        got.iter().any(|m| m.body == chat_text(3)),
        "node 1 has no such body"
    );
    net.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_to_one_peer_leaves_in_batches_and_arrives_once() -> Result<()> {
    let mut net = start(2, SimTransport::Tcp).await?;
    let a = net.handle(0).clone();
    // Give identify time to tell node 0 that node 1 speaks the batch
    // protocol, then take node 1 away while 60 messages queue up for it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    net.stop(1).await?;
    let mut ids = Vec::new();
    for n in 0..60 {
        ids.push(
            a.send(net.peer_id(1), chat_text(n), opts(Priority::Interactive))
                .await?,
        );
    }
    // When it is back, the whole backlog is due at once.
    net.restart(1).await?;
    net.connect(0, 1).await?;
    let b = net.handle(1).clone();
    for id in &ids {
        wait_state(&a, *id, DeliveryState::Delivered, Duration::from_secs(60)).await?;
    }
    let s = a.stats();
    println!("batches {} attempts {}", s.batches_sent, s.attempts);
    ensure!(
        s.batches_sent > 0,
        "60 messages at once went out one by one"
    );
    ensure!(s.batches_sent < 60);
    let inbox = b.inbox(Default::default()).await?;
    ensure!(inbox.len() == 60, "{} messages in the inbox", inbox.len());
    ensure!(b.stats().duplicates == 0 || b.stats().received == 60);
    net.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_batching_gets_single_requests() -> Result<()> {
    let mut net = start(2, SimTransport::Tcp).await?;
    reconfigure(&mut net, 1, |c| c.bandwidth.batching = false).await?;
    let (a, b) = (net.handle(0).clone(), net.handle(1).clone());
    let mut ids = Vec::new();
    for n in 0..30 {
        ids.push(
            a.send(net.peer_id(1), chat_text(n), opts(Priority::Interactive))
                .await?,
        );
    }
    for id in &ids {
        wait_state(&a, *id, DeliveryState::Delivered, Duration::from_secs(60)).await?;
    }
    ensure!(
        a.stats().batches_sent == 0,
        "batched to a peer that does not offer it"
    );
    ensure!(b.inbox(Default::default()).await?.len() == 30);
    net.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_congested_link_interactive_overtakes_bulk_and_nothing_is_lost() -> Result<()> {
    let mut net = start(2, SimTransport::Tcp).await?;
    // Node 1 sits behind a 24 KiB/s link.
    reconfigure(&mut net, 1, |c| {
        c.network.link_rate_bytes_per_sec = 24 * 1024
    })
    .await?;
    let (a, phone) = (net.handle(0).clone(), net.handle(1).clone());
    let arrived: Arc<Mutex<HashMap<MessageId, Instant>>> = Arc::default();
    let mut events = phone.subscribe();
    let log = arrived.clone();
    let watcher = tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            if let NodeEvent::MessageReceived { id, .. } = event {
                log.lock().unwrap().insert(id, Instant::now());
            }
        }
    });
    let started = Instant::now();
    // 12 photos of 16 KiB that do not compress: about 8 s of link time.
    let mut bulk = Vec::new();
    for n in 0..12u8 {
        let mut photo = vec![0u8; 16 * 1024];
        StdRng::seed_from_u64(u64::from(n)).fill_bytes(&mut photo);
        bulk.push(a.send(net.peer_id(1), photo, opts(Priority::Bulk)).await?);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut chat = Vec::new();
    let mut typing = Vec::new();
    for n in 0..5 {
        typing.push(
            a.send(
                net.peer_id(1),
                b"typing".to_vec(),
                opts(Priority::Ephemeral),
            )
            .await?,
        );
        chat.push(
            a.send(net.peer_id(1), chat_text(n), opts(Priority::Interactive))
                .await?,
        );
    }
    for id in chat.iter().chain(&bulk) {
        wait_state(&a, *id, DeliveryState::Delivered, Duration::from_secs(120)).await?;
    }
    // Ephemeral signals end delivered or dropped, never stuck.
    for id in &typing {
        let h = a.clone();
        let id = *id;
        wait_until(Duration::from_secs(60), "typing signal settled", || {
            let h = h.clone();
            async move {
                peercomm_sim::message(&h, id).await.is_some_and(|m| {
                    matches!(m.state, DeliveryState::Delivered | DeliveryState::Expired)
                })
            }
        })
        .await?;
    }
    watcher.abort();
    let arrived = arrived.lock().unwrap().clone();
    let at = |id: &MessageId| {
        arrived
            .get(id)
            .map(|t| t.saturating_duration_since(started).as_secs_f64())
    };
    let mut chat_at: Vec<f64> = chat.iter().filter_map(at).collect();
    chat_at.sort_by(f64::total_cmp);
    let last_bulk = bulk.iter().filter_map(at).fold(0.0, f64::max);
    println!(
        "chat arrivals {chat_at:?}, last bulk at {last_bulk:.1}s, shed {}",
        a.stats().ephemeral_shed
    );
    ensure!(chat_at.len() == 5 && last_bulk > 0.0);
    // Without priorities the chat would queue behind every photo.
    ensure!(
        chat_at[2] < last_bulk * 0.6,
        "median chat at {:.1}s, last photo at {last_bulk:.1}s",
        chat_at[2]
    );
    net.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_an_upload_budget_keeps_to_it_and_delivers_everything() -> Result<()> {
    const BUDGET: u64 = 16 * 1024;
    let mut net = start(2, SimTransport::Tcp).await?;
    reconfigure(&mut net, 0, |c| c.bandwidth.budget_bytes_per_sec = BUDGET).await?;
    let a = net.handle(0).clone();
    let before = a.stats().wire_bytes_out;
    let started = Instant::now();
    // 10 incompressible files of 16 KiB (10 s of budget) and chat between.
    let mut ids = Vec::new();
    for n in 0..10u8 {
        let mut file = vec![0u8; 16 * 1024];
        StdRng::seed_from_u64(u64::from(n)).fill_bytes(&mut file);
        ids.push(a.send(net.peer_id(1), file, opts(Priority::Bulk)).await?);
        ids.push(
            a.send(
                net.peer_id(1),
                chat_text(n.into()),
                opts(Priority::Interactive),
            )
            .await?,
        );
    }
    for id in &ids {
        wait_state(&a, *id, DeliveryState::Delivered, Duration::from_secs(90)).await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let sent = a.stats().wire_bytes_out - before;
    // One second of burst, the rest at the rate; the chat (never held),
    // identify, pings and framing add a little on top (a second's worth
    // of slack for them).
    let allowed = BUDGET as f64 * (elapsed + 2.0);
    println!("sent {sent} bytes in {elapsed:.1} s, allowed {allowed:.0}");
    ensure!(
        (sent as f64) <= allowed,
        "sent {sent} bytes in {elapsed:.1} s: over a budget of {BUDGET} B/s"
    );
    ensure!(
        sent as f64 >= 10.0 * 16.0 * 1024.0,
        "only {sent} bytes sent for 160 KiB of files"
    );
    let inbox = net.handle(1).inbox(Default::default()).await?;
    ensure!(inbox.len() == 20, "{} messages arrived", inbox.len());
    let report = a.bandwidth().await?;
    ensure!(report.config.budget_bytes_per_sec == BUDGET);
    net.shutdown().await;
    Ok(())
}
