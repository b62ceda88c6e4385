//! Overload and brownouts: a busy replica stays in the pool, refuses what it cannot serve
//! fast with a retryable 503, and never answers 500 for a transient database error.
//!
//! To make requests hold every pooled connection, a test takes an exclusive lock on
//! `items` from its own connection: every request that reads items then waits inside
//! PostgreSQL, holding its connection, until the lock is released.

use std::time::{Duration, Instant};

use futures::future::join_all;
use serde_json::Value;
use sqlx::{Connection, PgConnection};

use crate::helpers::{metric_value, pg_url, spawn_app_with, AppOptions, TestApp, PG_ADDR};
use crate::support::api_client::{sourced, Answer, PASSWORD};
use cartae_harness::process::wait_until;

async fn connect(app: &TestApp) -> PgConnection {
    PgConnection::connect(&pg_url(PG_ADDR, &app.database_name))
        .await
        .expect("test connection")
}

/// Holds `ACCESS EXCLUSIVE` on `items` until the returned transaction is dropped.
async fn lock_items(conn: &mut PgConnection) -> sqlx::Transaction<'_, sqlx::Postgres> {
    let mut tx = conn.begin().await.expect("begin");
    sqlx::query("LOCK TABLE items IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await
        .expect("lock");
    tx
}

/// Sessions of the app's request pool waiting on the lock.
async fn blocked_queries(conn: &mut PgConnection, database: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = $1 AND wait_event_type = 'Lock'
           AND application_name = 'cartae-database-api'",
    )
    .bind(database)
    .fetch_one(conn)
    .await
    .expect("pg_stat_activity")
}

