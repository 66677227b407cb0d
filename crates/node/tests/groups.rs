//! MLS groups on real nodes over loopback: membership through the owner,
//! multicast on gossipsub, catch-up from the group's mailboxes.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use peercomm_node::{GroupError, GroupId, GroupState, NodeHandle};
use peercomm_sim::groups::{group_fanout, GroupOptions};
use peercomm_sim::{wait_until, SimNet, SimOptions, SimTransport, Topology};
use tokio::sync::RwLock;

/// The 50- and 200-member tests run alone (write), the small ones side by
/// side (read): on a 2-core machine a 200-node network beside another test
/// starves both of CPU, and their timeouts and upload window measure the
/// machine rather than the protocol.
static MACHINE: RwLock<()> = RwLock::const_new(());

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
    start_with(nodes, transport, |_| {}).await
}

async fn start_with(
    nodes: usize,
    transport: SimTransport,
    configure: impl FnOnce(&mut SimOptions),
) -> Result<SimNet> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut options = SimOptions::new(nodes, Topology::Isolated);
    options.bootstrap_via = Some(0);
    options.transport = transport;
    configure(&mut options);
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
    let _machine = MACHINE.read().await;
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

/// `len` characters of letters and digits that do not compress below
/// about 6 bits each: a stand-in for a photo's bytes in a UTF-8 body.
fn photo(len: usize) -> String {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
            alphabet[(x >> 33) as usize % alphabet.len()] as char
        })
        .collect()
}

