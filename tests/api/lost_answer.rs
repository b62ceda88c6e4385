//! When the answer is lost, the data must not be (issue 25): a write cut by the request
//! deadline, or whose invalidation was lost, must never leave the cache disagreeing with
//! PostgreSQL; and an evicted generation counter must never come back at a value that old
//! entries carry.
//!
//! A write is made slower than the deadline by a row lock held from the test's own
//! connection, released once the client has had its 503: PostgreSQL then applies the
//! write, well before its `statement_timeout` (250 ms past the deadline) would cancel it.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

use crate::helpers::{pg_url, spawn_app, spawn_app_with, AppOptions, TestApp, PG_ADDR};
use crate::support::api_client::Answer;

async fn connect(app: &TestApp) -> PgConnection {
    PgConnection::connect(&pg_url(PG_ADDR, &app.database_name))
        .await
        .expect("test connection")
}

/// Holds the row lock of item `id` until the returned transaction ends.
async fn lock_row<'c>(
    conn: &'c mut PgConnection,
    id: &str,
) -> sqlx::Transaction<'c, sqlx::Postgres> {
    let mut tx = conn.begin().await.expect("begin");
    sqlx::query("SELECT 1 FROM items WHERE id = $1::uuid FOR UPDATE")
        .bind(id)
        .execute(&mut *tx)
        .await
        .expect("lock");
    tx
}