/// Polls until the number of the app's queries waiting on the lock satisfies `want`.
async fn until_blocked(app: &TestApp, want: impl Fn(i64) -> bool) -> bool {
    let mut conn = connect(app).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if want(blocked_queries(&mut conn, &app.database_name).await) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

type Stuck = tokio::task::JoinHandle<Vec<reqwest::Result<reqwest::Response>>>;

/// Sends `n` list requests at once in the background: with `items` locked, each waits
/// inside PostgreSQL (or for a connection, or in the admission queue).
fn stuck_lists(app: &TestApp, token: &str, n: usize) -> Stuck {
    let (client, url, token) = (app.client.clone(), app.url("/api/items"), token.to_owned());
    tokio::spawn(async move {
        join_all((0..n).map(|_| client.get(&url).bearer_auth(&token).send())).await
    })
}

/// Once the lock is released, every stuck request is served.
async fn all_served(stuck: Stuck) {
    for response in stuck.await.expect("stuck requests") {
        assert_eq!(response.expect("answered").status(), 200);
    }
}

fn is_retryable_503(answer: &Answer) -> bool {
    answer.status == 503
        && answer.header("retry-after").is_some()
        && answer.body["error"].is_string()
}

#[tokio::test]
async fn readiness_holds_while_requests_hold_every_pooled_connection() {
    // Requests beyond the two connections wait for one all along (the default 1 s acquire
    // timeout would answer them 503 while the test watches several rounds).
    let app = spawn_app_with(
        AppOptions::default()
            .env("POSTGRES_POOL_MAX", "2")
            .env("POSTGRES_ACQUIRE_TIMEOUT_MS", "20000"),
    )
    .await;
    app.wait_ready().await;
    let token = app.new_user().await;
    let mut locker = connect(&app).await;
    let lock = lock_items(&mut locker).await;
    let stuck = stuck_lists(&app, &token, 6);
    let saturated = until_blocked(&app, |n| n >= 2).await;
    assert!(saturated, "requests never held both pooled connections");

    // Several check rounds (200 ms each) with the pool exhausted: the database check has
    // its own connection, so it neither waits nor fails.
    let (_, first) = app.get_json("/health").await;
    let mut rounds_seen = std::collections::HashSet::new();
    while rounds_seen.len() < 5 {
        let (status, body) = app.get_json("/ready").await;
        assert_eq!(status, 200, "a busy pool made the replica unready: {body}");
        rounds_seen.insert(body["checkedAt"].as_str().unwrap_or_default().to_owned());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, health) = app.get_json("/health").await;
    assert_eq!(health["checks"]["database"]["status"], "ok", "{health}");
    assert_ne!(first["checkedAt"], health["checkedAt"]);

    lock.rollback().await.expect("release the lock");
    all_served(stuck).await;
}

#[tokio::test]
async fn beyond_the_admission_limit_requests_get_an_immediate_retryable_503() {
    let app = spawn_app_with(
        AppOptions::default()
            .env("MAX_IN_FLIGHT_REQUESTS", "2")
            .env("MAX_QUEUED_REQUESTS", "1")
            .env("QUEUE_TIMEOUT_MS", "60000"),
    )
    .await;
    app.wait_ready().await;
    let token = app.new_user().await;
    let mut locker = connect(&app).await;
    let lock = lock_items(&mut locker).await;
    // Two in flight (stuck on the lock), one queued behind them.
    let stuck = stuck_lists(&app, &token, 3);
    let full = until_blocked(&app, |n| n >= 2).await;
    assert!(full, "the first requests never reached PostgreSQL");
    let queued = wait_until(Duration::from_secs(10), || async {
        app.state.admission.queued() == 1
    });
    assert!(queued.await, "the third request never queued");

    let refused = app.list_items(&token, "").await;
    assert!(
        is_retryable_503(&refused),
        "{} {}",
        refused.status,
        refused.body
    );
    // Probes are never shed.
    for probe in ["/live", "/ready", "/health"] {
        assert_eq!(app.get(probe).await.status(), 200, "{probe}");
    }
    assert!(app.refused("queue_full").await >= 1.0);
    // Shed before routing, yet in the request counter that error-rate alerts read.
    let shed = metric_value(
        &app.metrics().await,
        "lb_requests_total",
        &[("path", "shed"), ("status", "503")],
    );
    assert!(shed >= 1.0, "shed requests missing from lb_requests_total");

    lock.rollback().await.expect("release the lock");
    all_served(stuck).await;
    assert_eq!(app.list_items(&token, "").await.status, 200);
}

#[tokio::test]
async fn a_request_past_its_deadline_gets_503_and_postgresql_cancels_its_query() {
    let app = spawn_app_with(
        AppOptions::default()
            .env("REQUEST_TIMEOUT_MS", "700")
            .env("POSTGRES_ACQUIRE_TIMEOUT_MS", "500"),
    )
    .await;
    app.wait_ready().await;
    let token = app.new_user().await;
    let mut locker = connect(&app).await;
    let lock = lock_items(&mut locker).await;
    let answer = app.list_items(&token, "").await;
    assert!(
        is_retryable_503(&answer),
        "{} {}",
        answer.status,
        answer.body
    );
    assert_eq!(
        metric_value(
            &app.metrics().await,
            "overload_rejections_total",
            &[("resource", "requests"), ("reason", "deadline")]
        ),
        1.0
    );
    // statement_timeout (just past the deadline) ended the query inside PostgreSQL too: nothing
    // of the app still waits on the lock.
    let cancelled = until_blocked(&app, |n| n == 0).await;
    assert!(cancelled, "the query outlived its request");
    assert_eq!(app.get("/ready").await.status(), 200);
    lock.rollback().await.expect("release the lock");
    assert_eq!(app.list_items(&token, "").await.status, 200);
}

#[tokio::test]
async fn a_login_storm_is_bounded_by_the_hashing_bulkhead() {
    let app = spawn_app_with(
        AppOptions::default()
            // Costly enough that concurrent logins really overlap.
            .env("PASSWORD_HASH_MEMORY_KIB", "32768")
            .env("PASSWORD_HASH_ITERATIONS", "3")
            .env("PASSWORD_HASH_CONCURRENCY", "1")
            .env("PASSWORD_HASH_QUEUE", "2"),
    )
    .await;
    app.wait_ready().await;
    let email = crate::support::api_client::unique_email();
    assert_eq!(app.register(&email, PASSWORD).await.status, 201);

    let app = &app;
    let logins = join_all((0..24).map(|i| {
        let email = if i % 2 == 0 {
            email.clone()
        } else {
            format!("nobody-{i}@example.com")
        };
        async move { app.login(&email, PASSWORD).await }
    }))
    .await;
    let mut by_status = std::collections::BTreeMap::new();
    for answer in &logins {
        *by_status.entry(answer.status).or_insert(0) += 1;
        assert!(
            matches!(answer.status, 200 | 401) || is_retryable_503(answer),
            "{} {}",
            answer.status,
            answer.body
        );
    }
    assert!(
        by_status.get(&503).copied().unwrap_or(0) > 0,
        "{by_status:?}"
    );
    assert!(
        by_status.get(&200).copied().unwrap_or(0) > 0,
        "{by_status:?}"
    );
    assert!(
        metric_value(
            &app.metrics().await,
            "overload_rejections_total",
            &[("resource", "password_hashing"), ("reason", "queue_full")]
        ) > 0.0
    );
    // The rest of the API never waited on the hashes.
    assert_eq!(app.get("/ready").await.status(), 200);
}

#[tokio::test]
async fn batches_touching_the_same_sources_in_opposite_orders_never_deadlock() {
    let app = spawn_app_with(AppOptions::default()).await;
    app.wait_ready().await;
    let token = app.new_user().await;
    let forward: Vec<Value> = (0..40)
        .map(|i| sourced("drive", &format!("shared-{i:02}"), &format!("v{i}")))
        .collect();
    let backward: Vec<Value> = forward.iter().rev().cloned().collect();
    for round in 0..8 {
        let answers = join_all([
            app.batch(&token, forward.clone()),
            app.batch(&token, backward.clone()),
            app.batch(&token, forward.clone()),
            app.batch(&token, backward.clone()),
        ])
        .await;
        for answer in answers {
            assert_eq!(answer.status, 200, "round {round}: {}", answer.body);
        }
    }
}

#[tokio::test]
async fn a_batch_naming_one_source_twice_is_refused_with_both_paths() {
    let app = spawn_app_with(AppOptions::default()).await;
    app.wait_ready().await;
    let token = app.new_user().await;
    let answer = app
        .batch(
            &token,
            vec![
                sourced("drive", "a", "first"),
                sourced("drive", "b", "other"),
                sourced("drive", "a", "again"),
            ],
        )
        .await;
    assert_eq!(answer.status, 422, "{}", answer.body);
    assert_eq!(answer.error_paths(), vec!["$.items[2].source"]);
    let message = answer.body["details"][0]["message"].as_str().unwrap();
    assert!(message.contains("$.items[0].source"), "{message}");
}

#[tokio::test]
async fn a_dependency_fails_its_check_only_after_consecutive_failed_rounds() {
    let app = spawn_app_with(
        AppOptions::default()
            .proxy_postgres()
            .env("HEALTH_CHECK_INTERVAL_MS", "300")
            .env("HEALTH_CHECK_TIMEOUT_MS", "150")
            .env("HEALTH_CHECK_FAILURE_THRESHOLD", "3"),
    )
    .await;
    app.wait_ready().await;
    app.pg_proxy().set_mode(crate::support::proxy::Mode::Hang);
    for failed in 1..=2 {
        let want = format!("failed {failed} of 3 rounds");
        let body = app
            .wait_for("/health", Duration::from_secs(10), |_, b| {
                b["checks"]["database"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(&want))
            })
            .await;
        assert_eq!(body["checks"]["database"]["status"], "degraded", "{body}");
        let (status, ready) = app.get_json("/ready").await;
        assert_eq!(status, 200, "{ready}");
    }
    let body = app
        .wait_for("/health", Duration::from_secs(10), |_, b| {
            b["checks"]["database"]["status"] == "failed"
        })
        .await;
    assert!(body["checks"]["database"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("within 150 ms")));
    assert_eq!(app.get("/ready").await.status(), 503);
    // One good round is enough to come back.
    app.pg_proxy()
        .set_mode(crate::support::proxy::Mode::Forward);
    app.wait_ready().await;
}

#[tokio::test]
async fn transient_postgresql_errors_are_classified_retryable() {
    let app = spawn_app_with(AppOptions::default()).await;
    app.wait_ready().await;
    let url = pg_url(PG_ADDR, &app.database_name);
    let mut admin = PgConnection::connect(&url).await.unwrap();
    sqlx::query("CREATE TABLE deadlock_probe (id int PRIMARY KEY)")
        .execute(&mut admin)
        .await
        .unwrap();
    sqlx::query("INSERT INTO deadlock_probe VALUES (1), (2)")
        .execute(&mut admin)
        .await
        .unwrap();
    // A real deadlock: two transactions lock rows 1 and 2 in opposite orders.
    let mut a = PgConnection::connect(&url).await.unwrap();
    let mut b = PgConnection::connect(&url).await.unwrap();
    let mut ta = a.begin().await.unwrap();
    let mut tb = b.begin().await.unwrap();
    let lock = "UPDATE deadlock_probe SET id = id WHERE id = $1";
    sqlx::query(lock).bind(1).execute(&mut *ta).await.unwrap();
    sqlx::query(lock).bind(2).execute(&mut *tb).await.unwrap();
    let (ra, rb) = tokio::join!(
        sqlx::query(lock).bind(2).execute(&mut *ta),
        sqlx::query(lock).bind(1).execute(&mut *tb)
    );
    let victim = ra
        .err()
        .or(rb.err())
        .expect("PostgreSQL broke the deadlock");
    assert!(cartae_database_api::db::is_transient(&victim), "{victim:?}");
    // Dropping a transaction only queues its rollback: release the survivor's locks now.
    let _ = ta.rollback().await;
    let _ = tb.rollback().await;

    // The request deadline, as PostgreSQL enforces it (statement_timeout): 57014.
    sqlx::query("SET statement_timeout = 50")
        .execute(&mut admin)
        .await
        .unwrap();
    let cancelled = sqlx::query("SELECT pg_sleep(5)")
        .execute(&mut admin)
        .await
        .expect_err("statement_timeout cancels it");
    assert!(
        cartae_database_api::db::is_transient(&cancelled),
        "{cancelled:?}"
    );
    sqlx::query("SET statement_timeout = 0")
        .execute(&mut admin)
        .await
        .unwrap();

    // A constraint violation is the client's fault, never retryable.
    let duplicate = sqlx::query("INSERT INTO deadlock_probe VALUES (1)")
        .execute(&mut admin)
        .await
        .expect_err("duplicate key");
    assert!(!cartae_database_api::db::is_transient(&duplicate));
}

impl TestApp {
    /// `overload_rejections_total` of the data API for one reason.
    async fn refused(&self, reason: &str) -> f64 {
        metric_value(
            &self.metrics().await,
            "overload_rejections_total",
            &[("resource", "requests"), ("reason", reason)],
        )
    }
}

#[tokio::test]
async fn one_users_writes_cannot_take_every_pooled_connection() {
    // Four connections, two of them at most for one user's writes.
    let app = spawn_app_with(
        AppOptions::default()
            .env("POSTGRES_POOL_MAX", "4")
            .env("MAX_WRITES_PER_USER", "2"),
    )
    .await;
    app.wait_ready().await;
    let (writer, reader) = (app.new_user().await, app.new_user().await);
    let item = app.note(&writer, "contended").await;
    let id = item["id"].as_str().unwrap().to_owned();
    // A row lock: the writer's updates of that item wait inside PostgreSQL, each holding
    // its connection, while reads of other rows go on.
    let mut locker = connect(&app).await;
    let mut lock = locker.begin().await.expect("begin");
    sqlx::query("SELECT 1 FROM items WHERE id = $1::uuid FOR UPDATE")
        .bind(&id)
        .execute(&mut *lock)
        .await
        .expect("row lock");
    let (client, url) = (app.client.clone(), app.url(&format!("/api/items/{id}")));
    let token = writer.clone();
    let writes = tokio::spawn(async move {
        join_all((0..6).map(|i| {
            client
                .patch(&url)
                .bearer_auth(&token)
                .json(&serde_json::json!({"title": format!("write {i}")}))
                .send()
        }))
        .await
    });
    assert!(
        until_blocked(&app, |n| n >= 2).await,
        "the writes never blocked"
    );
    // Long enough for more of them to take connections, were they allowed to.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let list = app.list_items(&reader, "").await;
    assert_eq!(list.status, 200, "{}", list.body);
    let mut conn = connect(&app).await;
    assert_eq!(blocked_queries(&mut conn, &app.database_name).await, 2);

    lock.rollback().await.expect("release the lock");
    for response in writes.await.expect("writes") {
        assert_eq!(response.expect("answered").status(), 200);
    }
}
