//! (Long: the probes of every body and parameter of the document, kept in one place.)
//!
//! The OpenAPI document against what the service really accepts and answers.
//!
//! - Bodies: every field of a valid body is replaced in turn by probe values (boundary
//!   lengths taken from the document itself, blanks, NUL, wrong types), dropped, or joined by
//!   an unknown field. The document's own schema (checked by a JSON Schema validator) says
//!   whether each variant is valid; the service must accept exactly the valid ones and
//!   refuse the others with a status the document lists for that operation.
//! - Parameters and headers: the same, value by value, against each parameter's schema.
//! - Every status any test of this binary sees an operation answer must be documented for
//!   it: [`undocumented`] runs when each `TestApp` is dropped (see `helpers`).

use std::collections::BTreeSet;
use std::sync::OnceLock;

use cartae_database_api::http::api::openapi::ApiDoc;
use reqwest::Method;
use serde_json::{json, Value};
use utoipa::OpenApi;
use uuid::Uuid;

use crate::helpers::{spawn_app, TestApp};
use crate::support::api_client::{answer, unique_email, Answer, PASSWORD};

/// The document, as `/api/openapi.json` serves it (a test checks they are the same).
pub fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| serde_json::to_value(ApiDoc::openapi()).expect("the document is JSON"))
}

fn operation(method: &str, route: &str) -> Option<&'static Value> {
    document()["paths"]
        .get(route)?
        .get(method.to_ascii_lowercase())
}

/// The statuses documented for an operation.
fn documented(method: &str, route: &str) -> BTreeSet<u16> {
    operation(method, route)
        .and_then(|op| op["responses"].as_object())
        .map(|r| r.keys().filter_map(|k| k.parse().ok()).collect())
        .unwrap_or_default()
}

/// The `lb_requests_total` samples (route, method, status) of documented operations whose
/// status the document does not list for them. Routes are the metric's route templates.
pub fn undocumented(metrics: &str) -> Vec<String> {
    metrics
        .lines()
        .filter_map(|line| line.strip_prefix("lb_requests_total{"))
        .filter_map(|line| line.rsplit_once("} ").map(|(labels, _)| labels))
        .filter_map(|labels| {
            let label = |name: &str| {
                labels
                    .split("\",")
                    .find_map(|l| l.strip_prefix(&format!("{name}=\"")))
                    .map(|v| v.trim_end_matches('"').to_owned())
            };
            let (method, route, status) = (label("method")?, label("path")?, label("status")?);
            operation(&method, &route)?;
            let status: u16 = status.parse().ok()?;
            (!documented(&method, &route).contains(&status))
                .then(|| format!("{method} {route} answered {status}"))
        })
        .collect()
}

/// A validator for `schema`, whose `$ref`s point into the document's components.
fn validator(schema: &Value) -> jsonschema::Validator {
    let mut root = schema.as_object().cloned().unwrap_or_default();
    root.insert("components".into(), document()["components"].clone());
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .with_keyword("x-max-bytes", |_, limit, _| {
            Ok(Box::new(MaxBytes(limit.as_u64().unwrap_or(0) as usize)))
        })
        .should_validate_formats(true)
        .build(&Value::Object(root))
        .unwrap_or_else(|e| panic!("the document's schema does not compile: {e}\n{schema}"))
}

/// `x-max-bytes`, the document's extension for what no JSON Schema keyword says: the most
/// bytes a value may take as compact JSON (`metadata`).
struct MaxBytes(usize);

