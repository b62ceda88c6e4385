//! Redis through Sentinel: the master is found through the sentinels, a failover is
//! followed without a restart, and bad settings stop the start with one line.
//!
//! Each test runs its own group (master, replica, three sentinels: `support::sentinel`),
//! so a failover here never touches the shared Redis of the other tests.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::{
    base_env, metric_value, pg_url, spawn_app_with, AppOptions, TestApp, PG_ADDR,
};
use crate::support::process::run_to_end;
use crate::support::proxy::{Mode, TcpProxy};
use crate::support::sentinel::{Passwords, SentinelGroup};

/// From the failover (the sentinels agreeing on a new master) to the service using it.
const FOLLOW_WITHIN: Duration = Duration::from_secs(10);

async fn app_on(group_env: Vec<(String, String)>) -> TestApp {
    let mut options = AppOptions::default();
    for (key, value) in &group_env {
        options = options.env(key, value);
    }
    let app = spawn_app_with(options).await;
    app.wait_ready().await;
    app
}

/// An app on `group_env`, a user and one of its items, read until the cache serves it.
async fn app_with_a_cached_item(group_env: Vec<(String, String)>) -> (TestApp, String, String) {
    let app = app_on(group_env).await;
    let token = app.new_user().await;
    let id = app.note(&token, "cached").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    until_a_hit(&app, &token, &id, Duration::from_secs(10)).await;
    (app, token, id)
}

async fn hits(app: &TestApp) -> f64 {
    metric_value(&app.metrics().await, "cache_hits_total", &[])
}

