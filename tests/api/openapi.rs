//! The OpenAPI document describes exactly the routes the server has.

use std::collections::BTreeSet;

use reqwest::Method;
use serde_json::json;

use crate::helpers::{metric_value, spawn_app};

const ROUTES: &[(&str, &str)] = &[
    ("post", "/api/auth/register"),
    ("post", "/api/auth/login"),
    ("post", "/api/auth/logout"),
    ("get", "/api/auth/me"),
    ("get", "/api/items"),
    ("post", "/api/items"),
    ("post", "/api/items/upsert"),
    ("post", "/api/items/batch"),
    ("get", "/api/items/{id}"),
    ("patch", "/api/items/{id}"),
    ("delete", "/api/items/{id}"),
    ("get", "/api/search"),
    ("get", "/api/stats"),
    ("get", "/api/openapi.json"),
];

#[tokio::test]
async fn the_openapi_document_matches_the_routes() {
    let app = spawn_app().await;
    app.wait_ready().await;
    let (status, doc) = app.get_json("/api/openapi.json").await;
    assert_eq!(status, 200);
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3."),
        "{}",
        doc["openapi"]
    );
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .filter(|m| ["get", "post", "put", "patch", "delete"].contains(&m.as_str()))
                .map(move |m| (m.clone(), path.clone()))
        })
        .collect();
    let expected: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, expected);
    for schema in [
        "Item",
        "NewItem",
        "ItemPatch",
        "ErrorBody",
        "Credentials",
        "TokenResponse",
    ] {
        assert!(
            doc["components"]["schemas"][schema].is_object(),
            "{schema} missing"
        );
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());

    // Every documented operation is routed: the metrics label is the route template, and
    // "unmatched" would mean no route took the request.
    let token = app.new_user().await;
    for (method, path) in ROUTES {
        let concrete = path.replace("{id}", &uuid::Uuid::new_v4().to_string());
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let body = json!({});
        let answer = app
            .call(method.clone(), &concrete, Some(&token), Some(&body))
            .await;
        assert!(
            answer.status < 500 && answer.status != 405,
            "{method} {path}: {}",
            answer.status
        );
        let metrics = app.metrics().await;
        let served = metric_value(
            &metrics,
            "lb_requests_total",
            &[("path", path), ("method", method.as_str())],
        );
        assert!(served >= 1.0, "{method} {path} was not routed");
    }
}

/// Issue 25: a write whose answer is lost may have been applied; the document says so, and
/// recommends the key that makes the retry safe on every POST that writes.
#[tokio::test]
async fn the_document_recommends_an_idempotency_key_on_every_write() {
    let app = spawn_app().await;
    app.wait_ready().await;
    let (_, doc) = app.get_json("/api/openapi.json").await;
    let keyed: BTreeSet<String> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .filter_map(|(path, item)| {
            let params = item["post"]["parameters"].as_array()?;
            let key = params.iter().find(|p| p["name"] == "Idempotency-Key")?;
            let description = key["description"].as_str().unwrap();
            assert!(
                description.starts_with("Recommended on every write"),
                "{path}: {description}"
            );
            Some(path.clone())
        })
        .collect();
    let writes: BTreeSet<String> = [
        "/api/auth/register",
        "/api/items",
        "/api/items/upsert",
        "/api/items/batch",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(keyed, writes);
    for (path, method) in [
        ("/api/items", "post"),
        ("/api/items/{id}", "patch"),
        ("/api/items/{id}", "delete"),
    ] {
        let unavailable = doc["paths"][path][method]["responses"]["503"]["description"]
            .as_str()
            .unwrap();
        assert!(
            unavailable.contains("may have been applied"),
            "{method} {path}: {unavailable}"
        );
    }
    assert!(doc["info"]["description"]
        .as_str()
        .unwrap()
        .contains("Idempotency-Key"));
}
