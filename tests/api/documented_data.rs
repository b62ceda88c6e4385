//! Data API behaviour that docs/api.md documents: `cache_bypassed_total` (reads of entries a
//! failed invalidation may have left stale), search and stats
//! freshness across replicas, `If-Match: *`, and the lifetime of an `Idempotency-Key`.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::helpers::{metric_value, spawn_app, spawn_app_with, AppOptions, TestApp};
use crate::support::api_client::answer;
use crate::support::proxy::Mode;

const WITHIN: Duration = Duration::from_secs(20);

async fn counter(app: &TestApp, name: &str) -> f64 {
    metric_value(&app.metrics().await, name, &[])
}

#[tokio::test]
async fn reads_while_redis_is_distrusted_count_in_cache_bypassed_total() {
    let app = spawn_app_with(AppOptions::default().proxy_redis()).await;
    let token = app.new_user().await;
    let item = app.note(&token, "bypassed").await;
    let id = item["id"].as_str().unwrap();

    app.redis_proxy().set_mode(Mode::Cut);
    app.wait_for("/health", WITHIN, |_, b| {
        b["checks"]["redis"]["status"] == "failed"
    })
    .await;
    // A write whose invalidation fails: its entries are suspect until the repair.
    let patched = app
        .patch_item(&token, id, None, &json!({"title": "written"}))
        .await;
    assert_eq!(patched.status, 200);
    let before = counter(&app, "cache_bypassed_total").await;
    for _ in 0..10 {
        let read = app.get_item(&token, id).await;
        assert_eq!(read.status, 200, "served from PostgreSQL: {}", read.body);
    }
    let bypassed = counter(&app, "cache_bypassed_total").await - before;
    assert!(bypassed >= 10.0, "10 reads, {bypassed} bypasses counted");

    // Trusted again after the repair: reads hit the cache and bypass nothing.
    app.redis_proxy().set_mode(Mode::Forward);
    let hits = counter(&app, "cache_hits_total").await;
    let resumed = cartae_harness::process::wait_until(WITHIN, || async {
        assert_eq!(app.get_item(&token, id).await.status, 200);
        counter(&app, "cache_hits_total").await > hits
    })
    .await;
    assert!(resumed, "the cache was never used again");
    let before = counter(&app, "cache_bypassed_total").await;
    for _ in 0..5 {
        app.get_item(&token, id).await;
    }
    assert_eq!(counter(&app, "cache_bypassed_total").await, before);
}

/// B's search count and stats total, each read twice so the second read is a cache hit.
async fn search_and_stats(b: &TestApp, token: &str) -> (u64, u64) {
    let mut seen = Vec::new();
    for _ in 0..2 {
        let search = b.search(token, "?q=budget").await;
        let stats = b.call(Method::GET, "/api/stats", Some(token), None).await;
        assert_eq!((search.status, stats.status), (200, 200));
        seen.push((
            search.body["count"].as_u64().unwrap(),
            stats.body["total"].as_u64().unwrap(),
        ));
    }
    assert_eq!(seen[0], seen[1], "a cached read differs from the fresh one");
    seen[0]
}

#[tokio::test]
async fn search_and_stats_are_fresh_on_another_replica_after_each_write() {
    let a = spawn_app().await;
    let b = spawn_app_with(AppOptions::default().sharing_with(&a)).await;
    b.wait_ready().await;
    let token = a.new_user().await;
    let first = a.note(&token, "budget one").await;
    assert_eq!(search_and_stats(&b, &token).await, (1, 1));
    let hits = counter(&b, "cache_hits_total").await;

    let second = a.note(&token, "budget two").await;
    assert_eq!(search_and_stats(&b, &token).await, (2, 2), "after a create");
    let first_id = first["id"].as_str().unwrap();
    let renamed = a
        .patch_item(&token, first_id, None, &json!({"title": "renamed"}))
        .await;
    assert_eq!(renamed.status, 200);
    assert_eq!(search_and_stats(&b, &token).await, (1, 2), "after a patch");
    let path = format!("/api/items/{}", second["id"].as_str().unwrap());
    let deleted = a.call(Method::DELETE, &path, Some(&token), None).await;
    assert_eq!(deleted.status, 204);
    assert_eq!(search_and_stats(&b, &token).await, (0, 1), "after a delete");
    let upserted = a
        .upsert(
            &token,
            &crate::support::api_client::sourced("drive", "f1", "budget three"),
        )
        .await;
    assert_eq!(upserted.status, 201);
    assert_eq!(
        search_and_stats(&b, &token).await,
        (1, 2),
        "after an upsert"
    );
    assert!(
        counter(&b, "cache_hits_total").await >= hits + 8.0,
        "B really served search and stats from the cache"
    );
}

