//! Everything together, on 56 real nodes on loopback TCP: the nodes join
//! through the DHT, then for 20 seconds exchange direct, multi-hop and onion
//! messages and posts in a 52-member MLS group, while six nodes (group
//! members among them) go offline and return, one node sits behind a
//! congested 24 KiB/s link, and the group's owner adds a member half-way.
//! Every message must arrive exactly once (every group post at every
//! member, the away ones after catching up), and every member must apply
//! the group's commits in epoch order, the order the protocol promises.
//! (Direct messages promise no order between them: each is delivered on its
//! own, with retries; so exactly-once is what is checked for them.)
//!
//! `peercomm bench load` runs the same scenario at any size and rate.

use std::time::Duration;

use anyhow::{ensure, Result};
use peercomm_sim::load::{load, LoadKind, LoadOptions};
use peercomm_sim::{SimOptions, Topology};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_capability_at_once_delivers_every_message_exactly_once() -> Result<()> {
    // The seed from PEERCOMM_SIM_SEED, or a random one (printed).
    let seed = SimOptions::new(0, Topology::Isolated).seed;
    let mut options = LoadOptions::new(56, 15.0, Duration::from_secs(20), seed);
    options.mix = LoadKind::ALL.to_vec();
    options.group_size = 52;
    options.members_away = true;
    options.add_member = true;
    options.congested_link = Some(24 * 1024);
    options.drain = Duration::from_secs(120);
    let report = load(&options, &mut |line| eprintln!("{line}")).await?;
    eprintln!("{report:#?}");

    ensure!(
        report.group_members >= 50,
        "a group of {}",
        report.group_members
    );
    ensure!(
        report.group_members_away >= 2,
        "only {} members went away",
        report.group_members_away
    );
    ensure!(report.congested_node.is_some(), "no congested link");
    for kind in &report.kinds {
        ensure!(kind.sent > 0, "no {} messages were sent", kind.kind);
        ensure!(
            kind.refused == 0,
            "{} {} sends were refused",
            kind.refused,
            kind.kind
        );
        ensure!(
            kind.copies == kind.copies_expected && kind.delivered == kind.sent,
            "{}: {} of {} copies arrived ({} of {} messages)",
            kind.kind,
            kind.copies,
            kind.copies_expected,
            kind.delivered,
            kind.sent
        );
        ensure!(
            kind.duplicates == 0,
            "{}: {} duplicates",
            kind.kind,
            kind.duplicates
        );
    }
    ensure!(report.lost == 0 && report.duplicates == 0, "{report:?}");
    ensure!(
        report.skipped == 0,
        "the generator skipped {}",
        report.skipped
    );
    let kind = |name: &str| report.kinds.iter().find(|k| k.kind == name);
    let group = kind("group").expect("group traffic");
    ensure!(
        group.epoch_regressions == 0,
        "a member applied an older epoch after a newer one ({} times)",
        group.epoch_regressions
    );
    ensure!(
        report.member_added == Some(true),
        "the member invited half-way is not in the group: {:?}",
        report.member_added
    );
    let offline = kind("offline").expect("offline traffic");
    ensure!(
        offline.after_return.is_some_and(|a| a.samples > 0),
        "no offline message was seen arriving after its recipient returned"
    );
    Ok(())
}
