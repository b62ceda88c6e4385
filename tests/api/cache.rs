//! The Redis cache: hits, invalidation across replicas, and an outage during traffic.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::{metric_value, spawn_app, spawn_app_with, AppOptions, TestApp};
use crate::support::proxy::Mode;

async fn counter(app: &TestApp, name: &str) -> f64 {
    metric_value(&app.metrics().await, name, &[])
}

#[tokio::test]
async fn item_reads_are_served_from_the_cache_until_a_write() {
    let app = spawn_app().await;
    app.wait_ready().await;
    let token = app.new_user().await;
    let item = app.note(&token, "cached").await;
    let id = item["id"].as_str().unwrap();
    app.get_item(&token, id).await;
    let hits = counter(&app, "cache_hits_total").await;
    for _ in 0..5 {
        assert_eq!(app.get_item(&token, id).await.body["version"], 1);
    }
    assert!(counter(&app, "cache_hits_total").await >= hits + 5.0);

    app.patch_item(&token, id, None, &json!({"title": "changed"}))
        .await;
    let read = app.get_item(&token, id).await;
    assert_eq!(read.body["title"], "changed");
    assert_eq!(read.body["version"], 2);
    // The key holds the user: a cached item never answers another user.
    let other = app.new_user().await;
    assert_eq!(app.get_item(&other, id).await.status, 404);
    let text = app.metrics().await;
    assert!(
        metric_value(
            &text,
            "database_latency_seconds_count",
            &[("query_type", "item_get")]
        ) >= 1.0
    );
    assert!(
        metric_value(
            &text,
            "database_latency_seconds_count",
            &[("query_type", "item_update")]
        ) >= 1.0
    );
    assert_eq!(metric_value(&text, "cache_errors_total", &[]), 0.0);
}

#[tokio::test]
async fn writing_one_item_keeps_the_others_cached_and_batches_stale_what_they_update() {
    let app = spawn_app().await;
    app.wait_ready().await;
    let token = app.new_user().await;
    let source = |id: &str| json!({"connector": "drive", "sourceId": id});
    let a = app
        .upsert(
            &token,
            &json!({"type": "file", "title": "a v1", "source": source("a")}),
        )
        .await;
    let b = app.note(&token, "b").await;
    let (a_id, b_id) = (
        a.body["id"].as_str().unwrap().to_owned(),
        b["id"].as_str().unwrap(),
    );
    // Fill both entries.
    app.get_item(&token, &a_id).await;
    app.get_item(&token, b_id).await;

    // A write of another item does not evict b.
    app.note(&token, "unrelated").await;
    let hits = counter(&app, "cache_hits_total").await;
    assert_eq!(app.get_item(&token, b_id).await.body["title"], "b");
    assert_eq!(
        counter(&app, "cache_hits_total").await,
        hits + 1.0,
        "b should still be cached"
    );

    // A batch that updates a makes its cached entry stale at once.
    app.get_item(&token, &a_id).await;
    let batch = app
        .batch(
            &token,
            vec![json!({"type": "file", "title": "a v2", "source": source("a")})],
        )
        .await;
    assert_eq!(batch.body["updated"], 1, "{:?}", batch.body);
    let read = app.get_item(&token, &a_id).await;
    assert_eq!(read.body["title"], "a v2");
    assert_eq!(read.body["version"], 2);
    // So does an upsert.
    app.upsert(
        &token,
        &json!({"type": "file", "title": "a v3", "source": source("a")}),
    )
    .await;
    assert_eq!(app.get_item(&token, &a_id).await.body["title"], "a v3");
}

