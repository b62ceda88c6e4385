//! Property test: whatever the input, the server answers 4xx JSON or success, never 5xx.
//!
//! Generated cases hit every endpoint that takes input: bodies that are random bytes,
//! random JSON, or item-shaped JSON with random field values; random query strings,
//! path segments and headers.

use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestRunner};
use serde_json::{json, Value};

use crate::helpers::spawn_app;

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::String),
        Just(json!("'; DROP TABLE items; --")),
        Just(json!("\u{0}")),
        "x{490,520}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn item_like() -> impl Strategy<Value = Value> {
    let field = prop_oneof![
        Just("type"),
        Just("title"),
        Just("content"),
        Just("tags"),
        Just("metadata"),
        Just("source"),
        Just("archived"),
        Just("favorite"),
        Just("version"),
        Just("id"),
    ];
    let kind = prop_oneof![Just(json!("note")), Just(json!("email")), json_value()];
    (kind, prop::collection::btree_map(field, json_value(), 0..6)).prop_map(|(kind, fields)| {
        let mut body = json!({"type": kind, "title": "t"});
        for (k, v) in fields {
            body[k] = v;
        }
        body
    })
}

#[derive(Debug, Clone)]
enum Case {
    Body {
        method: &'static str,
        path: &'static str,
        body: Vec<u8>,
        content_type: &'static str,
    },
    Query {
        path: &'static str,
        query: String,
    },
    Path {
        segment: String,
        method: &'static str,
    },
    Header {
        name: &'static str,
        value: String,
    },
}

fn case() -> impl Strategy<Value = Case> {
    let body_route = prop_oneof![
        Just(("POST", "/api/items")),
        Just(("POST", "/api/items/upsert")),
        Just(("POST", "/api/items/batch")),
        Just(("PATCH", "/api/items/ITEM")),
        Just(("POST", "/api/auth/register")),
        Just(("POST", "/api/auth/login")),
    ];
    let body = prop_oneof![
        item_like().prop_map(|v| v.to_string().into_bytes()),
        item_like().prop_map(|v| json!({"items": [v]}).to_string().into_bytes()),
        json_value().prop_map(|v| v.to_string().into_bytes()),
        prop::collection::vec(any::<u8>(), 0..200),
    ];
    let content_type = prop_oneof![
        Just("application/json"),
        Just("text/plain"),
        Just("application/json; charset=utf-8")
    ];
    let query_route = prop_oneof![Just("/api/items"), Just("/api/search")];
    let param = prop_oneof![
        Just("limit"),
        Just("cursor"),
        Just("type"),
        Just("tag"),
        Just("tags"),
        Just("archived"),
        Just("favorite"),
        Just("q"),
    ];
    let query = prop::collection::vec((param, ".{0,30}"), 0..5);
    prop_oneof![
        (body_route, body, content_type).prop_map(|((method, path), body, content_type)| {
            Case::Body {
                method,
                path,
                body,
                content_type,
            }
        }),
        (query_route, query).prop_map(|(path, pairs)| {
            let query = pairs
                .iter()
                .map(|(k, v)| format!("{k}={}", crate::items::urlencode(v)))
                .collect::<Vec<_>>()
                .join("&");
            Case::Query { path, query }
        }),
        (
            ".{0,60}",
            prop_oneof![Just("GET"), Just("PATCH"), Just("DELETE"), Just("PUT")]
        )
            .prop_map(|(segment, method)| Case::Path { segment, method }),
        (
            prop_oneof![
                Just("If-Match"),
                Just("Idempotency-Key"),
                Just("Authorization")
            ],
            "[ -~]{0,300}"
        )
            .prop_map(|(name, value)| Case::Header { name, value }),
    ]
}

/// The run's seed: `PROPTEST_RNG_SEED` replays a run, otherwise a fresh one. Printed
/// either way, and named in the failure.
fn seed() -> u64 {
    match std::env::var("PROPTEST_RNG_SEED") {
        Ok(seed) => seed.parse().expect("PROPTEST_RNG_SEED is a u64"),
        Err(_) => uuid::Uuid::new_v4().as_u64_pair().0,
    }
}

#[test]
fn generated_inputs_never_produce_a_5xx() {
    let seed = seed();
    eprintln!("fuzz: seed {seed}; replay with PROPTEST_RNG_SEED={seed}");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (app, token, item_id) = runtime.block_on(async {
        let app = spawn_app().await;
        let token = app.new_user().await;
        let item = app.note(&token, "fuzz target").await;
        (app, token, item["id"].as_str().unwrap().to_owned())
    });
    let mut runner = TestRunner::new(Config {
        cases: 400,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(seed),
        ..Config::default()
    });
    let outcome = runner.run(&case(), |case| {
        let request = match &case {
            Case::Body {
                method,
                path,
                body,
                content_type,
            } => app
                .client
                .request(
                    method.parse().unwrap(),
                    app.url(&path.replace("ITEM", &item_id)),
                )
                .header("Content-Type", *content_type)
                .body(body.clone()),
            Case::Query { path, query } => app.client.get(app.url(&format!("{path}?{query}"))),
            Case::Path { segment, method } => {
                let segment = crate::items::urlencode(segment);
                app.client.request(
                    method.parse().unwrap(),
                    app.url(&format!("/api/items/{segment}")),
                )
            }
            Case::Header { name, value } => {
                let request = app
                    .client
                    .patch(app.url(&format!("/api/items/{item_id}")))
                    .json(&json!({"favorite": true}));
                match *name {
                    "Authorization" => request.header(*name, value.as_str()),
                    _ => request.bearer_auth(&token).header(*name, value.as_str()),
                }
            }
        };
        let request = match &case {
            Case::Header { .. } => request,
            _ => request.bearer_auth(&token),
        };
        let (status, body) = runtime.block_on(async {
            let response = tokio::time::timeout(Duration::from_secs(20), request.send())
                .await
                .expect("answered in time")
                .expect("answered");
            let status = response.status().as_u16();
            (status, response.text().await.unwrap_or_default())
        });
        prop_assert!(status < 500, "{case:?} -> {status} {body}");
        if status >= 400 {
            let parsed: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            prop_assert!(
                parsed["error"].is_string() && parsed["details"].is_array(),
                "{case:?} -> {status} {body}"
            );
        }
        Ok(())
    });
    runtime.block_on(async move { drop(app) });
    if let Err(e) = outcome {
        panic!("{e}\nreplay with PROPTEST_RNG_SEED={seed}");
    }
}
