//! 1,000 messages to 50 recipients who go offline (gracefully or by
//! crashing) and return at random times, on 56 real nodes on loopback:
//! every message arrives exactly once and comes back `delivered`.
//! (`peercomm bench offline` runs the same scenario and prints its figures.)

use anyhow::{ensure, Result};
use peercomm_sim::offline::{offline_churn, OfflineOptions};
use peercomm_sim::SimOptions;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_messages_to_fifty_recipients_coming_and_going_arrive_exactly_once() -> Result<()>
{
    let seed = SimOptions::new(0, peercomm_sim::Topology::Isolated).seed;
    let options = OfflineOptions::new(50, 1000, seed);
    let report = offline_churn(&options, &mut |line| eprintln!("{line}")).await?;
    eprintln!("{report:#?}");
    ensure!(report.duplicates == 0, "duplicates: {report:?}");
    ensure!(report.received == 1000, "received: {report:?}");
    ensure!(
        report.delivered == 1000,
        "delivered at the senders: {report:?}"
    );
    // The churn really sent messages to absent recipients, and mailboxes
    // carried them.
    ensure!(
        report.sent_while_away > 0 && report.deposited > 0,
        "{report:?}"
    );
    Ok(())
}
