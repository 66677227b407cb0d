//! The API's happy paths against a real two-node network.

#![allow(clippy::unwrap_used)]

mod common;

use anyhow::{ensure, Context, Result};
use common::{poll, two_nodes, SseStream};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Sends `body` from `api` to `to`; returns the message id.
async fn send(api: &common::Api, to: &str, body: &str) -> Result<String> {
    let answer = api
        .post_json(
            "/v1/messages",
            &json!({"to": to, "body": body, "ttl": "1d", "priority": "interactive"}),
            StatusCode::ACCEPTED,
        )
        .await?;
    ensure!(answer["state"] == "queued", "{answer}");
    let id = answer["id"].as_str().context("no id")?.to_owned();
    ensure!(
        id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit()),
        "{id}"
    );
    Ok(id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_peers_send_deliver_and_list() -> Result<()> {
    let (net, a, b) = two_nodes().await?;
    let peer_a = net.peer_id(0).to_base58();
    let peer_b = net.peer_id(1).to_base58();

    let health = a.client.get(format!("{}/v1/health", a.base)).send().await?;
    assert_eq!(
        common::expect_json(health, StatusCode::OK).await?,
        json!({"status": "ok"})
    );

    let status = a.get_json("/v1/status", StatusCode::OK).await?;
    assert_eq!(status["peer_id"], peer_a.as_str());
    assert!(
        !status["listen_addrs"].as_array().unwrap().is_empty(),
        "{status}"
    );
    for key in ["connected_peers", "uptime_secs", "incoming", "known_peers"] {
        assert!(status[key].is_u64(), "{key} in {status}");
    }
    assert!(status["outgoing"]["queued"].is_u64(), "{status}");
    for key in [
        "received",
        "duplicates",
        "rejected_malformed",
        "rejected_too_large",
        "rejected_bad_signature",
        "rejected_wrong_recipient",
        "rejected_expired",
        "rejected_unsupported_version",
        "rejected_undecryptable",
        "inbound_stream_failures",
        "attempts",
        "attempt_failures",
        "delivered",
        "bad_receipts",
        "records_accepted",
        "records_rejected",
        "wire_bytes_in",
        "wire_bytes_out",
    ] {
        assert!(status["stats"][key].is_u64(), "stats.{key} in {status}");
    }

    // Node 0 is connected to node 1 (full mesh).
    let peers = poll("node 1 in node 0's peers", || async {
        let peers = a.get_json("/v1/peers", StatusCode::OK).await?;
        let found = peers["peers"]
            .as_array()
            .context("peers")?
            .iter()
            .any(|p| p["peer_id"] == peer_b.as_str());
        Ok(found.then_some(peers))
    })
    .await?;
    let entry = &peers["peers"][0];
    assert!(
        entry["addresses"].is_array() && entry["has_record"].is_boolean(),
        "{peers}"
    );

    // Dialling an address is accepted.
    let addr = net.addr(1).to_string();
    let dialled = a
        .post_json("/v1/peers", &json!({"addr": addr}), StatusCode::ACCEPTED)
        .await?;
    assert_eq!(dialled["addr"], addr.as_str());

    // Send from node 0 to node 1, wait for `delivered`.
    let id = send(&a, &peer_b, "hello from the API").await?;
    let delivered = poll("the message delivered", || async {
        let m = a
            .get_json(&format!("/v1/messages/{id}"), StatusCode::OK)
            .await?;
        Ok((m["state"] == "delivered").then_some(m))
    })
    .await?;
    assert_eq!(delivered["direction"], "out");
    assert_eq!(delivered["peer"], peer_b.as_str());
    assert_eq!(delivered["body"], "hello from the API");
    for key in [
        "attempts",
        "created_ms",
        "expires_ms",
        "next_attempt_ms",
        "delivered_ms",
    ] {
        assert!(delivered[key].is_u64(), "{key} in {delivered}");
    }
    assert!(delivered.get("last_attempt_ms").is_some() && delivered.get("last_error").is_some());
    // No route asked for: `auto`; `hops` is always present (null until known).
    assert_eq!(delivered["route"], "auto");
    assert!(
        delivered["hops"].is_null() || delivered["hops"].is_u64(),
        "{delivered}"
    );

    // Node 1 lists it as received.
    let inbox = b
        .get_json("/v1/messages?direction=in", StatusCode::OK)
        .await?;
    let messages = inbox["messages"].as_array().unwrap();
    let got = messages
        .iter()
        .find(|m| m["id"] == id.as_str())
        .context("not in inbox")?;
    assert_eq!(got["direction"], "in");
    assert_eq!(got["state"], "received");
    assert_eq!(got["peer"], peer_a.as_str());
    assert_eq!(got["body"], "hello from the API");
    assert_eq!(inbox["next_after"], messages.last().unwrap()["seq"]);
    // ... and by id, and filtered by peer; the next page is empty.
    let by_id = b
        .get_json(&format!("/v1/messages/{id}"), StatusCode::OK)
        .await?;
    assert_eq!(by_id["direction"], "in");
    let from_a = b
        .get_json(
            &format!("/v1/messages?peer={peer_a}&limit=1"),
            StatusCode::OK,
        )
        .await?;
    assert_eq!(from_a["messages"][0]["id"], id.as_str());
    let after = from_a["next_after"].as_i64().unwrap();
    let next = b
        .get_json(&format!("/v1/messages?after={after}"), StatusCode::OK)
        .await?;
    assert_eq!(next, json!({"messages": [], "next_after": null}));

    // Node 0's outbox lists it.
    let outbox = a
        .get_json("/v1/messages?direction=out", StatusCode::OK)
        .await?;
    assert!(outbox["messages"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["id"] == id.as_str() && m["direction"] == "out"));
    assert!(outbox["next_after"].is_i64());

    // Metrics.
    let metrics = a.req(Method::GET, "/metrics").send().await?;
    assert_eq!(metrics.status(), StatusCode::OK);
    assert_eq!(
        metrics.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let text = metrics.text().await?;
    assert!(text.contains("libp2p_"), "no libp2p metrics:\n{text}");
    let text_b = b.req(Method::GET, "/metrics").send().await?.text().await?;
    assert!(
        text_b.contains("peercomm_messages_received_total 1"),
        "{text_b}"
    );
    assert!(text_b.trim_end().ends_with("# EOF"));

    net.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn route_is_stored_and_shown() -> Result<()> {
    let (net, a, _b) = two_nodes().await?;
    let peer_b = net.peer_id(1).to_base58();
    let mut sent = Vec::new();
    for route in [
        json!("direct"),
        json!("multihop"),
        json!("onion"),
        json!("auto"),
        Value::Null,
    ] {
        let answer = a
            .post_json(
                "/v1/messages",
                &json!({"to": peer_b, "body": format!("via {route}"), "route": route}),
                StatusCode::ACCEPTED,
            )
            .await?;
        let id = answer["id"].as_str().context("no id")?.to_owned();
        // `null` means the default.
        let expected = route.as_str().unwrap_or("auto").to_owned();
        sent.push((id, expected));
    }
    for (id, route) in &sent {
        let m = a
            .get_json(&format!("/v1/messages/{id}"), StatusCode::OK)
            .await?;
        ensure!(m["route"] == route.as_str(), "{m}");
        ensure!(m["hops"].is_null() || m["hops"].is_u64(), "{m}");
    }
    // The outbox list shows the same.
    let outbox = a
        .get_json("/v1/messages?direction=out", StatusCode::OK)
        .await?;
    for (id, route) in &sent {
        let m = outbox["messages"]
            .as_array()
            .context("messages")?
            .iter()
            .find(|m| m["id"] == id.as_str())
            .context("not in the outbox list")?;
        ensure!(m["route"] == route.as_str(), "{m}");
        ensure!(m.get("hops").is_some(), "{m}");
    }
    net.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_stream_and_resume() -> Result<()> {
    let (net, a, b) = two_nodes().await?;
    let peer_b = net.peer_id(1).to_base58();

    let mut events = SseStream::open(&b, None).await?;
    let first = send(&a, &peer_b, "first").await?;
    let seen = events
        .until(|e| e.event.as_deref() == Some("message_received") && e.data.contains(&first))
        .await?;
    let received = seen.last().unwrap();
    let data: Value = serde_json::from_str(&received.data)?;
    assert_eq!(
        data,
        json!({"id": first, "from": net.peer_id(0).to_base58()})
    );
    let first_event_id: u64 = received.id.as_deref().context("no id")?.parse()?;
    let ids: Vec<u64> = seen
        .iter()
        .map(|e| e.id.as_deref().unwrap().parse().unwrap())
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids not increasing: {ids:?}"
    );

    // Sender side: state events for the first message.
    let mut sender_events = SseStream::open(&a, None).await?;
    let second = send(&a, &peer_b, "second").await?;
    sender_events
        .until(|e| {
            e.event.as_deref() == Some("message_state")
                && e.data.contains(&second)
                && e.data.contains("\"delivered\"")
        })
        .await?;
    let later = events
        .until(|e| e.event.as_deref() == Some("message_received") && e.data.contains(&second))
        .await?;
    let second_event_id: u64 = later.last().unwrap().id.as_deref().unwrap().parse()?;
    drop(events);

    // Resume after the first: replays later events only, the second included.
    let mut resumed = SseStream::open(&b, Some(&first_event_id.to_string())).await?;
    let replayed = resumed
        .until(|e| e.event.as_deref() == Some("message_received") && e.data.contains(&second))
        .await?;
    for e in &replayed {
        let id: u64 = e.id.as_deref().unwrap().parse()?;
        assert!(
            id > first_event_id,
            "replayed {e:?} at or before {first_event_id}"
        );
        assert!(
            !e.data.contains(&first),
            "replayed the first message: {e:?}"
        );
    }
    assert_eq!(
        replayed.last().unwrap().id.as_deref(),
        Some(second_event_id.to_string().as_str())
    );

    // Resume after the second: nothing is replayed; a new event comes live.
    let mut resumed = SseStream::open(&b, Some(&second_event_id.to_string())).await?;
    let third = send(&a, &peer_b, "third").await?;
    let live = resumed
        .until(|e| e.event.as_deref() == Some("message_received") && e.data.contains(&third))
        .await?;
    for e in &live {
        let id: u64 = e.id.as_deref().unwrap().parse()?;
        assert!(id > second_event_id, "{e:?}");
    }

    net.shutdown().await;
    Ok(())
}
