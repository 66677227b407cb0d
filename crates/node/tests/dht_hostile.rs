//! Hostile DHT records: a raw libp2p Kademlia peer tries to store a forged,
//! a stale, an expired and an oversized peer record on a node. Each is
//! refused and counted, and none is served to others.

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::kad::{self, store::MemoryStore, Quorum, Record};
use libp2p::swarm::SwarmEvent;
use libp2p::{noise, tcp, yamux, PeerId, Swarm};
use peercomm_node::dht::{peer_key, KAD_PROTOCOL};
use peercomm_node::{Clock, PeerRecord, SystemClock};
use peercomm_sim::{SimNet, SimOptions, Topology};

fn raw_kad(keypair: Keypair) -> Result<Swarm<kad::Behaviour<MemoryStore>>> {
    Ok(libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_behaviour(|key| {
            let id = key.public().to_peer_id();
            let mut config = kad::Config::new(KAD_PROTOCOL);
            config.set_query_timeout(Duration::from_secs(10));
            let mut kad = kad::Behaviour::with_config(id, MemoryStore::new(id), config);
            kad.set_mode(Some(kad::Mode::Client));
            kad
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build())
}

fn signed(keypair: &Keypair, seq: u64, expires_ms: u64) -> Result<Vec<u8>> {
    Ok(PeerRecord {
        peer_id: keypair.public().to_peer_id(),
        addrs: vec!["/ip4/127.0.0.1/tcp/9".parse()?],
        box_key: [3; 32],
        protocol_version: 1,
        seq,
        expires_ms,
        roles: vec![],
        onion: None,
        dictionaries: vec![],
    }
    .sign(keypair)?)
}

/// Runs one query to its end.
async fn run(
    swarm: &mut Swarm<kad::Behaviour<MemoryStore>>,
    query: kad::QueryId,
) -> Result<Vec<Record>> {
    let mut found = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let event = tokio::time::timeout_at(deadline, swarm.select_next_some())
            .await
            .context("query did not finish")?;
        if let SwarmEvent::Behaviour(kad::Event::OutboundQueryProgressed {
            id, result, step, ..
        }) = event
        {
            if id != query {
                continue;
            }
            if let kad::QueryResult::GetRecord(Ok(kad::GetRecordOk::FoundRecord(r))) = result {
                found.push(r.record);
            }
            if step.last {
                return Ok(found);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_stale_expired_and_oversized_records_are_refused_and_never_served() -> Result<()> {
    let net = SimNet::start(SimOptions::new(1, Topology::Isolated)).await?;
    let node = net.handle(0).clone();
    let node_id: PeerId = node.peer_id();
    let now = SystemClock.now_ms();

    let mallory = Keypair::generate_ed25519();
    let victim = Keypair::generate_ed25519();
    let mut swarm = raw_kad(mallory.clone())?;
    let addr = net.addr(0);
    swarm.behaviour_mut().add_address(&node_id, addr.clone());
    swarm.dial(addr)?;

    let put = |swarm: &mut Swarm<kad::Behaviour<MemoryStore>>, key: PeerId, value: Vec<u8>| {
        let record = Record::new(peer_key(&key), value);
        swarm
            .behaviour_mut()
            .put_record_to(record, std::iter::once(node_id), Quorum::One)
    };

    // A valid record of mallory's own, sequence 10: stored.
    let q = put(
        &mut swarm,
        mallory.public().to_peer_id(),
        signed(&mallory, 10, now + 3_600_000)?,
    );
    run(&mut swarm, q).await?;
    // Stale: sequence 5 after 10.
    let q = put(
        &mut swarm,
        mallory.public().to_peer_id(),
        signed(&mallory, 5, now + 3_600_000)?,
    );
    run(&mut swarm, q).await?;
    // Forged: mallory's signature under the victim's key.
    let q = put(
        &mut swarm,
        victim.public().to_peer_id(),
        signed(&mallory, 99, now + 3_600_000)?,
    );
    run(&mut swarm, q).await?;
    // Expired: the victim's own signature, but past its expiry.
    let q = put(
        &mut swarm,
        victim.public().to_peer_id(),
        signed(&victim, 7, now - 1_000)?,
    );
    run(&mut swarm, q).await?;
    // Oversized.
    let q = put(
        &mut swarm,
        victim.public().to_peer_id(),
        vec![0u8; 9 * 1024],
    );
    run(&mut swarm, q).await?;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let stats = loop {
        let s = node.stats();
        if s.dht_rejected_stale >= 1
            && s.dht_rejected_forged >= 1
            && s.dht_rejected_expired >= 1
            && s.dht_rejected_too_large >= 1
        {
            break s;
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("not every bad record was counted: {s:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("{stats:?}");

    // What the node serves: mallory's record at sequence 10, nothing for the victim.
    let q = swarm
        .behaviour_mut()
        .get_record(peer_key(&mallory.public().to_peer_id()));
    let served = run(&mut swarm, q).await?;
    ensure!(!served.is_empty(), "the valid record is not served");
    for record in &served {
        let r = peercomm_wire::verify_record(&record.value, now)?;
        ensure!(r.seq == 10, "served sequence {}", r.seq);
    }
    let q = swarm
        .behaviour_mut()
        .get_record(peer_key(&victim.public().to_peer_id()));
    let served = run(&mut swarm, q).await?;
    ensure!(
        served.is_empty(),
        "a refused record was served: {} found",
        served.len()
    );
    net.shutdown().await;
    Ok(())
}
