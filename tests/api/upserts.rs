//! Upserts by source, batches (all or nothing), and Idempotency-Key replays.

use std::time::{Duration, Instant};

use futures::future::join_all;
use serde_json::{json, Value};
use sqlx::Connection;
use uuid::Uuid;

use crate::helpers::{pg_url, spawn_app, spawn_app_with, AppOptions, TestApp, PG_ADDR};
use crate::support::api_client::sourced;
use crate::support::proxy::Mode;

async fn count_items(app: &TestApp) -> i64 {
    let mut conn = sqlx::PgConnection::connect(&pg_url(PG_ADDR, &app.database_name))
        .await
        .unwrap();
    sqlx::query_scalar("SELECT count(*) FROM items")
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn upsert_creates_then_updates_by_source() {
    let app = spawn_app().await;
    let token = app.new_user().await;
    let created = app
        .upsert(&token, &sourced("gmail", "m-1", "First title"))
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(created.body["version"], 1);
    let mut changed = sourced("gmail", "m-1", "Second title");
    changed["tags"] = json!(["updated"]);
    let updated = app.upsert(&token, &changed).await;
    assert_eq!(updated.status, 200, "{}", updated.body);
    assert_eq!(updated.body["id"], created.body["id"]);
    assert_eq!(updated.body["version"], 2);
    assert_eq!(updated.body["title"], "Second title");
    assert_eq!(updated.header("etag"), Some("\"2\""));
    // Same id in another connector is another item.
    let other = app.upsert(&token, &sourced("slack", "m-1", "Other")).await;
    assert_eq!(other.status, 201);
    let unsourced = app
        .upsert(&token, &json!({"type": "note", "title": "no source"}))
        .await;
    assert_eq!(unsourced.status, 422);
    assert_eq!(unsourced.error_paths(), vec!["$.source"]);
    assert_eq!(count_items(&app).await, 2);
}

#[tokio::test]
async fn a_batch_counts_created_and_updated_and_refuses_more_than_1000() {
    let app = spawn_app().await;
    let token = app.new_user().await;
    for i in 0..10 {
        app.upsert(&token, &sourced("drive", &format!("f-{i}"), "old"))
            .await;
    }
    let items: Vec<Value> = (0..1000)
        .map(|i| sourced("drive", &format!("f-{i}"), &format!("file {i}")))
        .collect();
    let answer = app.batch(&token, items).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body, json!({"created": 990, "updated": 10}));
    assert_eq!(count_items(&app).await, 1000);

    let too_many: Vec<Value> = (0..1001)
        .map(|i| sourced("other", &format!("x-{i}"), "x"))
        .collect();
    let refused = app.batch(&token, too_many).await;
    assert_eq!(refused.status, 422);
    assert_eq!(refused.error_paths(), vec!["$.items"]);
    let empty = app.batch(&token, vec![]).await;
    assert_eq!(empty.status, 422);
    assert_eq!(count_items(&app).await, 1000);
}

#[tokio::test]
async fn a_batch_with_one_bad_item_writes_nothing() {
    let app = spawn_app().await;
    let token = app.new_user().await;
    let mut items: Vec<Value> = (0..600)
        .map(|i| sourced("drive", &format!("f-{i}"), "fine"))
        .collect();
    items[500]["title"] = json!("x".repeat(501));
    items[599]["source"] = Value::Null;
    let answer = app.batch(&token, items).await;
    assert_eq!(answer.status, 422);
    assert_eq!(
        answer.error_paths(),
        vec!["$.items[500].title", "$.items[599].source"]
    );
    assert_eq!(count_items(&app).await, 0);
}