impl<'i> jsonschema::Keyword<'i> for MaxBytes {
    fn validate(&self, instance: &'i Value) -> Result<(), jsonschema::ValidationError<'i>> {
        if self.is_valid(instance) {
            Ok(())
        } else {
            Err(jsonschema::ValidationError::custom(format!(
                "over {} bytes as compact JSON",
                self.0
            )))
        }
    }

    fn is_valid(&self, instance: &'i Value) -> bool {
        serde_json::to_vec(instance).is_ok_and(|json| json.len() <= self.0)
    }
}

/// Every length limit the document states, with its neighbours: the boundaries to probe.
fn limits(keys: &[&str]) -> BTreeSet<usize> {
    fn walk(value: &Value, keys: &[&str], out: &mut BTreeSet<usize>) {
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    match v.as_u64() {
                        Some(n) if keys.contains(&k.as_str()) => {
                            let n = n as usize;
                            out.extend([n.saturating_sub(1), n, n + 1]);
                        }
                        _ => walk(v, keys, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, keys, out)),
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    walk(document(), keys, &mut out);
    out
}

fn string_probes() -> Vec<Value> {
    let mut probes: Vec<Value> = [
        "",
        " ",
        "\u{a0}\t",
        "\u{85}",
        "\u{feff}",
        "a\u{0}b",
        "ok",
        "two words",
        "Ünïcødé ✓",
        "a@b.c",
    ]
    .into_iter()
    .map(Value::from)
    .collect();
    probes.extend(
        limits(&["maxLength", "minLength"])
            .into_iter()
            .map(|n| Value::from("x".repeat(n))),
    );
    probes
}

fn type_probes() -> Vec<Value> {
    vec![
        json!(null),
        json!(true),
        json!(0),
        json!(-1.5),
        json!([]),
        json!({}),
        json!({"k": "a\u{0}"}),
        json!([{"k": ["\u{0}"]}]),
    ]
}

/// `(what, variant)` for every probe of every node of `base`.
fn variants(base: &Value, null_means_absent: bool) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for probe in [json!({}), json!([]), json!(null), json!("ok")] {
        out.push((format!("body {probe}"), probe));
    }
    let mut nodes = Vec::new();
    nodes_of(base, String::new(), &mut nodes);
    let counts = limits(&["maxItems", "minItems"]);
    for pointer in nodes {
        let node = base.pointer(&pointer).expect("node exists");
        let depth = pointer.matches('/').count();
        let mut probes = type_probes();
        if null_means_absent && depth == 1 {
            // PATCH takes `null` as absent, which the document does not offer (see
            // `ItemPatch`): a stricter document, never a refused valid request.
            probes.retain(|p| !p.is_null());
        }
        probes.extend(string_probes());
        if let Some(first) = node.as_array().and_then(|a| a.first()) {
            probes.extend(counts.iter().map(|&n| Value::Array(vec![first.clone(); n])));
        }
        for probe in probes {
            let mut variant = base.clone();
            *variant.pointer_mut(&pointer).expect("node exists") = probe.clone();
            out.push((format!("{pointer} = {}", brief(&probe)), variant));
        }
        if let Some(map) = node.as_object() {
            for key in map.keys() {
                let mut variant = base.clone();
                let parent = variant.pointer_mut(&pointer).expect("node exists");
                parent.as_object_mut().expect("object").remove(key);
                out.push((format!("{pointer} without {key}"), variant));
            }
            let mut variant = base.clone();
            let parent = variant.pointer_mut(&pointer).expect("node exists");
            parent
                .as_object_mut()
                .expect("object")
                .insert("unknownField".into(), json!(1));
            out.push((format!("{pointer} with unknownField"), variant));
        }
    }
    out
}

/// JSON pointers of every node below the root (arrays: their first element only).
fn nodes_of(value: &Value, at: String, out: &mut Vec<String>) {
    let children: Vec<(String, &Value)> = match value {
        Value::Object(map) => map.iter().map(|(k, v)| (k.clone(), v)).collect(),
        Value::Array(items) => items
            .first()
            .map(|v| ("0".to_owned(), v))
            .into_iter()
            .collect(),
        _ => Vec::new(),
    };
    for (key, child) in children {
        let pointer = format!("{at}/{key}");
        out.push(pointer.clone());
        nodes_of(child, pointer, out);
    }
}

/// A value short enough for a failure message; a long string says its length.
fn brief(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() <= 40 {
        return text;
    }
    let head: String = text.chars().take(30).collect();
    match value.as_str() {
        Some(s) => format!("{head}... (a string of {} characters)", s.chars().count()),
        None => format!("{head}..."),
    }
}

/// Placeholders that [`freshen`] makes unique per request, so that no variant collides
/// with an earlier one (a taken email, an item with the same source).
const BASE_EMAIL: &str = "base@example.com";
const BASE_SOURCE: &str = "source-base";

fn freshen(value: &mut Value) {
    match value {
        Value::String(s) if s == BASE_EMAIL => *s = unique_email(),
        Value::String(s) if s == BASE_SOURCE => *s = Uuid::new_v4().to_string(),
        Value::Array(items) => items.iter_mut().for_each(freshen),
        Value::Object(map) => map.values_mut().for_each(freshen),
        _ => {}
    }
}

/// One operation with a JSON body, as the contract test drives it.
struct BodyOperation<'a> {
    method: Method,
    route: &'a str,
    path: String,
    token: Option<String>,
    base: Value,
    /// What a body valid by the document may get (login: a wrong password is no refusal).
    accepted: &'a [u16],
    /// What a body invalid by the document may get.
    refused: &'a [u16],
    null_means_absent: bool,
}