/// Member 3 posts a 6,000-character photo and member 4 a line of text;
/// every member reads each exactly once. Returns, per member 1..=5, what
/// its stats counted meanwhile: (announced, pulled, pulls failed).
async fn a_photo_and_a_line(gossip_tuning: bool) -> Result<Vec<(u64, u64, u64)>> {
    let net = start_with(6, SimTransport::Tcp, |o| {
        o.config.bandwidth.gossip_tuning = gossip_tuning;
    })
    .await?;
    let group = form(&net, 1, &[2, 3, 4, 5]).await?;
    let members = [1, 2, 3, 4, 5];
    // Commits of a growing group can pass the announcement threshold too:
    // count from here, once their announcements are out of gossip's
    // window (5 heartbeats of 300 ms).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let counts = |net: &SimNet| {
        members.map(|i| {
            let s = net.handle(i).stats();
            (
                s.group_posts_announced,
                s.group_posts_pulled,
                s.group_pulls_failed,
            )
        })
    };
    let before = counts(&net);
    let photo = photo(6000);
    net.handle(3)
        .group_send(group, photo.clone().into_bytes())
        .await?;
    net.handle(4)
        .group_send(group, b"nice one".to_vec())
        .await?;
    wait_body(&net, &[1, 2, 4, 5], group, &photo).await?;
    wait_body(&net, &[1, 2, 3, 5], group, "nice one").await?;
    let since = |net: &SimNet| {
        counts(net)
            .iter()
            .zip(before)
            .map(|(now, then)| (now.0 - then.0, now.1 - then.1, now.2 - then.2))
            .collect::<Vec<_>>()
    };
    if gossip_tuning {
        // Each member other than the author fetches the photo when the
        // announcement first reaches it (from its mesh, or by gossip).
        wait_until(
            Duration::from_secs(30),
            "every member but the author pulled the photo",
            || {
                let pulled = since(&net).iter().filter(|s| s.1 > 0).count();
                async move { pulled >= 4 }
            },
        )
        .await?;
    }
    for i in members {
        let b = bodies(net.handle(i), group).await?;
        for body in [photo.as_str(), "nice one"] {
            let n = b.iter().filter(|x| *x == body).count();
            ensure!(n == 1, "node {i} holds {body:.12}… {n} times");
        }
    }
    let out = since(&net);
    net.shutdown().await;
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_large_post_is_announced_and_each_member_pulls_it_once() -> Result<()> {
    let _machine = MACHINE.read().await;
    let stats = a_photo_and_a_line(true).await?;
    // Members 1..=5; member 3 wrote the photo, member 4 the short line
    // (pushed whole: too small to announce).
    ensure!(
        stats == [(0, 1, 0), (0, 1, 0), (1, 0, 0), (0, 1, 0), (0, 1, 0)],
        "(announced, pulled, failed) per member: {stats:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_gossip_tuning_every_post_is_pushed_whole() -> Result<()> {
    let _machine = MACHINE.read().await;
    let stats = a_photo_and_a_line(false).await?;
    ensure!(
        stats.iter().all(|s| *s == (0, 0, 0)),
        "(announced, pulled, failed) per member: {stats:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_members_on_fifty_nodes_each_get_every_message_exactly_once() -> Result<()> {
    let _machine = MACHINE.write().await;
    let mut opts = GroupOptions::new(50, 3, seed());
    opts.invite_batch = 7;
    let r = group_fanout(&opts).await?;
    println!("{r:#?}");
    ensure!(r.members == 50);
    ensure!(
        r.delivered == r.expected,
        "{} of {}",
        r.delivered,
        r.expected
    );
    ensure!(r.duplicates == 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_members_over_memory_upload_far_less_than_naive_fan_out() -> Result<()> {
    let _machine = MACHINE.write().await;
    let mut opts = GroupOptions::new(200, 1, seed());
    opts.transport = SimTransport::Memory;
    opts.invite_batch = 199;
    let r = group_fanout(&opts).await?;
    println!("{r:#?}");
    ensure!(
        r.delivered == r.expected,
        "{} of {}",
        r.delivered,
        r.expected
    );
    ensure!(r.duplicates == 0);
    // Gossip sends a post to the mesh (D = 6) plus R = 4 mailboxes, not to
    // 199 members. The upload counts every byte the sender put on the
    // post's protocols (signatures, gossip control, deposits) while naive
    // fan-out counts bare posts, so the bound is loose: under half, where
    // one copy per member would be 1.0 and more.
    ensure!(r.upload_ratio < 0.5, "upload ratio {}", r.upload_ratio);
    // The run itself fails if the sender's post never leaves it (it waits
    // for the first copy on the wire before closing the measurement).
    ensure!(
        r.upload_copies >= 1.0,
        "{} copies uploaded",
        r.upload_copies
    );
    Ok(())
}

fn seed() -> u64 {
    std::env::var("PEERCOMM_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_removed_and_departed_read_nothing_later_and_the_group_survives_its_owner_restarting(
) -> Result<()> {
    let _machine = MACHINE.read().await;
    let mut net = start(8, SimTransport::Tcp).await?;
    let group = peercomm_sim::groups::form(&net, 1, &[2, 3, 4, 5, 6, 7], 3)
        .await
        .map_err(anyhow::Error::from)?;
    let owner = net.handle(1).clone();
    // An admin (not the owner) removes node 3: the owner commits it.
    owner.group_set_admin(group, net.peer_id(2), true).await?;
    // Forming takes one commit per batch of 3 invites, and one more for any
    // invitee whose key packages were not in the DHT yet: the admin grant's
    // epoch is the owner's now, not a fixed 3.
    let admin_epoch = owner.group(group).await?.epoch;
    wait_epoch(&net, &[2, 3, 4, 5, 6, 7], group, admin_epoch).await?;
    let change = net.handle(2).group_remove(group, net.peer_id(3)).await?;
    ensure!(
        matches!(change, peercomm_node::GroupChange::Requested { .. }),
        "{change:?}"
    );
    // Node 4 leaves by itself (a self-remove proposal to the owner), once
    // it has the removal's epoch: its proposal is of the owner's current
    // epoch, which only the owner has seen (a commit naming it by
    // reference would leave every other member stuck).
    wait_until(
        Duration::from_secs(60),
        "node 3's removal at node 4",
        || {
            let h4 = net.handle(4).clone();
            async move { h4.group(group).await.is_ok_and(|g| g.members == 6) }
        },
    )
    .await?;
    net.handle(4).group_leave(group).await?;
    wait_until(Duration::from_secs(60), "two commits at the owner", || {
        let owner = owner.clone();
        async move { owner.group(group).await.is_ok_and(|g| g.members == 5) }
    })
    .await?;
    let epoch = owner.group(group).await?.epoch;
    wait_epoch(&net, &[1, 2, 5, 6, 7], group, epoch).await?;
    // The removed node learns it; both are out of the member list.
    let h3 = net.handle(3).clone();
    wait_until(Duration::from_secs(60), "node 3 removed", || {
        let h3 = h3.clone();
        async move {
            standing(&h3, group)
                .await
                .is_some_and(|s| s.0 == GroupState::Removed)
        }
    })
    .await?;
    let members: Vec<_> = owner
        .group_members(group)
        .await?
        .into_iter()
        .map(|m| m.peer)
        .collect();
    ensure!(!members.contains(&net.peer_id(3)) && !members.contains(&net.peer_id(4)));
    // A message after the removals reaches the rest, not them.
    net.handle(5)
        .group_send(group, b"after removals".to_vec())
        .await?;
    wait_body(&net, &[1, 2, 6, 7], group, "after removals").await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for gone in [3, 4] {
        let b = bodies(net.handle(gone), group).await?;
        ensure!(
            !b.iter().any(|x| x == "after removals"),
            "node {gone} read it"
        );
        ensure!(net
            .handle(gone)
            .group_send(group, b"x".to_vec())
            .await
            .is_err());
    }
    // The owner restarts: the group (MLS state in SQLite) is still there,
    // and it still commits and reads.
    net.stop(1).await?;
    net.restart(1).await?;
    let owner = net.handle(1).clone();
    let g = owner.group(group).await?;
    ensure!(
        g.epoch == epoch && g.members == 5 && g.state == GroupState::Active,
        "{g:?}"
    );
    owner
        .group_rename(group, Some("renamed".into()), None)
        .await?;
    wait_epoch(&net, &[1, 2, 5, 6, 7], group, epoch + 1).await?;
    ensure!(net.handle(7).group(group).await?.name == "renamed");
    net.handle(6)
        .group_send(group, b"after restart".to_vec())
        .await?;
    wait_body(&net, &[1, 2, 5, 7], group, "after restart").await?;
    net.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_offline_during_messages_and_changes_catch_up_in_order_to_the_current_epoch(
) -> Result<()> {
    let _machine = MACHINE.read().await;
    let mut net = start(16, SimTransport::Tcp).await?;
    let members: Vec<usize> = (2..16).collect();
    let group = peercomm_sim::groups::form(&net, 1, &members, 7)
        .await
        .map_err(anyhow::Error::from)?;
    let away: Vec<usize> = (6..16).collect();
    for &i in &away {
        net.stop(i).await?;
    }
    let online = [1usize, 2, 3, 4, 5];
    let mut sent = Vec::new();
    for k in 0..20 {
        if k == 7 {
            // A membership change while they are away: node 5 is removed.
            net.handle(1).group_remove(group, net.peer_id(5)).await?;
        }
        if k == 14 {
            net.handle(1)
                .group_rename(group, Some("while away".into()), None)
                .await?;
        }
        let from = online[k % 4];
        let body = format!("message {k}");
        net.handle(from)
            .group_send(group, body.clone().into_bytes())
            .await?;
        sent.push(body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let epoch = net.handle(1).group(group).await?.epoch;
    // They stay away a while longer (the senders' deposits settle: some
    // first went to mailboxes that are among the away nodes and failed over).
    tokio::time::sleep(Duration::from_secs(8)).await;
    for &i in &away {
        net.restart(i).await?;
    }
    wait_epoch(&net, &away, group, epoch).await?;
    for &i in &away {
        wait_body(&net, &[i], group, "message 19").await?;
        let got = bodies(net.handle(i), group).await?;
        ensure!(got == sent, "node {i}: {got:?}");
        ensure!(net.handle(i).group(group).await?.name == "while away");
    }
    net.shutdown().await;
    Ok(())
}