#[tokio::test]
async fn a_batch_cut_off_mid_transaction_writes_nothing() {
    let app = spawn_app_with(AppOptions::default().proxy_postgres()).await;
    app.wait_ready().await;
    let token = app.new_user().await;
    let items: Vec<Value> = (0..1000)
        .map(|i| sourced("drive", &format!("f-{i}"), "file"))
        .collect();
    let baseline = app.pg_proxy().queries();
    let request = {
        let (client, url, token) = (
            app.client.clone(),
            app.url("/api/items/batch"),
            token.clone(),
        );
        tokio::spawn(async move {
            let response = client
                .post(url)
                .bearer_auth(token)
                .json(&json!({ "items": items }))
                .send()
                .await
                .unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        })
    };
    // Cut PostgreSQL once a few hundred upserts of the transaction went through.
    let deadline = Instant::now() + Duration::from_secs(20);
    while app.pg_proxy().queries() < baseline + 300 {
        assert!(Instant::now() < deadline, "the batch never started");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    app.pg_proxy().set_mode(Mode::Cut);
    let (status, body) = request.await.unwrap();
    assert!(
        status >= 500,
        "the batch cannot have succeeded: {status} {body}"
    );
    let body: Value = serde_json::from_str(&body).unwrap();
    assert!(body["error"].is_string());
    app.pg_proxy().set_mode(Mode::Forward);
    assert_eq!(count_items(&app).await, 0, "a partial batch was committed");
    // And the same batch succeeds once PostgreSQL is back.
    let items: Vec<Value> = (0..1000)
        .map(|i| sourced("drive", &format!("f-{i}"), "file"))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let retry = app.batch(&token, items.clone()).await;
        if retry.status == 200 {
            assert_eq!(retry.body, json!({"created": 1000, "updated": 0}));
            break;
        }
        assert!(Instant::now() < deadline, "{} {}", retry.status, retry.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(count_items(&app).await, 1000);
}

#[tokio::test]
async fn an_idempotency_key_replays_the_first_response_and_writes_once() {
    let app = spawn_app().await;
    let token = app.new_user().await;
    let key = Uuid::new_v4().to_string();
    let body = json!({"type": "task", "title": "Pay invoice"});
    let first = app
        .post_keyed(Some(&token), "/api/items", &key, &body)
        .await;
    assert_eq!(first.status, 201);
    assert_eq!(first.header("idempotent-replayed"), None);
    // Same request, other formatting: still the same request.
    let reordered = json!({"title": "Pay invoice", "type": "task"});
    let second = app
        .post_keyed(Some(&token), "/api/items", &key, &reordered)
        .await;
    assert_eq!(second.status, 201);
    assert_eq!(second.body, first.body);
    assert_eq!(second.header("etag"), Some("\"1\""));
    assert_eq!(second.header("idempotent-replayed"), Some("true"));
    assert_eq!(count_items(&app).await, 1);

    let different = app
        .post_keyed(
            Some(&token),
            "/api/items",
            &key,
            &json!({"type": "task", "title": "Other"}),
        )
        .await;
    assert_eq!(different.status, 422);
    different.error_paths();
    // The same key on another route is another request too.
    let other_route = app
        .post_keyed(
            Some(&token),
            "/api/items/upsert",
            &key,
            &sourced("a", "b", "c"),
        )
        .await;
    assert_eq!(other_route.status, 422);
    assert_eq!(count_items(&app).await, 1);

    // Keys are per user.
    let bob = app.new_user().await;
    let bobs = app.post_keyed(Some(&bob), "/api/items", &key, &body).await;
    assert_eq!(bobs.status, 201);
    assert_ne!(bobs.body["id"], first.body["id"]);

    // An upsert's replay is its first answer (201), not what a re-run would say (200).
    let upsert_key = Uuid::new_v4().to_string();
    let up = sourced("gmail", "m-9", "mail");
    let first_up = app
        .post_keyed(Some(&token), "/api/items/upsert", &upsert_key, &up)
        .await;
    let replay_up = app
        .post_keyed(Some(&token), "/api/items/upsert", &upsert_key, &up)
        .await;
    assert_eq!((first_up.status, replay_up.status), (201, 201));
    assert_eq!(replay_up.body["version"], 1, "the replay wrote nothing");

    // Batches and registration replay as well.
    let batch_key = Uuid::new_v4().to_string();
    let batch = json!({"items": [sourced("x", "1", "a"), sourced("x", "2", "b")]});
    let b1 = app
        .post_keyed(Some(&token), "/api/items/batch", &batch_key, &batch)
        .await;
    let b2 = app
        .post_keyed(Some(&token), "/api/items/batch", &batch_key, &batch)
        .await;
    assert_eq!(b1.body, json!({"created": 2, "updated": 0}));
    assert_eq!(b2.body, b1.body);
    let email = crate::support::api_client::unique_email();
    let credentials = json!({"email": email, "password": "correct horse battery"});
    let register_key = Uuid::new_v4().to_string();
    let r1 = app
        .post_keyed(None, "/api/auth/register", &register_key, &credentials)
        .await;
    let r2 = app
        .post_keyed(None, "/api/auth/register", &register_key, &credentials)
        .await;
    assert_eq!((r1.status, r2.status), (201, 201));
    assert_eq!(r1.body, r2.body);
    // The password is not part of the fingerprint (nothing derived from it is kept): the
    // same key with another password replays the first answer. Keys of registrations
    // belong to the email: another email with the same key is another registration.
    let other_password = json!({"email": email, "password": "another password!"});
    let r3 = app
        .post_keyed(None, "/api/auth/register", &register_key, &other_password)
        .await;
    assert_eq!((r3.status, &r3.body), (201, &r1.body));
    assert_eq!(r3.header("idempotent-replayed"), Some("true"));
    let other_email = json!({"email": crate::support::api_client::unique_email(), "password": "correct horse battery"});
    let r4 = app
        .post_keyed(None, "/api/auth/register", &register_key, &other_email)
        .await;
    assert_eq!(r4.status, 201, "{}", r4.body);
    assert_ne!(r4.body["id"], r1.body["id"]);
    assert_eq!(r4.header("idempotent-replayed"), None);
    let stored: Vec<u8> = sqlx::query_scalar(
        "SELECT fingerprint FROM idempotency_keys WHERE key = $1 ORDER BY created_at LIMIT 1",
    )
    .bind(&register_key)
    .fetch_one(&app.state.db.pool)
    .await
    .unwrap();
    let email_only = {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        hasher.update(b"register\0");
        hasher.update(json!({"email": email}).to_string().as_bytes());
        hasher.finalize().to_vec()
    };
    assert_eq!(
        stored, email_only,
        "the fingerprint depends on more than the email"
    );
    assert_eq!(count_items(&app).await, 1 + 1 + 1 + 2);
}

#[tokio::test]
async fn concurrent_requests_with_one_key_write_once() {
    let app = spawn_app().await;
    let token = app.new_user().await;
    for round in 0..3 {
        let key = Uuid::new_v4().to_string();
        let body = json!({"type": "note", "title": format!("once {round}")});
        let answers =
            join_all((0..10).map(|_| app.post_keyed(Some(&token), "/api/items", &key, &body)))
                .await;
        let first_id = &answers[0].body["id"];
        for answer in &answers {
            assert_eq!(answer.status, 201, "{}", answer.body);
            assert_eq!(&answer.body["id"], first_id);
        }
        let fresh = answers
            .iter()
            .filter(|a| a.header("idempotent-replayed").is_none())
            .count();
        assert_eq!(fresh, 1);
    }
    assert_eq!(count_items(&app).await, 3);
}