#[tokio::test]
async fn if_match_star_matches_any_version_of_an_existing_item() {
    let app = spawn_app().await;
    let token = app.new_user().await;
    let item = app.note(&token, "starred").await;
    let id = item["id"].as_str().unwrap();
    for version in 2..=3 {
        let patched = app
            .patch_item(
                &token,
                id,
                Some("*"),
                &json!({"title": format!("v{version}")}),
            )
            .await;
        assert_eq!(patched.status, 200, "{}", patched.body);
        assert_eq!(patched.body["version"], version);
    }
    let missing = format!("/api/items/{}", uuid::Uuid::new_v4());
    let request = app.request(Method::DELETE, &missing, Some(&token));
    assert_eq!(answer(request.header("If-Match", "*")).await.status, 404);
    let path = format!("/api/items/{id}");
    let request = app.request(Method::DELETE, &path, Some(&token));
    assert_eq!(answer(request.header("If-Match", "*")).await.status, 204);
    assert_eq!(app.get_item(&token, id).await.status, 404);
}

/// Moves a key's creation back by `hours`, as if it had been stored that long ago.
async fn age_key(app: &TestApp, key: &str, hours: i32) {
    let aged = sqlx::query(
        "UPDATE idempotency_keys SET created_at = now() - make_interval(hours => $2)
         WHERE key = $1",
    )
    .bind(key)
    .bind(hours)
    .execute(&app.state.db.pool)
    .await
    .unwrap();
    assert_eq!(aged.rows_affected(), 1, "{key}");
}

async fn stored_keys(app: &TestApp) -> Vec<String> {
    sqlx::query_scalar("SELECT key FROM idempotency_keys ORDER BY key")
        .fetch_all(&app.state.db.pool)
        .await
        .unwrap()
}

async fn purges_run(app: &TestApp) -> f64 {
    metric_value(
        &app.metrics().await,
        "database_latency_seconds_count",
        &[("query_type", "idempotency_purge")],
    )
}

#[tokio::test]
async fn a_key_older_than_its_ttl_is_not_replayed_even_before_the_purge() {
    let app = spawn_app_with(AppOptions::default().env("IDEMPOTENCY_KEY_TTL_HOURS", "2")).await;
    let token = app.new_user().await;
    // The start-up purge is over: the next is ten minutes away, past this test's end.
    assert!(
        cartae_harness::process::wait_until(WITHIN, || async { purges_run(&app).await >= 1.0 })
            .await
    );
    let body = json!({"type": "note", "title": "keyed"});
    let mut first = Vec::new();
    for key in ["expired", "live"] {
        let created = app.post_keyed(Some(&token), "/api/items", key, &body).await;
        assert_eq!(created.status, 201);
        first.push(created.body["id"].clone());
    }
    age_key(&app, "expired", 3).await;
    age_key(&app, "live", 1).await;
    assert_eq!(
        stored_keys(&app).await,
        ["expired", "live"],
        "not purged yet"
    );

    let again = app
        .post_keyed(Some(&token), "/api/items", "expired", &body)
        .await;
    assert_eq!(again.status, 201, "{}", again.body);
    assert_eq!(again.header("idempotent-replayed"), None);
    assert_ne!(
        again.body["id"], first[0],
        "a new write, not the first response"
    );
    // The retry stored its own response: it replays from now on.
    let replay = app
        .post_keyed(Some(&token), "/api/items", "expired", &body)
        .await;
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(replay.body["id"], again.body["id"]);
    let live = app
        .post_keyed(Some(&token), "/api/items", "live", &body)
        .await;
    assert_eq!(live.header("idempotent-replayed"), Some("true"));
    assert_eq!(live.body["id"], first[1]);
}

#[tokio::test]
async fn the_purge_task_deletes_keys_older_than_idempotency_key_ttl_hours() {
    let a = spawn_app().await;
    let token = a.new_user().await;
    let body = json!({"type": "note", "title": "keyed"});
    for key in ["stale", "recent"] {
        let created = a.post_keyed(Some(&token), "/api/items", key, &body).await;
        assert_eq!(created.status, 201);
    }
    age_key(&a, "stale", 2).await;
    assert_eq!(stored_keys(&a).await, ["recent", "stale"]);

    // A replica that keeps keys for one hour purges once started, then every 10 minutes.
    let b = spawn_app_with(
        AppOptions::default()
            .sharing_with(&a)
            .env("IDEMPOTENCY_KEY_TTL_HOURS", "1"),
    )
    .await;
    let purged = cartae_harness::process::wait_until(WITHIN, || async {
        stored_keys(&b).await == ["recent"]
    })
    .await;
    assert!(purged, "left: {:?}", stored_keys(&b).await);
}