/// The item's version in PostgreSQL, `None` when the row is gone; polled until `want`.
async fn until_row(app: &TestApp, id: &str, want: impl Fn(Option<i32>) -> bool) -> Option<i32> {
    let mut conn = connect(app).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let version: Option<i32> =
            sqlx::query_scalar("SELECT version FROM items WHERE id = $1::uuid")
                .bind(id)
                .fetch_optional(&mut conn)
                .await
                .expect("read the row");
        if want(version) || Instant::now() > deadline {
            return version;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads the item through the API until `want` holds, for at most `within`; the last answer.
async fn until_read(
    app: &TestApp,
    token: &str,
    id: &str,
    within: Duration,
    want: impl Fn(&Answer) -> bool,
) -> Answer {
    let deadline = Instant::now() + within;
    loop {
        let read = app.get_item(token, id).await;
        if want(&read) || Instant::now() > deadline {
            return read;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn ids(page: &Answer) -> Vec<String> {
    page.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect()
}

/// The invalidation after the commit cannot trail it by more than this. Without it the
/// entry would stay for the item TTL (5 minutes).
const REPAIRED_WITHIN: Duration = Duration::from_secs(2);

/// A 503 on a write says the write may have been applied, and how to retry safely.
fn says_outcome_unknown(answer: &Answer) {
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert!(answer.header("retry-after").is_some());
    let error = answer.body["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("may have been applied") && error.contains("Idempotency-Key"),
        "{error}"
    );
}

async fn deadline_app() -> TestApp {
    let app = spawn_app_with(AppOptions::default().env("REQUEST_TIMEOUT_MS", "1000")).await;
    app.wait_ready().await;
    app
}

#[tokio::test]
async fn a_delete_cut_by_the_deadline_is_not_served_from_the_cache_afterwards() {
    let app = deadline_app().await;
    let token = app.new_user().await;
    let item = app.note(&token, "doomed").await;
    let id = item["id"].as_str().unwrap();
    // Cached: the item and the list page that shows it.
    assert_eq!(app.get_item(&token, id).await.status, 200);
    assert_eq!(ids(&app.list_items(&token, "").await), vec![id.to_owned()]);

    let mut locker = connect(&app).await;
    let lock = lock_row(&mut locker, id).await;
    let cut = app
        .call(
            Method::DELETE,
            &format!("/api/items/{id}"),
            Some(&token),
            None,
        )
        .await;
    says_outcome_unknown(&cut);
    lock.commit().await.expect("release the row");
    assert_eq!(
        until_row(&app, id, |v| v.is_none()).await,
        None,
        "PostgreSQL applied the delete the client was told failed"
    );

    let read = until_read(&app, &token, id, REPAIRED_WITHIN, |r| r.status == 404).await;
    assert_eq!(
        read.status, 404,
        "the deleted item is still served: {}",
        read.body
    );
    assert!(ids(&app.list_items(&token, "").await).is_empty());
    let retried = app
        .call(
            Method::DELETE,
            &format!("/api/items/{id}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(retried.status, 404);
}

#[tokio::test]
async fn a_conditional_patch_cut_by_the_deadline_shows_its_new_version_afterwards() {
    let app = deadline_app().await;
    let token = app.new_user().await;
    let item = app.note(&token, "before").await;
    let id = item["id"].as_str().unwrap();
    assert_eq!(app.get_item(&token, id).await.header("etag"), Some("\"1\""));

    let mut locker = connect(&app).await;
    let lock = lock_row(&mut locker, id).await;
    let cut = app
        .patch_item(&token, id, Some("\"1\""), &json!({"title": "after"}))
        .await;
    says_outcome_unknown(&cut);
    lock.commit().await.expect("release the row");
    assert_eq!(until_row(&app, id, |v| v == Some(2)).await, Some(2));

    let read = until_read(&app, &token, id, REPAIRED_WITHIN, |r| {
        r.header("etag") == Some("\"2\"")
    })
    .await;
    assert_eq!(read.header("etag"), Some("\"2\""), "{}", read.body);
    assert_eq!(read.body["title"], "after");
    // The client's way out: re-read, then write against the version it now sees.
    let next = app
        .patch_item(&token, id, Some("\"2\""), &json!({"title": "again"}))
        .await;
    assert_eq!(next.status, 200, "{}", next.body);
}

/// Holds SHARE on `items`, which conflicts with an insert's ROW EXCLUSIVE: creates wait.
async fn lock_inserts(conn: &mut PgConnection) -> sqlx::Transaction<'_, sqlx::Postgres> {
    let mut tx = conn.begin().await.expect("begin");
    sqlx::query("LOCK TABLE items IN SHARE MODE")
        .execute(&mut *tx)
        .await
        .expect("lock");
    tx
}

async fn count_items(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM items")
        .fetch_one(&mut connect(app).await)
        .await
        .expect("count")
}

#[tokio::test]
async fn a_keyed_create_cut_by_the_deadline_retried_with_its_key_is_applied_once() {
    let app = deadline_app().await;
    let token = app.new_user().await;
    // Cached: the empty list.
    assert!(ids(&app.list_items(&token, "").await).is_empty());
    let note = json!({"type": "note", "title": "once"});

    let mut locker = connect(&app).await;
    let lock = lock_inserts(&mut locker).await;
    let cut = app
        .post_keyed(Some(&token), "/api/items", "create-once", &note)
        .await;
    says_outcome_unknown(&cut);
    lock.commit().await.expect("release the table");

    let retried = app
        .post_keyed(Some(&token), "/api/items", "create-once", &note)
        .await;
    assert_eq!(retried.status, 201, "{}", retried.body);
    assert_eq!(count_items(&app).await, 1, "exactly one write applied");
    assert_eq!(
        ids(&app.list_items(&token, "").await),
        vec![retried.body["id"].as_str().unwrap().to_owned()],
        "the list shows the one item, not the page cached before it"
    );
}

#[tokio::test]
async fn a_create_cut_before_its_commit_is_rolled_back_so_a_retry_without_a_key_cannot_duplicate_it(
) {
    let app = deadline_app().await;
    let token = app.new_user().await;
    let note = json!({"type": "note", "title": "not twice"});

    let mut locker = connect(&app).await;
    let lock = lock_inserts(&mut locker).await;
    let cut = app.create_item(&token, &note).await;
    says_outcome_unknown(&cut);
    lock.commit().await.expect("release the table");
    // Past statement_timeout (250 ms after the deadline): PostgreSQL has decided.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(count_items(&app).await, 0, "the cut create committed");

    assert_eq!(app.create_item(&token, &note).await.status, 201);
    assert_eq!(ids(&app.list_items(&token, "").await).len(), 1);
}

/// Rewrites the row behind the service's back: what a lost invalidation leaves behind.
async fn behind_the_back(app: &TestApp, sql: &str, id: &str) {
    sqlx::query(sql)
        .bind(id)
        .execute(&mut connect(app).await)
        .await
        .expect("rewrite the row");
}

#[tokio::test]
async fn the_404_of_a_delete_makes_the_cache_agree_with_postgresql() {
    let app = spawn_app().await;
    let token = app.new_user().await;
    let item = app.note(&token, "gone already").await;
    let id = item["id"].as_str().unwrap();
    assert_eq!(app.get_item(&token, id).await.status, 200);
    behind_the_back(&app, "DELETE FROM items WHERE id = $1::uuid", id).await;
    assert_eq!(
        app.get_item(&token, id).await.status,
        200,
        "precondition: the stale entry is cached"
    );

    let delete = app
        .call(
            Method::DELETE,
            &format!("/api/items/{id}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(delete.status, 404);
    assert_eq!(app.get_item(&token, id).await.status, 404);
    assert!(ids(&app.list_items(&token, "").await).is_empty());
}

#[tokio::test]
async fn the_412_of_a_patch_makes_the_cache_agree_with_postgresql() {
    let app = spawn_app().await;
    let token = app.new_user().await;
    let item = app.note(&token, "mine").await;
    let id = item["id"].as_str().unwrap();
    assert_eq!(app.get_item(&token, id).await.body["version"], 1);
    behind_the_back(
        &app,
        "UPDATE items SET title = 'moved on', version = 2 WHERE id = $1::uuid",
        id,
    )
    .await;
    assert_eq!(
        app.get_item(&token, id).await.body["version"],
        1,
        "precondition: the stale entry is cached"
    );

    let stale = app
        .patch_item(&token, id, Some("\"1\""), &json!({"title": "mine again"}))
        .await;
    assert_eq!(stale.status, 412);
    let read = app.get_item(&token, id).await;
    assert_eq!(read.header("etag"), Some("\"2\""), "{}", read.body);
    assert_eq!(read.body["title"], "moved on");
}

/// The key of the counter every list page of the user follows.
async fn user_generation(app: &TestApp, token: &str) -> String {
    let (status, me): (u16, Value) = {
        let me = app
            .call(Method::GET, "/api/auth/me", Some(token), None)
            .await;
        (me.status, me.body)
    };
    assert_eq!(status, 200);
    let user = Uuid::parse_str(me["id"].as_str().unwrap()).unwrap();
    cartae_database_api::cache::stamped::user_generation_key(&app.state.cache, user)
}

async fn evict(key: &str) {
    let client = redis::Client::open(format!("redis://{}", crate::helpers::REDIS_ADDR)).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("DEL")
        .arg(key)
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn an_evicted_generation_counter_never_comes_back_at_a_value_entries_carry() {
    let app = spawn_app().await;
    let token = app.new_user().await;
    let generation = user_generation(&app, &token).await;

    // `allkeys-lru` may evict the counter at any time; DEL is that eviction.
    evict(&generation).await;
    let a = app.note(&token, "A").await;
    let a = a["id"].as_str().unwrap().to_owned();
    assert_eq!(ids(&app.list_items(&token, "").await), vec![a.clone()]);

    evict(&generation).await;
    let b = app.note(&token, "B").await;
    let b = b["id"].as_str().unwrap().to_owned();
    assert_eq!(
        ids(&app.list_items(&token, "").await),
        vec![b, a],
        "a page stamped before the eviction was served after a write"
    );
}

#[tokio::test]
async fn an_evicted_epoch_bumped_twice_never_comes_back_at_a_value_entries_carry() {
    let app = spawn_app().await;
    let token = app.new_user().await;
    let item = app.note(&token, "as written").await;
    let id = item["id"].as_str().unwrap();
    let epoch = cartae_database_api::cache::stamped::epoch_key(&app.state.cache);
    let bump = || {
        cartae_database_api::cache::stamped::bump_epoch(&app.state.cache, Duration::from_secs(1))
    };

    evict(&epoch).await;
    bump().await.expect("bump");
    assert_eq!(app.get_item(&token, id).await.body["title"], "as written");
    // A restore rewrites the row, then the operator bumps the epoch (`cache-bump`).
    behind_the_back(
        &app,
        "UPDATE items SET title = 'as restored' WHERE id = $1::uuid",
        id,
    )
    .await;
    evict(&epoch).await;
    bump().await.expect("bump");
    assert_eq!(
        app.get_item(&token, id).await.body["title"],
        "as restored",
        "an entry stamped before the bump was served after it"
    );
}

async fn counter_value(key: &str) -> Option<String> {
    let client = redis::Client::open(format!("redis://{}", crate::helpers::REDIS_ADDR)).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("GET")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_stopping_replica_finishes_the_writes_the_deadline_cut_before_closing_its_pools() {
    let app = spawn_app_with(
        AppOptions::default()
            .env("REQUEST_TIMEOUT_MS", "1000")
            .env("DRAIN_DELAY_MS", "0"),
    )
    .await;
    app.wait_ready().await;
    let token = app.new_user().await;
    let item = app.note(&token, "deleted while stopping").await;
    let id = item["id"].as_str().unwrap().to_owned();
    let generation = user_generation(&app, &token).await;
    let before = counter_value(&generation).await;
    assert!(before.is_some());

    let mut locker = connect(&app).await;
    let lock = lock_row(&mut locker, &id).await;
    let cut = app
        .call(
            Method::DELETE,
            &format!("/api/items/{id}"),
            Some(&token),
            None,
        )
        .await;
    says_outcome_unknown(&cut);
    app.signal();
    // The replica is stopping while PostgreSQL still holds the delete.
    tokio::time::sleep(Duration::from_millis(100)).await;
    lock.commit().await.expect("release the row");
    let stopped = tokio::time::timeout(Duration::from_secs(20), app.run)
        .await
        .expect("stopped in time")
        .expect("run task")
        .expect("stopped cleanly");
    assert_eq!(stopped, cartae_database_api::startup::Stopped::Gracefully);

    let gone: Option<i32> = sqlx::query_scalar("SELECT version FROM items WHERE id = $1::uuid")
        .bind(&id)
        .fetch_optional(&mut locker)
        .await
        .unwrap();
    assert_eq!(gone, None, "the delete committed");
    assert_ne!(
        counter_value(&generation).await,
        before,
        "the replica stopped without invalidating what its last write changed"
    );
}
