//! The DHT routes: find a peer's verified record, DHT figures.

#![allow(clippy::unwrap_used)]

mod common;

use anyhow::{ensure, Result};
use common::{expect_error, poll, two_nodes};
use reqwest::{Method, StatusCode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_a_peer_and_read_dht_stats() -> Result<()> {
    let (net, a, _b) = two_nodes().await?;
    let bob = net.peer_id(1).to_base58();
    let record = poll("bob's record in the DHT", || async {
        let r = a
            .req(Method::GET, &format!("/v1/dht/peers/{bob}"))
            .send()
            .await?;
        if r.status() == StatusCode::OK {
            Ok(Some(r.json::<serde_json::Value>().await?))
        } else {
            Ok(None)
        }
    })
    .await?;
    ensure!(record["peer_id"] == bob.as_str(), "{record}");
    ensure!(
        record["addrs"].as_array().is_some_and(|a| !a.is_empty()),
        "{record}"
    );
    ensure!(
        record["box_key"].as_str().is_some_and(|k| k.len() == 64),
        "{record}"
    );

    // Nothing was deposited here: an empty mailbox, every figure present.
    let mailbox = a.get_json("/v1/mailbox/stats", StatusCode::OK).await?;
    for key in ["items", "bytes", "recipients", "senders", "tombstones"] {
        ensure!(mailbox[key].as_u64() == Some(0), "{key}: {mailbox}");
    }

    let stats = a.get_json("/v1/dht/stats", StatusCode::OK).await?;
    ensure!(stats["routing_table_peers"].as_u64() >= Some(1), "{stats}");
    ensure!(stats["lookups_succeeded"].as_u64() >= Some(1), "{stats}");

    let r = a
        .req(Method::GET, "/v1/dht/peers/not-a-peer")
        .send()
        .await?;
    expect_error(r, StatusCode::BAD_REQUEST, "invalid_peer_id").await?;
    let me = net.peer_id(0).to_base58();
    let r = a
        .req(Method::GET, &format!("/v1/dht/peers/{me}"))
        .send()
        .await?;
    expect_error(r, StatusCode::UNPROCESSABLE_ENTITY, "unprocessable").await?;
    // A peer nobody has published.
    let stranger = peercomm_node::PeerId::random().to_base58();
    let r = a
        .req(Method::GET, &format!("/v1/dht/peers/{stranger}"))
        .send()
        .await?;
    expect_error(r, StatusCode::NOT_FOUND, "not_found").await?;
    net.shutdown().await;
    Ok(())
}