impl BodyOperation<'_> {
    async fn send(&self, app: &TestApp, body: &Value) -> Answer {
        let request = app
            .client
            .request(self.method.clone(), app.url(&self.path))
            .json(body);
        let request = match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        answer(request).await
    }

    /// Every disagreement between the document and the service for this operation.
    async fn check(&self, app: &TestApp) -> Vec<String> {
        let op = operation(self.method.as_str(), self.route).expect("documented operation");
        let schema = &op["requestBody"]["content"]["application/json"]["schema"];
        let validator = validator(schema);
        let statuses = documented(self.method.as_str(), self.route);
        let mut problems = Vec::new();
        let mut seen = [0usize; 2];
        for (what, mut body) in variants(&self.base, self.null_means_absent) {
            freshen(&mut body);
            let valid = validator.is_valid(&body);
            seen[usize::from(valid)] += 1;
            let got = self.send(app, &body).await;
            let expected = if valid { self.accepted } else { self.refused };
            if !expected.contains(&got.status) || !statuses.contains(&got.status) {
                problems.push(format!(
                    "{} {}: {what}: {} by the document, answered {} {}",
                    self.method,
                    self.route,
                    if valid { "valid" } else { "invalid" },
                    got.status,
                    brief(&got.body)
                ));
            }
        }
        // Both kinds were probed, or the comparison proved nothing.
        assert!(
            seen[0] >= 5 && seen[1] >= 5,
            "{} {}: {seen:?}",
            self.method,
            self.route
        );
        problems
    }
}