/// The master `/health/detailed` says this replica uses, and its Redis check.
async fn redis_view(app: &TestApp) -> (Option<String>, String) {
    let (_, body) = app.get_json("/health/detailed").await;
    let master = body["topology"]["redis"]["master"]
        .as_str()
        .map(str::to_owned);
    let status = body["checks"]["redis"]["status"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    (master, status)
}

/// Reads `id` until a read is a cache hit, every read answered 200 (the cache fails open);
/// panics after `within`.
async fn until_a_hit(app: &TestApp, token: &str, id: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let before = hits(app).await;
        let read = app.get_item(token, id).await;
        assert_eq!(read.status, 200, "a read failed: {:?}", read.body);
        if hits(app).await > before {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no cache hit within {within:?}; health: {:?}",
            redis_view(app).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_master_is_found_through_the_sentinels_with_both_passwords() {
    let group = SentinelGroup::start(Passwords {
        master: Some("master-secret-pw".into()),
        sentinels: Some("sentinel-secret-pw".into()),
    })
    .await
    .expect("sentinel group starts");
    // REDIS_URL names a closed port: only the sentinels can lead to the master.
    let (app, _, _) = app_with_a_cached_item(group.env()).await;

    let master = group.master().await.unwrap().to_string();
    let (_, body) = app.get_json("/health/detailed").await;
    assert_eq!(body["checks"]["redis"]["status"], "ok", "{body}");
    let topology = &body["topology"]["redis"];
    assert_eq!(topology["master"], Value::from(master), "{body}");
    assert_eq!(topology["masterName"], "cartae");
    assert_eq!(topology["sentinels"].as_array().map(Vec::len), Some(3));
    assert_eq!(
        metric_value(&app.metrics().await, "cache_errors_total", &[]),
        0.0
    );
}

#[tokio::test]
async fn a_failover_is_followed_without_a_restart() {
    let group = SentinelGroup::start(Passwords::default())
        .await
        .expect("sentinel group starts");
    let (app, token, id) = app_with_a_cached_item(group.env()).await;
    let old = group.master().await.unwrap();
    assert_eq!(redis_view(&app).await.0, Some(old.to_string()));

    group.failover().await.expect("SENTINEL FAILOVER accepted");
    let new = group
        .wait_new_master(old, Duration::from_secs(20))
        .await
        .expect("Sentinel promotes the replica");

    // The service is not told: it notices (its connection cut, READONLY, or its ROLE
    // check) and asks the sentinels again.
    until_a_hit(&app, &token, &id, FOLLOW_WITHIN).await;
    let followed = cartae_harness::process::wait_until(FOLLOW_WITHIN, || async {
        redis_view(&app).await == (Some(new.to_string()), "ok".to_owned())
    })
    .await;
    assert!(
        followed,
        "still {:?}, new master {new}",
        redis_view(&app).await
    );
    // A write after the failover lands on the new master: its invalidation works.
    let patched = app
        .patch_item(&token, &id, None, &serde_json::json!({"title": "after"}))
        .await;
    assert_eq!(patched.status, 200, "{:?}", patched.body);
    assert_eq!(app.get_item(&token, &id).await.body["title"], "after");
}

#[tokio::test]
async fn a_sentinel_that_hangs_does_not_hold_the_others_up() {
    let group = SentinelGroup::start(Passwords::default())
        .await
        .expect("sentinel group starts");
    let sentinels = group.sentinel_addrs();
    // The first sentinel listed accepts connections and never answers (a partition).
    let hung = TcpProxy::start(sentinels[0], false).await;
    hung.set_mode(Mode::Hang);
    let list = format!("{},{},{}", hung.addr, sentinels[1], sentinels[2]);
    let env: Vec<(String, String)> = group
        .env()
        .into_iter()
        .map(|(k, v)| match k.as_str() {
            "REDIS_SENTINELS" => (k, list.clone()),
            _ => (k, v),
        })
        .collect();
    let (app, _, _) = app_with_a_cached_item(env).await;
    assert_eq!(
        redis_view(&app).await,
        (
            Some(group.master().await.unwrap().to_string()),
            "ok".to_owned()
        )
    );
}

#[test]
fn bad_sentinel_settings_print_one_line_naming_the_variable() {
    let sentinels = ("REDIS_SENTINELS", "127.0.0.1:26379,127.0.0.1:26380");
    let master = ("REDIS_SENTINEL_MASTER", "cartae");
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("REDIS_SENTINELS", "127.0.0.1"), master],
            "REDIS_SENTINELS",
        ),
        (
            &[
                ("REDIS_SENTINELS", "127.0.0.1:26379,,127.0.0.1:26380"),
                master,
            ],
            "REDIS_SENTINELS",
        ),
        (
            &[("REDIS_SENTINELS", "127.0.0.1:0"), master],
            "REDIS_SENTINELS",
        ),
        (&[sentinels], "REDIS_SENTINEL_MASTER"),
        (
            &[sentinels, ("REDIS_SENTINEL_MASTER", "two words")],
            "REDIS_SENTINEL_MASTER",
        ),
        (&[master], "REDIS_SENTINEL_MASTER"),
        (
            &[("REDIS_SENTINEL_PASSWORD", "pw")],
            "REDIS_SENTINEL_PASSWORD",
        ),
        (
            &[
                sentinels,
                master,
                ("REDIS_URL", "rediss://127.0.0.1:6380/0"),
            ],
            "REDIS_URL",
        ),
        (
            &[
                sentinels,
                master,
                ("REDIS_URL", "redis+unix:///run/redis.sock"),
            ],
            "REDIS_URL",
        ),
    ];
    for (pairs, var) in cases {
        let mut env: HashMap<String, String> =
            base_env(&pg_url(PG_ADDR, "postgres"), "redis://127.0.0.1:6379");
        env.extend(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let (status, output) = run_to_end(&["serve"], &env);
        assert_eq!(status.code(), Some(78), "{pairs:?}: {output}");
        let lines: Vec<&str> = output.lines().collect();
        assert_eq!(lines.len(), 1, "{pairs:?}: expected one line: {output}");
        assert!(
            lines[0].contains(&format!("{var}:")),
            "{pairs:?}: does not name {var}: {output}"
        );
    }
}
