//! Items CRUD, versions and If-Match, isolation between users, bad input.

use futures::future::join_all;
use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::spawn_app;
use crate::support::api_client::answer;

#[tokio::test]
async fn create_read_patch_and_delete_with_versions() {
    let app = spawn_app().await;
    let token = app.new_user().await;
    let body = json!({
        "type": "email",
        "title": "Quarterly report",
        "content": "Numbers attached",
        "tags": ["work", "q3"],
        "metadata": {"from": "boss@example.com", "size": 42, "nested": {"a": [1, 2]}},
        "source": {"connector": "gmail", "sourceId": "msg-1", "url": "https://mail.example.com/1"},
        "favorite": true
    });
    let created = app.create_item(&token, &body).await;
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(created.header("etag"), Some("\"1\""));
    let item = &created.body;
    let id = item["id"].as_str().unwrap();
    for field in [
        "type", "title", "content", "tags", "metadata", "source", "favorite",
    ] {
        assert_eq!(item[field], body[field], "{field}");
    }
    assert_eq!(item["archived"], false);
    assert_eq!(item["version"], 1);
    assert_eq!(item["createdAt"], item["updatedAt"]);

    let read = app.get_item(&token, id).await;
    assert_eq!(read.status, 200);
    assert_eq!(read.body, created.body);
    assert_eq!(read.header("etag"), Some("\"1\""));

    let patched = app
        .patch_item(
            &token,
            id,
            Some("\"1\""),
            &json!({"archived": true, "tags": ["done"]}),
        )
        .await;
    assert_eq!(patched.status, 200, "{}", patched.body);
    assert_eq!(patched.header("etag"), Some("\"2\""));
    assert_eq!(patched.body["archived"], true);
    assert_eq!(patched.body["tags"], json!(["done"]));
    assert_eq!(
        patched.body["title"], "Quarterly report",
        "absent fields unchanged"
    );
    assert_eq!(patched.body["createdAt"], item["createdAt"]);
    assert_ne!(patched.body["updatedAt"], item["updatedAt"]);

    let stale = app
        .patch_item(&token, id, Some("\"1\""), &json!({"title": "late"}))
        .await;
    assert_eq!(stale.status, 412);
    stale.error_paths();
    // RFC 9110: If-Match compares strongly, so a weak tag never matches.
    let weak = app
        .patch_item(&token, id, Some("W/\"2\""), &json!({"title": "Renamed"}))
        .await;
    assert_eq!(weak.status, 412);
    let strong = app
        .patch_item(&token, id, Some("\"2\""), &json!({"title": "Renamed"}))
        .await;
    assert_eq!(strong.status, 200);
    let unguarded = app
        .patch_item(&token, id, None, &json!({"favorite": false}))
        .await;
    assert_eq!(unguarded.body["version"], 4);
    assert_eq!(app.get_item(&token, id).await.body["title"], "Renamed");

    let stale_delete = answer(
        app.request(Method::DELETE, &format!("/api/items/{id}"), Some(&token))
            .header("If-Match", "\"1\""),
    )
    .await;
    assert_eq!(stale_delete.status, 412);
    let deleted = app
        .call(
            Method::DELETE,
            &format!("/api/items/{id}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(deleted.status, 204);
    assert_eq!(app.get_item(&token, id).await.status, 404);
    let again = app
        .call(
            Method::DELETE,
            &format!("/api/items/{id}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(again.status, 404);
    assert_eq!(
        app.patch_item(&token, id, None, &json!({"title": "x"}))
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn a_user_never_sees_another_users_items() {
    let app = spawn_app().await;
    let alice = app.new_user().await;
    let bob = app.new_user().await;
    let item = app.note(&alice, "Alice's secret plan").await;
    let id = item["id"].as_str().unwrap();
    app.upsert(
        &alice,
        &crate::support::api_client::sourced("drive", "doc-1", "Shared name"),
    )
    .await;

    assert_eq!(app.get_item(&bob, id).await.status, 404);
    assert_eq!(
        app.patch_item(&bob, id, None, &json!({"title": "mine now"}))
            .await
            .status,
        404
    );
    let delete = app
        .call(
            Method::DELETE,
            &format!("/api/items/{id}"),
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(delete.status, 404);
    assert_eq!(app.list_items(&bob, "").await.body["items"], json!([]));
    assert_eq!(app.search(&bob, "?q=secret").await.body["count"], 0);
    let stats = app.call(Method::GET, "/api/stats", Some(&bob), None).await;
    assert_eq!(stats.body["total"], 0);
    // Bob's upsert with Alice's source creates Bob's own item.
    let bobs = app
        .upsert(
            &bob,
            &crate::support::api_client::sourced("drive", "doc-1", "Bob's copy"),
        )
        .await;
    assert_eq!(bobs.status, 201);

    // Alice's item is untouched.
    let read = app.get_item(&alice, id).await;
    assert_eq!(read.status, 200);
    assert_eq!(read.body["title"], "Alice's secret plan");
    assert_eq!(read.body["version"], 1);
    assert_eq!(app.all_items(&alice, 100).await.len(), 2);
}

#[tokio::test]
async fn concurrent_patches_with_the_same_version_have_exactly_one_winner() {
    let app = spawn_app().await;
    let token = app.new_user().await;
    for round in 0..5 {
        let item = app.note(&token, &format!("race {round}")).await;
        let id = item["id"].as_str().unwrap();
        let racers = (0..8).map(|i| {
            let body = json!({"title": format!("winner {i}")});
            let (app, token) = (&app, &token);
            async move { app.patch_item(token, id, Some("\"1\""), &body).await }
        });
        let answers = join_all(racers).await;
        let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
        assert_eq!(
            statuses.iter().filter(|s| **s == 200).count(),
            1,
            "{statuses:?}"
        );
        assert_eq!(
            statuses.iter().filter(|s| **s == 412).count(),
            7,
            "{statuses:?}"
        );
        let winner = answers.iter().find(|a| a.status == 200).unwrap();
        let read = app.get_item(&token, id).await;
        assert_eq!(read.body["version"], 2);
        assert_eq!(read.body["title"], winner.body["title"]);
    }
}

#[tokio::test]
async fn sql_looking_strings_are_stored_verbatim() {
    let app = spawn_app().await;
    let token = app.new_user().await;
    let nasty = [
        "'; DROP TABLE items; --",
        "Robert'); DELETE FROM users WHERE ('1'='1",
        "\" OR \"\"=\"",
        "1; SELECT pg_sleep(10)",
        "$1 $2 ::text ARRAY[1]",
        "ünïcødé 💥 \\ \\\\ %_",
    ];
    for text in nasty {
        let body = json!({
            "type": "note", "title": text, "content": text, "tags": [text],
            "metadata": {text: text},
            "source": {"connector": text, "sourceId": text, "url": text},
        });
        let created = app.create_item(&token, &body).await;
        assert_eq!(created.status, 201, "{text}: {}", created.body);
        let read = app
            .get_item(&token, created.body["id"].as_str().unwrap())
            .await;
        for field in ["title", "content", "tags", "metadata", "source"] {
            assert_eq!(read.body[field], body[field], "{text}: {field}");
        }
        let tag = urlencode(text);
        let listed = app.list_items(&token, &format!("?tag={tag}")).await;
        assert_eq!(listed.status, 200);
        assert_eq!(listed.body["items"].as_array().unwrap().len(), 1, "{text}");
        let searched = app.search(&token, &format!("?q={tag}")).await;
        assert_eq!(searched.status, 200, "{text}: {}", searched.body);
    }
    assert_eq!(app.all_items(&token, 100).await.len(), nasty.len());
}

pub fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn invalid_item_bodies_get_json_4xx_naming_the_field() {
    let app = spawn_app().await;
    let token = app.new_user().await;
    let note = |extra: Value| {
        let mut body = json!({"type": "note", "title": "ok"});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let too_many_tags: Vec<String> = (0..51).map(|i| format!("t{i}")).collect();
    let cases = [
        (note(json!({"title": "x".repeat(501)})), 422, "$.title"),
        (note(json!({"title": "   "})), 422, "$.title"),
        (note(json!({"title": "nul\u{0}byte"})), 422, "$.title"),
        (note(json!({"tags": too_many_tags})), 422, "$.tags"),
        (note(json!({"tags": ["x".repeat(65)]})), 422, "$.tags[0]"),
        (note(json!({"tags": "not-an-array"})), 422, "$.tags"),
        (
            note(json!({"metadata": "not an object"})),
            422,
            "$.metadata",
        ),
        (note(json!({"metadata": [1, 2]})), 422, "$.metadata"),
        (
            note(json!({"metadata": {"k": "nul\u{0}"}})),
            422,
            "$.metadata",
        ),
        (note(json!({"type": "spaceship"})), 422, "$.type"),
        (note(json!({"favorite": "yes"})), 422, "$.favorite"),
        (note(json!({"owner": "someone"})), 422, "$.owner"),
        (
            note(json!({"source": {"connector": "gmail"}})),
            422,
            "$.source",
        ),
        (
            note(json!({"source": {"connector": "", "sourceId": "1"}})),
            422,
            "$.source.connector",
        ),
        (json!({"title": "no type"}), 422, "$"),
        (json!([1, 2, 3]), 422, "$"),
    ];
    for (body, status, path) in cases {
        let answer = app.create_item(&token, &body).await;
        assert_eq!(answer.status, status, "{body} -> {}", answer.body);
        let paths = answer.error_paths();
        assert!(
            paths.iter().any(|p| p == path),
            "{body}: expected {path} in {paths:?}"
        );
    }
    let item = app.note(&token, "target").await;
    let id = item["id"].as_str().unwrap();
    let empty = app.patch_item(&token, id, None, &json!({})).await;
    assert_eq!(empty.status, 422);
    let bad_if_match = app
        .patch_item(&token, id, Some("yesterday"), &json!({"title": "x"}))
        .await;
    assert_eq!(bad_if_match.status, 400);
    assert_eq!(bad_if_match.error_paths(), vec!["If-Match"]);
    assert_eq!(
        app.all_items(&token, 100).await.len(),
        1,
        "nothing invalid was written"
    );
}

#[tokio::test]
async fn malformed_requests_get_json_4xx() {
    let app = spawn_app().await;
    let token = app.new_user().await;
    let post = |body: Vec<u8>, content_type: &str| {
        app.request(Method::POST, "/api/items", Some(&token))
            .header("Content-Type", content_type)
            .body(body)
    };
    let cases = [
        (
            post(b"{\"type\": \"note\", ".to_vec(), "application/json"),
            400,
        ),
        (post(b"not json at all".to_vec(), "application/json"), 400),
        (
            post(
                b"{\"type\":\"note\",\"title\":\"a\"} trailing".to_vec(),
                "application/json",
            ),
            400,
        ),
        (post(b"".to_vec(), "application/json"), 400),
        (post(vec![0xff, 0xfe, 0x00], "application/json"), 400),
        (
            post(
                b"{\"type\":\"note\",\"title\":\"a\"}".to_vec(),
                "text/plain",
            ),
            415,
        ),
        (post(vec![b' '; 2 * 1024 * 1024], "application/json"), 413),
    ];
    for (request, status) in cases {
        let answer = answer(request).await;
        assert_eq!(answer.status, status, "{}", answer.body);
        answer.error_paths();
    }
    // Just over the limit, with a real JSON document.
    let big = json!({"type": "note", "title": "big", "content": "x".repeat(1024 * 1024)});
    let too_large = app.create_item(&token, &big).await;
    assert_eq!(too_large.status, 413);
    assert_eq!(too_large.body["error"], "request body exceeds 1 MiB");

    for path in ["/api/items/not-a-uuid", "/api/items/123", "/api/items/%00"] {
        let answer = app.call(Method::GET, path, Some(&token), None).await;
        assert_eq!(answer.status, 400, "{path}: {}", answer.body);
        assert_eq!(answer.error_paths(), vec!["id"]);
    }
    let unknown = app
        .call(Method::GET, "/api/nothing-here", Some(&token), None)
        .await;
    assert_eq!(unknown.status, 404);
    unknown.error_paths();
    let wrong_method = app
        .call(Method::PUT, "/api/items", Some(&token), None)
        .await;
    assert_eq!(wrong_method.status, 405);
    wrong_method.error_paths();
    let wrong_method = app
        .call(Method::POST, "/api/stats", Some(&token), None)
        .await;
    assert_eq!(wrong_method.status, 405);
    let bad_key = answer(
        app.request(Method::POST, "/api/items", Some(&token))
            .header("Idempotency-Key", "x".repeat(300))
            .json(&json!({"type": "note", "title": "a"})),
    )
    .await;
    assert_eq!(bad_key.status, 400);
    assert_eq!(bad_key.error_paths(), vec!["Idempotency-Key"]);
}

#[tokio::test]
async fn if_match_follows_rfc_9110() {
    let app = spawn_app().await;
    let token = app.new_user().await;
    let item = app.note(&token, "guarded").await;
    let id = item["id"].as_str().unwrap().to_owned();
    // (If-Match, expected status) against version 1; a 200 moves the version on by one.
    let cases = [
        ("W/\"1\"", 412), // weak tags never match strongly
        ("\"+1\"", 412),  // not character for character the ETag
        ("\"01\"", 412),
        ("\"abc\"", 412), // a well-formed tag this API never makes
        ("\"1", 400),     // not an entity tag
        ("+1", 400),
        ("1", 400),
        ("\"1\" \"2\"", 400),  // a list needs commas
        ("\"7\", \"1\"", 200), // a list matches if any element does
        ("\"1\"", 412),        // now stale: the version is 2
        ("W/\"9\", \"2\"", 200),
        ("*", 200),
        (" , \"4\" ,", 200), // empty list elements are allowed
    ];
    for (if_match, status) in cases {
        let answer = app
            .patch_item(&token, &id, Some(if_match), &json!({"title": if_match}))
            .await;
        assert_eq!(
            answer.status, status,
            "If-Match: {if_match} -> {}",
            answer.body
        );
    }
    // Several header lines are one list.
    let two_lines = answer(
        app.request(Method::DELETE, &format!("/api/items/{id}"), Some(&token))
            .header("If-Match", "\"9\"")
            .header("If-Match", "\"5\""),
    )
    .await;
    assert_eq!(two_lines.status, 204, "{}", two_lines.body);
}

#[tokio::test]
async fn metadata_over_16_kib_is_refused_naming_the_limit() {
    let app = spawn_app().await;
    let token = app.new_user().await;
    // {"k":"..."}: 8 bytes around the string.
    let metadata = |bytes: usize| json!({"k": "x".repeat(bytes - 8)});
    let note = |bytes: usize| json!({"type": "note", "title": "t", "metadata": metadata(bytes)});
    let at_the_limit = app.create_item(&token, &note(16 * 1024)).await;
    assert_eq!(at_the_limit.status, 201, "{}", at_the_limit.body);
    let id = at_the_limit.body["id"].as_str().unwrap().to_owned();

    let over = app.create_item(&token, &note(16 * 1024 + 1)).await;
    assert_eq!(over.status, 422, "{}", over.body["details"]);
    assert_eq!(over.error_paths(), ["$.metadata"]);
    assert_eq!(
        over.body["details"][0]["message"],
        "must be at most 16384 bytes as compact JSON"
    );
    let patched = app
        .patch_item(
            &token,
            &id,
            None,
            &json!({"metadata": metadata(16 * 1024 + 1)}),
        )
        .await;
    assert_eq!(patched.status, 422, "{}", patched.body["details"]);
    let mut sourced = note(16 * 1024 + 1);
    sourced["source"] = json!({"connector": "c", "sourceId": "s"});
    let batch = app.batch(&token, vec![sourced]).await;
    assert_eq!(batch.status, 422, "{}", batch.body["details"]);
    assert_eq!(batch.error_paths(), ["$.items[0].metadata"]);
}
