//! Connections nobody uses close after `network.idle_connection_timeout`:
//! a node keeps no standing connection to every peer it ever talked to.

use std::time::Duration;

use peercomm_sim::{test_config, SimNet, SimOptions, SimTransport, Topology};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unused_connection_closes_after_the_idle_timeout() -> anyhow::Result<()> {
    let mut options = SimOptions::new(2, Topology::Line);
    options.transport = SimTransport::Memory;
    let mut config = test_config();
    config.network.idle_connection_timeout = Duration::from_secs(2);
    options.config = config;
    let net = SimNet::start(options).await?;
    assert_eq!(
        net.handle(0).peers().await?.len(),
        1,
        "the two nodes connect"
    );
    let mut open = usize::MAX;
    for _ in 0..100 {
        open = net.handle(0).peers().await?.len();
        if open == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(open, 0, "the idle connection is still open after 10 s");
    net.shutdown().await;
    Ok(())
}
