//! The API's error contract: every bad request answers the documented
//! status and `error.code` in the JSON error shape, and the API keeps
//! serving afterwards.

#![allow(clippy::unwrap_used)]

mod common;

use anyhow::Result;
use common::{expect_error, two_nodes, MAX_BODY_BYTES};
use reqwest::{Method, StatusCode};
use serde_json::json;

/// Every authenticated route, with a valid request shape.
const ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/status"),
    ("GET", "/v1/peers"),
    ("POST", "/v1/peers"),
    ("POST", "/v1/messages"),
    ("GET", "/v1/messages"),
    ("GET", "/v1/messages/00112233445566778899aabbccddeeff"),
    ("GET", "/v1/events"),
    ("GET", "/metrics"),
    ("GET", "/v1/openapi.json"),
    ("GET", "/v1/dht/stats"),
    ("GET", "/v1/mailbox/stats"),
    ("GET", "/v1/bandwidth"),
    (
        "GET",
        "/v1/dht/peers/12D3KooWLtmqXKzwzG8RYQS7Nk8y4UvYdxDtczwhHsE2PNYU4Pad",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn errors_follow_the_contract() -> Result<()> {
    let (net, a, _b) = two_nodes().await?;
    let self_id = net.peer_id(0).to_base58();
    let other = net.peer_id(1).to_base58();

    // 401 without a token, with a wrong one, with another scheme.
    for (method, path) in ROUTES {
        let method: Method = method.parse()?;
        let body = json!({"to": other, "body": "x", "addr": "/ip4/127.0.0.1/tcp/1"});
        let missing = a.req_anon(method.clone(), path).json(&body).send().await?;
        assert_eq!(missing.headers()["www-authenticate"], "Bearer");
        let message = expect_error(missing, StatusCode::UNAUTHORIZED, "unauthorized").await?;
        assert!(
            message.contains("Authorization: Bearer") && message.contains("api.token"),
            "{message}"
        );
        let wrong = a
            .req_anon(method.clone(), path)
            .bearer_auth("test-token-0123456780")
            .json(&body)
            .send()
            .await?;
        expect_error(wrong, StatusCode::UNAUTHORIZED, "unauthorized").await?;
        let basic = a
            .req_anon(method.clone(), path)
            .header("authorization", format!("Basic {}", common::TOKEN))
            .send()
            .await?;
        expect_error(basic, StatusCode::UNAUTHORIZED, "unauthorized").await?;
    }

    let post = |path: &str| a.req(Method::POST, path);
    // Malformed JSON.
    let r = post("/v1/messages")
        .header("content-type", "application/json")
        .body("{\"to\": ")
        .send()
        .await?;
    expect_error(r, StatusCode::BAD_REQUEST, "invalid_json").await?;
    // Wrong types, unknown fields, missing fields, bad enum values.
    let r = post("/v1/messages")
        .json(&json!({"to": 5, "body": "x"}))
        .send()
        .await?;
    let message = expect_error(r, StatusCode::BAD_REQUEST, "invalid_field").await?;
    assert!(message.contains("to"), "{message}");
    let r = post("/v1/messages")
        .json(&json!({"to": other, "bdy": "x"}))
        .send()
        .await?;
    expect_error(r, StatusCode::BAD_REQUEST, "invalid_field").await?;
    let r = post("/v1/messages")
        .json(&json!({"to": other}))
        .send()
        .await?;
    let message = expect_error(r, StatusCode::BAD_REQUEST, "invalid_field").await?;
    assert!(message.contains("body"), "{message}");
    let r = post("/v1/messages")
        .json(&json!({"to": other, "body": "x", "priority": "urgent"}))
        .send()
        .await?;
    expect_error(r, StatusCode::BAD_REQUEST, "invalid_field").await?;
    let r = post("/v1/messages")
        .json(&json!({"to": other, "body": "x", "ttl": "soon"}))
        .send()
        .await?;
    let message = expect_error(r, StatusCode::BAD_REQUEST, "invalid_field").await?;
    assert!(message.contains("ttl"), "{message}");
    // Bad route: a wrong name or type; the message lists the accepted ones.
    for route in [
        json!("Onion"),
        json!("Direct"),
        json!(""),
        json!(2),
        json!(["auto"]),
    ] {
        let r = post("/v1/messages")
            .json(&json!({"to": other, "body": "x", "route": route}))
            .send()
            .await?;
        let message = expect_error(r, StatusCode::BAD_REQUEST, "invalid_route").await?;
        for name in ["\"auto\"", "\"direct\"", "\"multihop\"", "\"onion\""] {
            assert!(message.contains(name), "{message}");
        }
    }
    // Nothing was queued by the refused sends.
    let out = a
        .get_json("/v1/messages?direction=out", StatusCode::OK)
        .await?;
    assert_eq!(out["messages"], json!([]), "{out}");
    // Bad peer id.
    let r = post("/v1/messages")
        .json(&json!({"to": "not-a-peer", "body": "x"}))
        .send()
        .await?;
    let message = expect_error(r, StatusCode::BAD_REQUEST, "invalid_peer_id").await?;
    assert!(message.contains("`to`"), "{message}");
    // Missing and wrong content type.
    let r = post("/v1/messages").body("{}").send().await?;
    expect_error(
        r,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await?;
    let r = post("/v1/messages")
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await?;
    expect_error(
        r,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await?;
    // A request body over the API's limit.
    let big = "x".repeat(MAX_BODY_BYTES + 1);
    let r = post("/v1/messages")
        .json(&json!({"to": other, "body": big}))
        .send()
        .await?;
    expect_error(r, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await?;
    // Sending rules the node enforces: 422.
    let r = post("/v1/messages")
        .json(&json!({"to": self_id, "body": "x"}))
        .send()
        .await?;
    expect_error(r, StatusCode::UNPROCESSABLE_ENTITY, "unprocessable").await?;
    let too_long = "x".repeat(64 * 1024 + 1);
    let r = post("/v1/messages")
        .json(&json!({"to": other, "body": too_long}))
        .send()
        .await?;
    expect_error(r, StatusCode::UNPROCESSABLE_ENTITY, "unprocessable").await?;
    let r = post("/v1/messages")
        .json(&json!({"to": other, "body": "x", "ttl": "0s"}))
        .send()
        .await?;
    expect_error(r, StatusCode::UNPROCESSABLE_ENTITY, "unprocessable").await?;
    let r = post("/v1/messages")
        .json(&json!({"to": other, "body": "x", "ttl": "1000d"}))
        .send()
        .await?;
    expect_error(r, StatusCode::UNPROCESSABLE_ENTITY, "unprocessable").await?;
    // Bad multiaddr.
    let r = post("/v1/peers")
        .json(&json!({"addr": "not/a/multiaddr"}))
        .send()
        .await?;
    let message = expect_error(r, StatusCode::BAD_REQUEST, "invalid_field").await?;
    assert!(message.contains("addr"), "{message}");

    let get = |path: &str| a.req(Method::GET, path);
    // Paging limits and query parameters.
    for limit in ["0", "501"] {
        let r = get(&format!("/v1/messages?limit={limit}")).send().await?;
        let message = expect_error(r, StatusCode::BAD_REQUEST, "invalid_query").await?;
        assert!(message.contains("between 1 and 500"), "{message}");
    }
    let r = get("/v1/messages?limit=500&direction=out").send().await?;
    common::expect_json(r, StatusCode::OK).await?;
    let r = get("/v1/messages?limit=abc").send().await?;
    expect_error(r, StatusCode::BAD_REQUEST, "invalid_query").await?;
    let r = get("/v1/messages?direction=sideways").send().await?;
    expect_error(r, StatusCode::BAD_REQUEST, "invalid_query").await?;
    let r = get("/v1/messages?peer=nope").send().await?;
    expect_error(r, StatusCode::BAD_REQUEST, "invalid_peer_id").await?;
    // Message ids.
    for bad in [
        "xyz",
        "zz112233445566778899aabbccddeeff",
        "00112233445566778899aabbccddeeff00",
    ] {
        let r = get(&format!("/v1/messages/{bad}")).send().await?;
        expect_error(r, StatusCode::BAD_REQUEST, "invalid_id").await?;
    }
    let r = get("/v1/messages/00112233445566778899aabbccddeeff")
        .send()
        .await?;
    expect_error(r, StatusCode::NOT_FOUND, "not_found").await?;
    // Bad Last-Event-ID.
    let r = get("/v1/events")
        .header("last-event-id", "yesterday")
        .send()
        .await?;
    expect_error(r, StatusCode::BAD_REQUEST, "invalid_field").await?;
    // Unknown routes and methods.
    for path in ["/v1/nope", "/", "/v2/status", "/v1/messages/a/b"] {
        let r = get(path).send().await?;
        expect_error(r, StatusCode::NOT_FOUND, "not_found").await?;
    }
    let r = a.req(Method::DELETE, "/v1/status").send().await?;
    expect_error(r, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed").await?;

    // Still serving.
    let status = a.get_json("/v1/status", StatusCode::OK).await?;
    assert_eq!(status["peer_id"], self_id.as_str());
    net.shutdown().await;
    Ok(())
}