#[tokio::test]
async fn a_write_on_one_replica_is_never_followed_by_a_stale_read_on_another() {
    let a = spawn_app().await;
    let b = spawn_app_with(AppOptions::default().sharing_with(&a)).await;
    a.wait_ready().await;
    b.wait_ready().await;
    let token = a.new_user().await;
    let item = a.note(&token, "v1").await;
    let id = item["id"].as_str().unwrap();
    for version in 2..=12 {
        // B caches the current version (and its list and search pages)...
        assert_eq!(b.get_item(&token, id).await.body["version"], version - 1);
        assert_eq!(b.get_item(&token, id).await.body["version"], version - 1);
        b.list_items(&token, "").await;
        b.search(&token, "?q=v").await;
        // ...A writes...
        let title = format!("v{version}");
        let patched = a
            .patch_item(&token, id, None, &json!({"title": title}))
            .await;
        assert_eq!(patched.body["version"], version);
        // ...and B's very next reads are fresh.
        let read = b.get_item(&token, id).await;
        assert_eq!(read.body["version"], version, "stale item on replica B");
        let listed = b.list_items(&token, "").await;
        assert_eq!(
            listed.body["items"][0]["title"],
            title.as_str(),
            "stale list on replica B"
        );
    }
    let created = a.note(&token, "brand new").await;
    assert_eq!(
        b.list_items(&token, "").await.body["items"][0]["id"],
        created["id"]
    );
    let deleted = a
        .call(
            reqwest::Method::DELETE,
            &format!("/api/items/{id}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(deleted.status, 204);
    assert_eq!(
        b.get_item(&token, id).await.status,
        404,
        "deleted item served by B"
    );
    assert!(
        counter(&b, "cache_hits_total").await >= 11.0,
        "B really used the cache"
    );
}

#[tokio::test]
async fn a_redis_outage_during_traffic_fails_no_request() {
    let app = spawn_app_with(AppOptions::default().proxy_redis()).await;
    app.wait_ready().await;
    let token = app.new_user().await;
    let ids: Vec<String> = {
        let mut ids = Vec::new();
        for i in 0..3 {
            ids.push(
                app.note(&token, &format!("item {i}")).await["id"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            );
        }
        ids
    };
    let errors_before = counter(&app, "cache_errors_total").await;
    let mut versions = vec![1i64; ids.len()];
    let mut failures = Vec::new();
    for step in 0..150 {
        if step == 40 || step == 100 {
            // Fill the cache just before the outage: the writes during it cannot
            // invalidate these entries, and reads after it must not serve them.
            for (i, id) in ids.iter().enumerate() {
                assert_eq!(app.get_item(&token, id).await.body["version"], versions[i]);
                assert_eq!(app.get_item(&token, id).await.body["version"], versions[i]);
            }
        }
        match step {
            40 => app.redis_proxy().set_mode(Mode::Cut),
            80 => app.redis_proxy().set_mode(Mode::Forward),
            100 => app.redis_proxy().set_mode(Mode::Hang),
            120 => app.redis_proxy().set_mode(Mode::Forward),
            _ => {}
        }
        let i = step % ids.len();
        let read = app.get_item(&token, &ids[i]).await;
        if read.status != 200 || read.body["version"] != versions[i] {
            failures.push(format!("step {step} read: {} {}", read.status, read.body));
        }
        if step % 3 == 0 {
            let write = app
                .patch_item(
                    &token,
                    &ids[i],
                    None,
                    &json!({"content": format!("step {step}")}),
                )
                .await;
            if write.status != 200 {
                failures.push(format!(
                    "step {step} write: {} {}",
                    write.status, write.body
                ));
            }
            versions[i] += 1;
        }
        if step % 10 == 0 {
            let list = app.list_items(&token, "").await;
            if list.status != 200 {
                failures.push(format!("step {step} list: {}", list.status));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "requests failed or were stale: {failures:#?}"
    );
    assert!(
        counter(&app, "cache_errors_total").await > errors_before,
        "the outage was not counted"
    );

    // After the outage the cache is used again.
    let hits = counter(&app, "cache_hits_total").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while counter(&app, "cache_hits_total").await < hits + 3.0 {
        assert!(Instant::now() < deadline, "the cache was never used again");
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(app.get_item(&token, id).await.body["version"], versions[i]);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `app` has nothing left to repair (its start-up epoch bump included).
async fn trusting(app: &TestApp) {
    let trusted = cartae_harness::process::wait_until(Duration::from_secs(10), || {
        std::future::ready(app.state.cache.trust.is_clean())
    })
    .await;
    assert!(trusted, "the replica never trusted Redis");
}

#[tokio::test]
async fn a_redis_hiccup_costs_only_the_entries_it_could_have_made_stale() {
    let a = spawn_app_with(AppOptions::default().proxy_redis()).await;
    let b = spawn_app_with(AppOptions::default().sharing_with(&a)).await;
    b.wait_ready().await;
    let token = a.new_user().await;
    let kept = a.note(&token, "kept").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let changed = a.note(&token, "changed").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    trusting(&a).await;
    trusting(&b).await;
    for id in [&kept, &changed] {
        b.get_item(&token, id).await;
        assert_eq!(b.get_item(&token, id).await.body["version"], 1);
    }

    // On A: a failed read and a failed invalidation, then Redis is back.
    a.redis_proxy().set_mode(Mode::Cut);
    assert_eq!(a.get_item(&token, &kept).await.status, 200);
    let patched = a
        .patch_item(&token, &changed, None, &json!({"title": "v2"}))
        .await;
    assert_eq!(patched.status, 200);
    a.redis_proxy().set_mode(Mode::Forward);
    let back = Instant::now();

    // A repairs on its own, with no request to prompt it: B soon reads the write.
    while b.get_item(&token, &changed).await.body["version"] != 2 {
        assert!(
            back.elapsed() < Duration::from_secs(3),
            "the failed invalidation was never repaired"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And the entry no failed write touched is still cached (B filled it), on both
    // replicas: the hiccup cost the written item's entries, not the cache.
    trusting(&a).await;
    for app in [&b, &a] {
        let (hits, misses) = (
            counter(app, "cache_hits_total").await,
            counter(app, "cache_misses_total").await,
        );
        assert_eq!(app.get_item(&token, &kept).await.body["version"], 1);
        assert_eq!(
            counter(app, "cache_hits_total").await,
            hits + 1.0,
            "the hiccup emptied the cache (misses {} -> {})",
            misses,
            counter(app, "cache_misses_total").await
        );
    }
}

/// Cache lookups run their script by digest (`EVALSHA`). A Redis that lost its scripts (a
/// restart, `SCRIPT FLUSH`) answers `NOSCRIPT`: the lookup loads the script again and
/// still hits, without a failed request or a counted cache error. On a private Redis, so
/// that flushing scripts touches no other test.
#[tokio::test]
async fn a_redis_that_lost_the_lookup_script_is_given_it_again() {
    let dir = crate::support::process::TempDir::new();
    let port = cartae_harness::process::free_port();
    let mut command = std::process::Command::new("redis-server");
    command.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
    command.arg("--port").arg(port.to_string());
    let _redis = cartae_harness::process::ManagedChild::spawn(
        "redis",
        command,
        dir.path().join("redis.log"),
    )
    .unwrap();
    let url = format!("redis://127.0.0.1:{port}");
    let client = redis::Client::open(url.as_str()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut conn = loop {
        match client.get_multiplexed_async_connection().await {
            Ok(conn) => break conn,
            Err(e) => assert!(Instant::now() < deadline, "private redis: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let app = spawn_app_with(AppOptions::default().env("REDIS_URL", &url)).await;
    app.wait_ready().await;
    let token = app.new_user().await;
    let id = app.note(&token, "scripted").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.get_item(&token, &id).await;
    let hits = counter(&app, "cache_hits_total").await;
    assert_eq!(app.get_item(&token, &id).await.status, 200);
    assert_eq!(counter(&app, "cache_hits_total").await, hits + 1.0);

    let () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .unwrap();
    let read = app.get_item(&token, &id).await;
    assert_eq!(
        (read.status, &read.body["title"]),
        (200, &json!("scripted"))
    );
    assert_eq!(
        counter(&app, "cache_hits_total").await,
        hits + 2.0,
        "the lookup after SCRIPT FLUSH still hits"
    );
    assert_eq!(counter(&app, "cache_errors_total").await, 0.0);
}

#[tokio::test]
async fn entries_over_256_kib_are_not_cached() {
    let app = spawn_app().await;
    app.wait_ready().await;
    let token = app.new_user().await;
    // 100,000 three-byte characters: 300,000 bytes of JSON.
    let large = json!({"type": "note", "title": "large", "content": "€".repeat(100_000)});
    let created = app.create_item(&token, &large).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.body["id"].as_str().unwrap();
    let hits = counter(&app, "cache_hits_total").await;
    for _ in 0..3 {
        let read = app.get_item(&token, id).await;
        assert_eq!(read.status, 200);
        assert_eq!(read.body["content"].as_str().unwrap().len(), 300_000);
    }
    assert_eq!(counter(&app, "cache_hits_total").await, hits);

    let small = app.note(&token, "small").await;
    let small = small["id"].as_str().unwrap();
    app.get_item(&token, small).await;
    app.get_item(&token, small).await;
    assert_eq!(counter(&app, "cache_hits_total").await, hits + 1.0);
}
