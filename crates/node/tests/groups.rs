//! MLS groups on real nodes over loopback: membership through the owner,
//! multicast on gossipsub, catch-up from the group's mailboxes.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use peercomm_node::{GroupError, GroupId, GroupState, NodeHandle};
use peercomm_sim::{wait_until, SimNet, SimOptions, SimTransport, Topology};

async fn wait_joined(net: &SimNet, indices: &[usize]) -> Result<()> {
    for &i in indices {
        let handle = net.handle(i).clone();
        wait_until(Duration::from_secs(90), &format!("node {i} joined"), || {
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

async fn start(nodes: usize, transport: SimTransport) -> Result<SimNet> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut options = SimOptions::new(nodes, Topology::Isolated);
    options.bootstrap_via = Some(0);
    options.transport = transport;
    println!("seed {}", options.seed);
    let net = SimNet::start(options).await?;
    wait_joined(&net, &(0..nodes).collect::<Vec<_>>()).await?;
    Ok(net)
}

/// The state and epoch node `i` has for `group`.
async fn standing(h: &NodeHandle, group: GroupId) -> Option<(GroupState, u64)> {
    h.group(group).await.ok().map(|g| (g.state, g.epoch))
}

/// Waits until every node in `who` is an active member at `epoch`.
async fn wait_epoch(net: &SimNet, who: &[usize], group: GroupId, epoch: u64) -> Result<()> {
    for &i in who {
        let h = net.handle(i).clone();
        wait_until(
            Duration::from_secs(120),
            &format!("node {i} in group epoch {epoch}"),
            || {
                let h = h.clone();
                async move { standing(&h, group).await == Some((GroupState::Active, epoch)) }
            },
        )
        .await?;
    }
    Ok(())
}

/// `owner` creates a group and invites `members` one by one; returns the
/// group once every member is in the last epoch.
async fn form(net: &SimNet, owner: usize, members: &[usize]) -> Result<GroupId> {
    let g = net
        .handle(owner)
        .group_create("test group", "for tests")
        .await?;
    for &m in members {
        let change = invite(net.handle(owner), g.id, net.peer_id(m)).await?;
        ensure!(
            matches!(change, peercomm_node::GroupChange::Committed { .. }),
            "{change:?}"
        );
    }
    let epoch = net.handle(owner).group(g.id).await?.epoch;
    ensure!(epoch == members.len() as u64, "epoch {epoch}");
    let mut all = vec![owner];
    all.extend_from_slice(members);
    if let Err(e) = wait_epoch(net, &all, g.id, epoch).await {
        for &i in &all {
            let h = net.handle(i);
            println!(
                "node {i}: {:?} stats {:?}",
                standing(h, g.id).await,
                (
                    h.stats().group_posts_received,
                    h.stats().group_pages_fetched,
                    h.stats().received
                )
            );
        }
        return Err(e);
    }
    Ok(g.id)
}

/// Invites, retrying while the peer's key packages are not in the DHT yet.
async fn invite(
    h: &NodeHandle,
    group: GroupId,
    peer: peercomm_node::PeerId,
) -> Result<peercomm_node::GroupChange> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match h.group_invite(group, peer).await {
            Err(GroupError::NoKeyPackage(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            other => return Ok(other?),
        }
    }
}

/// The bodies of `group`'s history at node `h`, in order.
async fn bodies(h: &NodeHandle, group: GroupId) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut after = 0;
    for _ in 0..100 {
        let page = h.group_history(group, after, Some(500)).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        out.extend(
            page.iter()
                .map(|m| String::from_utf8_lossy(&m.body).into_owned()),
        );
    }
    Ok(out)
}

/// Waits until every node in `who` holds `body` in `group`'s history.
async fn wait_body(net: &SimNet, who: &[usize], group: GroupId, body: &str) -> Result<()> {
    for &i in who {
        let h = net.handle(i).clone();
        let body = body.to_string();
        wait_until(
            Duration::from_secs(120),
            &format!("node {i} got {body:?}"),
            || {
                let (h, body) = (h.clone(), body.clone());
                async move { bodies(&h, group).await.is_ok_and(|b| b.contains(&body)) }
            },
        )
        .await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_small_group_forms_and_every_member_reads_every_message() -> Result<()> {
    let net = start(6, SimTransport::Tcp).await?;
    let group = form(&net, 1, &[2, 3, 4, 5]).await?;
    net.handle(3)
        .group_send(group, b"hello from 3".to_vec())
        .await?;
    wait_body(&net, &[1, 2, 4, 5], group, "hello from 3").await?;
    // Exactly once everywhere, and the sender's own history has it too.
    for i in 1..6 {
        let b = bodies(net.handle(i), group).await?;
        ensure!(
            b.iter().filter(|x| *x == "hello from 3").count() == 1,
            "node {i}: {b:?}"
        );
        let members = net.handle(i).group_members(group).await?;
        ensure!(members.len() == 5, "node {i}: {members:?}");
        ensure!(members[0].owner && members[0].peer == net.peer_id(1));
    }
    net.shutdown().await;
    Ok(())
}

#[allow(dead_code)]
fn _unused(_: HashMap<(), ()>) -> Result<()> {
    None::<()>.context("unused")
}
