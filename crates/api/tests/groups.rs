//! The group routes (`/v1/groups…`): the error contract (token, ids,
//! bodies, paging), and the happy path once the group engine runs.

#![allow(clippy::unwrap_used)]

mod common;

use anyhow::{ensure, Context, Result};
use common::{expect_error, expect_json, two_nodes};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// A well-formed group id no node knows.
const UNKNOWN: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f0";

/// A well-formed peer id.
const PEER: &str = "12D3KooWLtmqXKzwzG8RYQS7Nk8y4UvYdxDtczwhHsE2PNYU4Pad";

/// Every group route, with a well-formed path and body.
fn routes() -> Vec<(Method, String, Option<Value>)> {
    let g = format!("/v1/groups/{UNKNOWN}");
    vec![
        (Method::GET, "/v1/groups".into(), None),
        (
            Method::POST,
            "/v1/groups".into(),
            Some(json!({"name": "g"})),
        ),
        (Method::GET, g.clone(), None),
        (Method::PATCH, g.clone(), Some(json!({"name": "h"}))),
        (Method::GET, format!("{g}/members"), None),
        (
            Method::POST,
            format!("{g}/members"),
            Some(json!({"peer": PEER})),
        ),
        (Method::DELETE, format!("{g}/members/{PEER}"), None),
        (Method::PUT, format!("{g}/admins/{PEER}"), None),
        (Method::DELETE, format!("{g}/admins/{PEER}"), None),
        (Method::POST, format!("{g}/join"), None),
        (Method::POST, format!("{g}/leave"), None),
        (
            Method::POST,
            format!("{g}/messages"),
            Some(json!({"body": "hi"})),
        ),
        (Method::GET, format!("{g}/messages?after=0&limit=10"), None),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_routes_need_the_token() -> Result<()> {
    let (net, a, _b) = two_nodes().await?;
    for (method, path, body) in routes() {
        let mut anon = a.req_anon(method.clone(), &path);
        let mut wrong = a
            .req_anon(method.clone(), &path)
            .bearer_auth("test-token-0123456780");
        if let Some(body) = &body {
            anon = anon.json(body);
            wrong = wrong.json(body);
        }
        let r = anon.send().await?;
        ensure!(
            r.headers().get("www-authenticate").is_some(),
            "{method} {path}: no WWW-Authenticate"
        );
        expect_error(r, StatusCode::UNAUTHORIZED, "unauthorized")
            .await
            .with_context(|| format!("{method} {path} without a token"))?;
        expect_error(
            wrong.send().await?,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        )
        .await
        .with_context(|| format!("{method} {path} with a wrong token"))?;
    }
    // Nothing was created by the refused requests.
    let list = a.get_json("/v1/groups", StatusCode::OK).await?;
    assert_eq!(list, json!({"groups": []}));
    net.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_routes_follow_the_error_contract() -> Result<()> {
    let (net, a, _b) = two_nodes().await?;
    let g = format!("/v1/groups/{UNKNOWN}");

    // A bad group id in the path: 400 with the parser's explanation, on
    // every route that takes one.
    for bad in [
        "xyz",
        "zz1e2d3c4b5a69788796a5b4c3d2e1f0",
        "0f1e2d3c4b5a6978",
    ] {
        for (method, path, body) in routes() {
            if !path.contains(UNKNOWN) {
                continue;
            }
            let path = path.replace(UNKNOWN, bad);
            let mut request = a.req(method.clone(), &path);
            if let Some(body) = &body {
                request = request.json(body);
            }
            let message = expect_error(
                request.send().await?,
                StatusCode::BAD_REQUEST,
                "invalid_group_id",
            )
            .await
            .with_context(|| format!("{method} {path}"))?;
            ensure!(
                message.contains("a group id is 32 hex digits") && message.contains(bad),
                "{method} {path}: {message}"
            );
        }
    }
    // A bad peer id, in the body or the path.
    let r = a
        .req(Method::POST, &format!("{g}/members"))
        .json(&json!({"peer": "not-a-peer"}))
        .send()
        .await?;
    let message = expect_error(r, StatusCode::BAD_REQUEST, "invalid_peer_id").await?;
    ensure!(message.contains("`peer`"), "{message}");
    for (method, path) in [
        (Method::DELETE, format!("{g}/members/not-a-peer")),
        (Method::PUT, format!("{g}/admins/not-a-peer")),
        (Method::DELETE, format!("{g}/admins/not-a-peer")),
    ] {
        let r = a.req(method.clone(), &path).send().await?;
        expect_error(r, StatusCode::BAD_REQUEST, "invalid_peer_id")
            .await
            .with_context(|| format!("{method} {path}"))?;
    }

    // Malformed JSON, wrong types, unknown and missing fields.
    let post = |path: &str| a.req(Method::POST, path);
    let r = post("/v1/groups")
        .header("content-type", "application/json")
        .body("{\"name\": ")
        .send()
        .await?;
    expect_error(r, StatusCode::BAD_REQUEST, "invalid_json").await?;
    for body in [
        json!({"name": 5}),
        json!({"name": "g", "description": 5}),
        json!({"name": "g", "colour": "red"}),
        json!({"description": "no name"}),
        json!("g"),
    ] {
        let r = post("/v1/groups").json(&body).send().await?;
        expect_error(r, StatusCode::BAD_REQUEST, "invalid_field")
            .await
            .with_context(|| format!("POST /v1/groups {body}"))?;
    }
    let r = post("/v1/groups").body("{}").send().await?;
    expect_error(
        r,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await?;
    for body in [json!({"peer": 5}), json!({}), json!({"peer": PEER, "x": 1})] {
        let r = post(&format!("{g}/members")).json(&body).send().await?;
        expect_error(r, StatusCode::BAD_REQUEST, "invalid_field")
            .await
            .with_context(|| format!("invite {body}"))?;
    }
    for body in [json!({"body": 5}), json!({}), json!({"text": "hi"})] {
        let r = post(&format!("{g}/messages")).json(&body).send().await?;
        expect_error(r, StatusCode::BAD_REQUEST, "invalid_field")
            .await
            .with_context(|| format!("send {body}"))?;
    }

    // Names and bodies the node refuses: blank, too long.
    let long_name = "n".repeat(peercomm_node::groups::MAX_GROUP_NAME_BYTES + 1);
    let long_description = "d".repeat(peercomm_node::groups::MAX_GROUP_DESCRIPTION_BYTES + 1);
    for body in [
        json!({"name": ""}),
        json!({"name": "   "}),
        json!({"name": long_name}),
        json!({"name": "g", "description": long_description}),
    ] {
        let r = post("/v1/groups").json(&body).send().await?;
        let message = expect_error(r, StatusCode::BAD_REQUEST, "invalid_field")
            .await
            .with_context(|| format!("POST /v1/groups {body}"))?;
        ensure!(message.contains("group"), "{message}");
    }
    let patch = |body: Value| a.req(Method::PATCH, &g).json(&body).send();
    let r = patch(json!({})).await?;
    let message = expect_error(r, StatusCode::BAD_REQUEST, "invalid_field").await?;
    ensure!(message.contains("`name`"), "{message}");
    let r = patch(json!({"name": null, "description": null})).await?;
    expect_error(r, StatusCode::BAD_REQUEST, "invalid_field").await?;
    for body in [
        json!({"name": ""}),
        json!({"name": long_name}),
        json!({"description": long_description}),
        json!({"name": 7}),
    ] {
        let r = patch(body.clone()).await?;
        expect_error(r, StatusCode::BAD_REQUEST, "invalid_field")
            .await
            .with_context(|| format!("PATCH {body}"))?;
    }
    let too_long = "x".repeat(peercomm_node::groups::MAX_GROUP_BODY_BYTES + 1);
    for text in ["", too_long.as_str()] {
        let r = post(&format!("{g}/messages"))
            .json(&json!({"body": text}))
            .send()
            .await?;
        expect_error(r, StatusCode::BAD_REQUEST, "invalid_field")
            .await
            .with_context(|| format!("a body of {} bytes", text.len()))?;
    }

    // Unknown groups.
    for path in [g.clone(), format!("{g}/members"), format!("{g}/messages")] {
        let r = a.req(Method::GET, &path).send().await?;
        let message = expect_error(r, StatusCode::NOT_FOUND, "group_not_found")
            .await
            .with_context(|| format!("GET {path}"))?;
        ensure!(message.contains(UNKNOWN), "{message}");
    }

    // Paging parameters.
    for limit in ["0", "501"] {
        let r = a
            .req(Method::GET, &format!("{g}/messages?limit={limit}"))
            .send()
            .await?;
        let message = expect_error(r, StatusCode::BAD_REQUEST, "invalid_query").await?;
        ensure!(message.contains("between 1 and 500"), "{message}");
    }
    for query in ["limit=abc", "after=soon", "limit=-1", "before=3"] {
        let r = a
            .req(Method::GET, &format!("{g}/messages?{query}"))
            .send()
            .await?;
        expect_error(r, StatusCode::BAD_REQUEST, "invalid_query")
            .await
            .with_context(|| query.to_owned())?;
    }
    let r = a
        .req(Method::GET, &format!("{g}/messages?limit=500&after=3"))
        .send()
        .await?;
    expect_error(r, StatusCode::NOT_FOUND, "group_not_found").await?;

    // Methods the routes do not answer.
    for (method, path) in [
        (Method::PUT, "/v1/groups".to_owned()),
        (Method::DELETE, g.clone()),
        (Method::GET, format!("{g}/join")),
        (Method::POST, format!("{g}/admins/{PEER}")),
    ] {
        let r = a.req(method.clone(), &path).send().await?;
        expect_error(r, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
            .await
            .with_context(|| format!("{method} {path}"))?;
    }

    // Still serving, nothing created.
    let list = a.get_json("/v1/groups", StatusCode::OK).await?;
    assert_eq!(list, json!({"groups": []}));
    net.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_list_send_and_read_a_group() -> Result<()> {
    let (net, a, _b) = two_nodes().await?;
    let me = net.peer_id(0).to_base58();

    let r = a
        .req(Method::POST, "/v1/groups")
        .json(&json!({"name": "climbing", "description": "Saturday trips"}))
        .send()
        .await?;
    let location = r
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let group = expect_json(r, StatusCode::CREATED).await?;
    let id = group["id"].as_str().context("no id")?.to_owned();
    ensure!(
        id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit()),
        "{group}"
    );
    assert_eq!(
        location.as_deref(),
        Some(format!("/v1/groups/{id}").as_str())
    );
    assert_eq!(group["name"], "climbing");
    assert_eq!(group["description"], "Saturday trips");
    assert_eq!(group["owner"], me.as_str());
    assert_eq!(group["admins"], json!([me]));
    assert_eq!(group["members"], 1);
    assert_eq!(group["state"], "active");
    assert_eq!(group["invited_by"], Value::Null);

    let list = a.get_json("/v1/groups", StatusCode::OK).await?;
    let groups = list["groups"].as_array().context("no groups")?;
    ensure!(
        groups.len() == 1 && groups[0]["id"] == id.as_str(),
        "{list}"
    );
    let one = a
        .get_json(&format!("/v1/groups/{id}"), StatusCode::OK)
        .await?;
    assert_eq!(one, groups[0]);
    let members = a
        .get_json(&format!("/v1/groups/{id}/members"), StatusCode::OK)
        .await?;
    assert_eq!(
        members,
        json!({"members": [{"peer": me, "admin": true, "owner": true}]})
    );

    let mut sent = Vec::new();
    for text in ["hello, group", "second"] {
        let m = a
            .post_json(
                &format!("/v1/groups/{id}/messages"),
                &json!({"body": text}),
                StatusCode::ACCEPTED,
            )
            .await?;
        ensure!(m["id"].as_str().is_some_and(|i| i.len() == 32), "{m}");
        ensure!(m["seq"].is_i64(), "{m}");
        assert_eq!(m["group"], id.as_str());
        assert_eq!(m["sender"], me.as_str());
        assert_eq!(m["body"], text);
        sent.push(m);
    }
    let page = a
        .get_json(&format!("/v1/groups/{id}/messages"), StatusCode::OK)
        .await?;
    let messages = page["messages"].as_array().context("no messages")?;
    let bodies: Vec<&str> = messages.iter().filter_map(|m| m["body"].as_str()).collect();
    assert_eq!(bodies, ["hello, group", "second"]);
    assert_eq!(page["next_after"], sent[1]["seq"]);
    let rest = a
        .get_json(
            &format!("/v1/groups/{id}/messages?after={}&limit=1", sent[0]["seq"]),
            StatusCode::OK,
        )
        .await?;
    assert_eq!(rest["messages"].as_array().map(Vec::len), Some(1), "{rest}");
    assert_eq!(rest["messages"][0]["body"], "second");
    let empty = a
        .get_json(
            &format!("/v1/groups/{id}/messages?after={}", sent[1]["seq"]),
            StatusCode::OK,
        )
        .await?;
    assert_eq!(empty, json!({"messages": [], "next_after": null}));

    // The owner renames: committed at once, in a new epoch.
    let change = a
        .req(Method::PATCH, &format!("/v1/groups/{id}"))
        .json(&json!({"name": "bouldering"}))
        .send()
        .await?;
    let change = expect_json(change, StatusCode::ACCEPTED).await?;
    assert_eq!(change["status"], "committed", "{change}");
    let epoch = change["epoch"].as_u64().context("no epoch")?;
    let one = a
        .get_json(&format!("/v1/groups/{id}"), StatusCode::OK)
        .await?;
    assert_eq!(one["name"], "bouldering");
    assert_eq!(one["description"], "Saturday trips");
    assert_eq!(one["epoch"], epoch);
    // The owner cannot leave its own group.
    let r = a
        .req(Method::POST, &format!("/v1/groups/{id}/leave"))
        .send()
        .await?;
    expect_error(r, StatusCode::CONFLICT, "owner_cannot_leave").await?;
    net.shutdown().await;
    Ok(())
}
