//! The OpenAPI document: complete, served as `openapi()` builds it, and
//! valid per `openapi-spec-validator`.

#![allow(clippy::unwrap_used)]

mod common;

use anyhow::{ensure, Context, Result};
use common::two_nodes;
use reqwest::StatusCode;
use serde_json::Value;

/// Every route: path, method, and the statuses its documentation must list.
const ROUTES: &[(&str, &str, &[&str])] = &[
    ("/v1/health", "get", &["200"]),
    ("/v1/status", "get", &["200", "401", "503"]),
    ("/v1/peers", "get", &["200", "401", "503"]),
    (
        "/v1/peers",
        "post",
        &["202", "400", "401", "413", "415", "422", "503"],
    ),
    (
        "/v1/messages",
        "post",
        &["202", "400", "401", "413", "415", "422", "500", "503"],
    ),
    ("/v1/messages", "get", &["200", "400", "401", "500", "503"]),
    (
        "/v1/messages/{id}",
        "get",
        &["200", "400", "401", "404", "500", "503"],
    ),
    ("/v1/groups", "get", &["200", "401", "500", "503"]),
    (
        "/v1/groups",
        "post",
        &["201", "400", "401", "413", "415", "500", "503"],
    ),
    (
        "/v1/groups/{id}",
        "get",
        &["200", "400", "401", "404", "500", "503"],
    ),
    (
        "/v1/groups/{id}",
        "patch",
        &[
            "202", "400", "401", "403", "404", "409", "413", "415", "500", "503",
        ],
    ),
    (
        "/v1/groups/{id}/members",
        "get",
        &["200", "400", "401", "404", "500", "503"],
    ),
    (
        "/v1/groups/{id}/members",
        "post",
        &[
            "202", "400", "401", "403", "404", "409", "413", "415", "422", "500", "503",
        ],
    ),
    (
        "/v1/groups/{id}/members/{peer}",
        "delete",
        &["202", "400", "401", "403", "404", "409", "500", "503"],
    ),
    (
        "/v1/groups/{id}/admins/{peer}",
        "put",
        &["202", "400", "401", "403", "404", "409", "500", "503"],
    ),
    (
        "/v1/groups/{id}/admins/{peer}",
        "delete",
        &["202", "400", "401", "403", "404", "409", "500", "503"],
    ),
    (
        "/v1/groups/{id}/join",
        "post",
        &["200", "400", "401", "404", "409", "500", "503"],
    ),
    (
        "/v1/groups/{id}/leave",
        "post",
        &["202", "400", "401", "404", "409", "500", "503"],
    ),
    (
        "/v1/groups/{id}/messages",
        "post",
        &[
            "202", "400", "401", "404", "409", "413", "415", "500", "503",
        ],
    ),
    (
        "/v1/groups/{id}/messages",
        "get",
        &["200", "400", "401", "404", "500", "503"],
    ),
    ("/v1/events", "get", &["200", "400", "401"]),
    ("/metrics", "get", &["200", "401"]),
    (
        "/v1/dht/peers/{id}",
        "get",
        &["200", "400", "401", "404", "422", "503"],
    ),
    ("/v1/dht/stats", "get", &["200", "401", "500", "503"]),
    ("/v1/mailbox/stats", "get", &["200", "401", "500", "503"]),
    ("/v1/bandwidth", "get", &["200", "401", "503"]),
    ("/v1/openapi.json", "get", &["200", "401"]),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn document_is_complete_and_valid() -> Result<()> {
    let (net, a, _b) = two_nodes().await?;
    let served = a.get_json("/v1/openapi.json", StatusCode::OK).await?;
    let built = serde_json::to_value(peercomm_api::openapi())?;
    ensure!(
        served == built,
        "the served document differs from openapi()"
    );

    let paths = served["paths"].as_object().context("no paths")?;
    let mut documented = 0;
    for (path, item) in paths {
        documented += item.as_object().unwrap().len();
        ensure!(
            ROUTES.iter().any(|(p, _, _)| p == path),
            "documented path {path} is not a route this test knows"
        );
    }
    ensure!(
        documented == ROUTES.len(),
        "{documented} operations documented"
    );
    for (path, method, statuses) in ROUTES {
        let op = &served["paths"][path][method];
        ensure!(op.is_object(), "{method} {path} is not documented");
        let responses = op["responses"].as_object().context("no responses")?;
        for status in *statuses {
            ensure!(
                responses.contains_key(*status),
                "{method} {path} does not document {status}: {:?}",
                responses.keys().collect::<Vec<_>>()
            );
        }
        let open = op["security"] == serde_json::json!([{}]);
        ensure!(
            open == (*path == "/v1/health"),
            "{method} {path} security: {}",
            op["security"]
        );
    }
    assert_eq!(served["security"], serde_json::json!([{"bearer": []}]));
    assert_eq!(
        served["components"]["securitySchemes"]["bearer"]["scheme"],
        Value::from("bearer")
    );
    let params = served["paths"]["/v1/messages"]["get"]["parameters"]
        .as_array()
        .context("no list parameters")?;
    for name in ["direction", "peer", "after", "limit"] {
        ensure!(
            params.iter().any(|p| p["name"] == name),
            "parameter {name} missing"
        );
    }
    ensure!(served["paths"]["/v1/messages"]["post"]["requestBody"].is_object());
    let schemas = &served["components"]["schemas"];
    ensure!(
        schemas["SendRequest"]["properties"]["route"].is_object(),
        "SendRequest has no route: {}",
        schemas["SendRequest"]
    );
    for field in ["route", "hops"] {
        ensure!(
            schemas["OutgoingView"]["properties"][field].is_object(),
            "OutgoingView has no {field}: {}",
            schemas["OutgoingView"]
        );
    }
    ensure!(
        schemas["RoutePreference"]["enum"]
            == serde_json::json!(["auto", "direct", "multihop", "onion"]),
        "RoutePreference: {}",
        schemas["RoutePreference"]
    );
    ensure!(served["paths"]["/v1/peers"]["post"]["requestBody"].is_object());
    let history = served["paths"]["/v1/groups/{id}/messages"]["get"]["parameters"]
        .as_array()
        .context("no history parameters")?;
    for name in ["id", "after", "limit"] {
        ensure!(
            history.iter().any(|p| p["name"] == name),
            "history parameter {name} missing"
        );
    }
    for (path, method) in [
        ("/v1/groups", "post"),
        ("/v1/groups/{id}", "patch"),
        ("/v1/groups/{id}/members", "post"),
        ("/v1/groups/{id}/messages", "post"),
    ] {
        ensure!(
            served["paths"][path][method]["requestBody"].is_object(),
            "{method} {path} has no request body"
        );
    }
    ensure!(
        schemas["GroupStateView"]["enum"]
            == serde_json::json!(["invited", "active", "left", "removed"]),
        "GroupStateView: {}",
        schemas["GroupStateView"]
    );
    for event in [
        "GroupMessageEvent",
        "GroupChangedEvent",
        "GroupInvitedEvent",
    ] {
        ensure!(schemas[event].is_object(), "{event} is not documented");
    }

    // Validate with openapi-spec-validator.
    let dir = std::env::temp_dir().join(format!("peercomm-api-openapi-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("openapi.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&served)?)?;
    let available = std::process::Command::new("python3")
        .args(["-c", "import openapi_spec_validator"])
        .status()
        .is_ok_and(|s| s.success());
    ensure!(
        available,
        "python3 with openapi_spec_validator is needed to validate the document: \
         pip install openapi-spec-validator"
    );
    let out = std::process::Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(&file)
        .output()?;
    let _ = std::fs::remove_dir_all(&dir);
    ensure!(
        out.status.success(),
        "openapi-spec-validator rejected the document:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    net.shutdown().await;
    Ok(())
}
