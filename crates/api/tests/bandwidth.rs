//! `GET /v1/bandwidth` and the bandwidth counters in `/metrics`, against a
//! real two-node network.

#![allow(clippy::unwrap_used)]

mod common;

use anyhow::{ensure, Context, Result};
use common::{poll, two_nodes};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

fn row<'a>(rows: &'a Value, name: &str) -> Option<&'a Value> {
    rows.as_array()?.iter().find(|r| r["name"] == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bandwidth_counts_bytes_by_peer_protocol_and_class() -> Result<()> {
    let (net, a, _b) = two_nodes().await?;
    let peer_b = net.peer_id(1).to_base58();
    let answer = a
        .post_json(
            "/v1/messages",
            &json!({"to": peer_b, "body": "how much did that cost?", "priority": "interactive"}),
            StatusCode::ACCEPTED,
        )
        .await?;
    let id = answer["id"].as_str().context("no id")?.to_owned();
    poll("the message delivered", || async {
        let m = a
            .get_json(&format!("/v1/messages/{id}"), StatusCode::OK)
            .await?;
        Ok((m["state"] == "delivered").then_some(()))
    })
    .await?;

    let bw = a.get_json("/v1/bandwidth", StatusCode::OK).await?;
    ensure!(bw["config"]["adaptive"] == true, "{bw}");
    let total_out = bw["total_out"].as_u64().context("total_out")?;
    ensure!(total_out > 0, "{bw}");
    // Handshakes included: more went out to node 1 than the message itself.
    let to_b = row(&bw["peers"], &peer_b).context("no row for node 1")?;
    ensure!(to_b["bytes_out"].as_u64() > Some(300), "{bw}");
    ensure!(to_b["bytes_out"].as_u64() <= Some(total_out), "{bw}");
    let msg = bw["protocols"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| {
            r["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("/peercomm/msg"))
        })
        .map(|r| r["bytes_out"].as_u64().unwrap_or(0))
        .sum::<u64>();
    ensure!(msg > 0, "no message protocol bytes: {bw}");
    ensure!(
        row(&bw["protocols"], "overhead").is_some_and(|r| r["bytes_out"].as_u64() > Some(0)),
        "{bw}"
    );
    let classes: Vec<&str> = bw["classes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["name"].as_str())
        .collect();
    ensure!(
        classes == ["control", "interactive", "group", "bulk", "ephemeral"],
        "{classes:?}"
    );
    ensure!(
        row(&bw["classes"], "interactive").is_some_and(|r| r["bytes_out"].as_u64() > Some(0)),
        "{bw}"
    );
    // Every byte is in exactly one class.
    let class_out: u64 = bw["classes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| r["bytes_out"].as_u64().unwrap_or(0))
        .sum();
    ensure!(class_out <= total_out, "{class_out} > {total_out}");

    let metrics = a.req(Method::GET, "/metrics").send().await?.text().await?;
    for family in [
        "peercomm_bandwidth_protocol_bytes_total{protocol=\"overhead\",direction=\"out\"}",
        "peercomm_bandwidth_class_bytes_total{class=\"interactive\",direction=\"out\"}",
        &format!("peercomm_bandwidth_peer_bytes_total{{peer=\"{peer_b}\",direction=\"out\"}}"),
    ] {
        let value = metrics
            .lines()
            .find_map(|l| l.strip_prefix(family))
            .with_context(|| format!("no {family} in /metrics"))?;
        ensure!(value.trim().parse::<u64>()? > 0, "{family} {value}");
    }
    net.shutdown().await;
    Ok(())
}