#[tokio::test]
async fn bodies_valid_by_the_document_are_accepted_and_the_others_refused_as_documented() {
    let app = spawn_app().await;
    app.wait_ready().await;
    let email = unique_email();
    assert_eq!(app.register(&email, PASSWORD).await.status, 201);
    let item = json!({
        "type": "note",
        "title": "A title",
        "content": "Some content",
        "tags": ["work"],
        "metadata": {"k": "v", "nested": [1, {"deep": "x"}]},
        "source": {"connector": "gmail", "sourceId": BASE_SOURCE, "url": "https://example.com/1"},
        "archived": false,
        "favorite": true,
    });
    let patch_token = app.new_user().await;
    let target = app.note(&patch_token, "to patch").await;
    let operations = [
        BodyOperation {
            method: Method::POST,
            route: "/api/auth/register",
            path: "/api/auth/register".into(),
            token: None,
            base: json!({"email": BASE_EMAIL, "password": PASSWORD}),
            accepted: &[201],
            refused: &[400, 422],
            null_means_absent: false,
        },
        BodyOperation {
            method: Method::POST,
            route: "/api/auth/login",
            path: "/api/auth/login".into(),
            token: None,
            base: json!({"email": email, "password": PASSWORD}),
            // A password or email that breaks one of the schema's rules is refused before
            // hashing as a wrong one (401), and such refusals are throttled per address (429).
            accepted: &[200, 401, 429],
            refused: &[400, 401, 422, 429],
            null_means_absent: false,
        },
        BodyOperation {
            method: Method::POST,
            route: "/api/items",
            path: "/api/items".into(),
            token: Some(app.new_user().await),
            base: item.clone(),
            accepted: &[201],
            refused: &[400, 422],
            null_means_absent: false,
        },
        BodyOperation {
            method: Method::POST,
            route: "/api/items/upsert",
            path: "/api/items/upsert".into(),
            token: Some(app.new_user().await),
            base: item.clone(),
            accepted: &[200, 201],
            refused: &[400, 422],
            null_means_absent: false,
        },
        BodyOperation {
            method: Method::POST,
            route: "/api/items/batch",
            path: "/api/items/batch".into(),
            token: Some(app.new_user().await),
            base: json!({"items": [item.clone()]}),
            accepted: &[200],
            refused: &[400, 422],
            null_means_absent: false,
        },
        BodyOperation {
            method: Method::PATCH,
            route: "/api/items/{id}",
            path: format!("/api/items/{}", target["id"].as_str().unwrap()),
            token: Some(patch_token),
            base: item.clone(),
            accepted: &[200],
            refused: &[400, 422],
            null_means_absent: true,
        },
    ];
    let mut problems = Vec::new();
    for operation in &operations {
        problems.extend(operation.check(&app).await);
        problems.extend(transport_problems(&app, operation).await);
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Bodies refused before their JSON is read: each answer must be documented, with the
/// error body.
async fn transport_problems(app: &TestApp, op: &BodyOperation<'_>) -> Vec<String> {
    let statuses = documented(op.method.as_str(), op.route);
    let request = || {
        let request = app.client.request(op.method.clone(), app.url(&op.path));
        match &op.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    };
    let json = |r: reqwest::RequestBuilder| r.header("content-type", "application/json");
    let cases = [
        ("malformed JSON", 400, json(request()).body("{,}")),
        ("no JSON content type", 415, request().body("{}")),
        (
            "a body over 1 MiB",
            413,
            json(request()).body(format!("\"{}\"", "x".repeat(1024 * 1024))),
        ),
    ];
    let mut problems = Vec::new();
    for (what, expected, request) in cases {
        let got = answer(request).await;
        if got.status != expected
            || !statuses.contains(&got.status)
            || !got.body["error"].is_string()
        {
            problems.push(format!(
                "{} {}: {what}: answered {} {}",
                op.method,
                op.route,
                got.status,
                brief(&got.body)
            ));
        }
    }
    problems
}

/// What a query or header value is for its parameter's schema: the JSON value a client
/// generated from the document would have sent as `raw`.
fn as_json(schema: &Value, raw: &str) -> Value {
    match schema["type"].as_str() {
        Some("integer") => raw.parse::<i64>().map(Value::from).unwrap_or(raw.into()),
        // The parameters' descriptions offer `1` and `0` as well.
        Some("boolean") => match raw {
            "true" | "1" => true.into(),
            "false" | "0" => false.into(),
            _ => raw.into(),
        },
        _ => raw.into(),
    }
}

fn parameter(method: &str, route: &str, name: &str) -> &'static Value {
    operation(method, route)
        .and_then(|op| op["parameters"].as_array())
        .and_then(|ps| ps.iter().find(|p| p["name"] == name))
        .unwrap_or_else(|| panic!("{method} {route} documents no parameter {name}"))
}

/// Whether the document allows `value` for the parameter (`None`: not sent).
fn allows(method: &str, route: &str, name: &str, value: Option<&str>) -> bool {
    let p = parameter(method, route, name);
    match value {
        None => p["required"] != true,
        Some(raw) => validator(&p["schema"]).is_valid(&as_json(&p["schema"], raw)),
    }
}

fn query_probes() -> Vec<String> {
    let mut probes: Vec<String> = string_probes()
        .into_iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .filter(|s| s.chars().count() <= 2049)
        .collect();
    probes.extend(
        [
            "note", "bogus", "true", "false", "yes", "0", "1", "20", "100", "101", "-1", "a,b",
            " a , ,b,",
        ]
        .map(String::from),
    );
    probes.push(vec!["t"; 50].join(","));
    probes.push(vec!["t"; 51].join(","));
    probes.push(format!("a,{}", "x".repeat(65)));
    probes
}

#[tokio::test]
async fn parameters_valid_by_the_document_are_accepted_and_the_others_refused_as_documented() {
    let app = spawn_app().await;
    let token = app.new_user().await;
    let mut problems = Vec::new();
    let mut check =
        |method: &str, route: &str, what: String, valid: bool, got: &Answer, accepted: &[u16]| {
            let expected: &[u16] = if valid { accepted } else { &[400] };
            if !expected.contains(&got.status) || !documented(method, route).contains(&got.status) {
                problems.push(format!(
                    "{method} {route}: {what}: {} by the document, answered {} {}",
                    if valid { "valid" } else { "invalid" },
                    got.status,
                    brief(&got.body)
                ));
            }
        };

    // Query parameters, one at a time (the others absent), and q's absence. Not `cursor`:
    // only the API's own cursors are valid, which no schema can state (pagination.rs).
    let queries = [
        (
            "/api/items",
            vec!["type", "tag", "archived", "favorite", "limit"],
        ),
        ("/api/search", vec!["q", "tags", "limit"]),
    ];
    for (route, names) in queries {
        for name in names {
            let mut values: Vec<Option<String>> = query_probes().into_iter().map(Some).collect();
            values.push(None);
            for value in values {
                let mut query: Vec<(&str, &str)> = Vec::new();
                if route == "/api/search" && name != "q" {
                    query.push(("q", "budget"));
                }
                if let Some(v) = &value {
                    query.push((name, v));
                }
                let valid = allows("GET", route, name, value.as_deref());
                let got = answer(
                    app.client
                        .get(app.url(route))
                        .bearer_auth(&token)
                        .query(&query),
                )
                .await;
                let what = format!(
                    "{name} = {}",
                    value
                        .as_deref()
                        .map_or("absent".into(), |v| brief(&v.into()))
                );
                check("GET", route, what, valid, &got, &[200]);
            }
        }
    }

    // Headers, each on a fresh item at version 1.
    let if_match = [
        "*",
        "\"1\"",
        "W/\"1\"",
        "\"1\", \"2\"",
        " \"2\" ,, \"1\" ",
        "\"2\"",
        "\"abc\"",
        "3",
        "\"3",
        "+3",
        "\"1\" x",
        "*, \"1\"",
        "\"a\"b\"",
        ",",
        "",
        "W/1",
    ];
    for value in if_match {
        let valid = allows("PATCH", "/api/items/{id}", "If-Match", Some(value));
        for (method, accepted) in [(Method::PATCH, [200, 412]), (Method::DELETE, [204, 412])] {
            let id = app.note(&token, "guarded").await["id"]
                .as_str()
                .unwrap()
                .to_owned();
            let mut request = app
                .client
                .request(method.clone(), app.url(&format!("/api/items/{id}")))
                .bearer_auth(&token)
                .header("if-match", value);
            if method == Method::PATCH {
                request = request.json(&json!({"favorite": true}));
            }
            let got = answer(request).await;
            check(
                method.as_str(),
                "/api/items/{id}",
                format!("If-Match: {value}"),
                valid,
                &got,
                &accepted,
            );
        }
    }
    let long = "k".repeat(255);
    let too_long = "k".repeat(256);
    let keys = [
        "key-1",
        long.as_str(),
        too_long.as_str(),
        "two words",
        "",
        "\u{e9}",
        "a\"b{}",
    ];
    for key in keys {
        let valid = allows("POST", "/api/items", "Idempotency-Key", Some(key));
        let value = reqwest::header::HeaderValue::from_bytes(key.as_bytes()).unwrap();
        let request = app
            .client
            .post(app.url("/api/items"))
            .bearer_auth(&token)
            .header("idempotency-key", value)
            .json(&json!({"type": "note", "title": "keyed"}));
        let got = answer(request).await;
        check(
            "POST",
            "/api/items",
            format!("Idempotency-Key: {}", brief(&key.into())),
            valid,
            &got,
            &[201],
        );
    }

    // The path id.
    let id = app.note(&token, "by id").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for value in [
        id.as_str(),
        "not-a-uuid",
        "123",
        "00000000-0000-0000-0000-00000000000g",
    ] {
        let valid = allows("GET", "/api/items/{id}", "id", Some(value));
        let got = answer(
            app.client
                .get(app.url(&format!("/api/items/{value}")))
                .bearer_auth(&token),
        )
        .await;
        check(
            "GET",
            "/api/items/{id}",
            format!("id = {value}"),
            valid,
            &got,
            &[200],
        );
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[tokio::test]
async fn every_operation_documents_the_answers_every_request_can_get() {
    let app = spawn_app().await;
    app.wait_ready().await;
    let (status, served) = app.get_json("/api/openapi.json").await;
    assert_eq!(status, 200);
    assert_eq!(&served, document(), "the served document is the library's");
    let mut problems = Vec::new();
    for (route, ops) in document()["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            let statuses = documented(method, route);
            let mut expect = |status: u16, why: &str| {
                if !statuses.contains(&status) {
                    problems.push(format!("{method} {route}: no {status} ({why})"));
                }
            };
            expect(503, "admission, deadline, start-up, database");
            expect(500, "a bug");
            if op.get("security").is_some() {
                expect(401, "bearer token");
            }
            if op.get("requestBody").is_some() {
                for status in [400, 413, 415, 422] {
                    expect(status, "JSON body");
                }
            }
            if op["parameters"].as_array().is_some_and(|p| !p.is_empty()) {
                expect(400, "parameters");
            }
            for (status, response) in op["responses"].as_object().unwrap() {
                let schema = &response["content"]["application/json"]["schema"]["$ref"];
                if !status.starts_with('2') && schema != "#/components/schemas/ErrorBody" {
                    problems.push(format!("{method} {route}: {status} without the error body"));
                }
            }
            let retry_after = &op["responses"]["503"]["headers"]["Retry-After"];
            if !retry_after.is_object() {
                problems.push(format!("{method} {route}: 503 without Retry-After"));
            }
        }
    }
    // What every authenticated operation answers without a token.
    for (route, ops) in document()["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            if op.get("security").is_none() {
                continue;
            }
            let path = route.replace("{id}", &Uuid::new_v4().to_string());
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let got = answer(app.client.request(method.clone(), app.url(&path))).await;
            if got.status != 401 || got.header("www-authenticate") != Some("Bearer") {
                problems.push(format!("{method} {route} without a token: {}", got.status));
            }
        }
    }
    // The operations' own answers.
    let token = app.new_user().await;
    let sourced =
        json!({"type": "note", "title": "t", "source": {"connector": "c", "sourceId": "s"}});
    let created = app.create_item(&token, &sourced).await;
    assert_eq!(created.status, 201);
    // The headers a success carries are documented too.
    let read = app
        .get_item(&token, created.body["id"].as_str().unwrap())
        .await;
    let note = json!({"type": "note", "title": "keyed"});
    let key = "contract-key";
    let first = app.post_keyed(Some(&token), "/api/items", key, &note).await;
    assert_eq!(first.status, 201);
    let keyed = app.post_keyed(Some(&token), "/api/items", key, &note).await;
    let headers = [
        ("POST", "/api/items", &created, "etag"),
        ("GET", "/api/items/{id}", &read, "etag"),
        ("POST", "/api/items", &keyed, "idempotent-replayed"),
    ];
    for (method, route, got, header) in headers {
        let responses = &operation(method, route).unwrap()["responses"];
        let listed = responses[got.status.to_string()]["headers"]
            .as_object()
            .is_some_and(|h| h.keys().any(|k| k.eq_ignore_ascii_case(header)));
        if got.header(header).is_none() || !listed {
            problems.push(format!(
                "{method} {route} {}: {header} sent or listed, not both",
                got.status
            ));
        }
    }
    let other = app.note(&token, "other").await;
    let other = format!("/api/items/{}", other["id"].as_str().unwrap());
    let unknown = format!("/api/items/{}", Uuid::new_v4());
    let same_source = json!({"source": {"connector": "c", "sourceId": "s"}});
    let cases = [
        ("POST", "/api/items", "/api/items", None, &sourced, 409),
        (
            "PATCH",
            "/api/items/{id}",
            other.as_str(),
            None,
            &same_source,
            409,
        ),
        (
            "PATCH",
            "/api/items/{id}",
            other.as_str(),
            Some("\"9\""),
            &json!({"favorite": true}),
            412,
        ),
        (
            "DELETE",
            "/api/items/{id}",
            other.as_str(),
            Some("\"9\""),
            &Value::Null,
            412,
        ),
        (
            "GET",
            "/api/items/{id}",
            unknown.as_str(),
            None,
            &Value::Null,
            404,
        ),
        (
            "DELETE",
            "/api/items/{id}",
            unknown.as_str(),
            None,
            &Value::Null,
            404,
        ),
    ];
    for (method, route, path, if_match, body, expected) in cases {
        let mut request = app
            .client
            .request(
                Method::from_bytes(method.as_bytes()).unwrap(),
                app.url(path),
            )
            .bearer_auth(&token);
        if let Some(tag) = if_match {
            request = request.header("if-match", tag);
        }
        if !body.is_null() {
            request = request.json(body);
        }
        let got = answer(request).await;
        if got.status != expected || !documented(method, route).contains(&got.status) {
            problems.push(format!(
                "{method} {path}: {} (expected {expected}, documented)",
                got.status
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
