//! Embedded migrations under an advisory lock: replicas starting together do not race.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use cartae_database_api::config::Settings;
use cartae_database_api::db::{migration_lock_key, Database};
use cartae_database_api::metrics::Metrics;
use cartae_harness::database::{
    advisory_locks, apply_next_release_migration, NEXT_RELEASE_VERSION,
};
use cartae_harness::process::wait_until;
use futures::future::join_all;
use serde_json::{json, Value};
use sqlx::migrate::Migrate;
use sqlx::{Connection, Executor, Row};

use crate::helpers::{base_env, pg_url, spawn_app_with, AppOptions, TestDatabase, PG_ADDR};
use crate::support::api_client::{answer, sign_up};
use crate::support::process::{run_to_end, Replica};

#[tokio::test]
async fn three_replicas_starting_at_once_apply_each_migration_once() {
    let db = TestDatabase::create().await.unwrap();
    let apps = join_all((0..3).map(|i| {
        let options = AppOptions {
            database: Some(db.name.clone()),
            ..AppOptions::default()
        }
        .env("INSTANCE_ID", &format!("api-{i}"));
        spawn_app_with(options)
    }))
    .await;
    join_all(apps.iter().map(|a| a.wait_ready())).await;

    let mut conn = db.connect().await.unwrap();
    let rows = sqlx::query("SELECT version, success FROM _sqlx_migrations ORDER BY version")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    let embedded = cartae_database_api::db::MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .count();
    assert_eq!(rows.len(), embedded, "each migration applied exactly once");
    assert!(rows.iter().all(|r| r.get::<bool, _>("success")));
    for app in &apps {
        let metrics = app.metrics().await;
        assert_eq!(
            crate::helpers::metric_value(&metrics, "db_query_errors_total", &[]),
            0.0,
            "{metrics}"
        );
    }
}

#[tokio::test]
async fn the_migrate_subcommand_applies_migrations_and_exits() {
    let db = TestDatabase::create().await.unwrap();
    let env: HashMap<String, String> =
        base_env(&pg_url(PG_ADDR, &db.name), "redis://127.0.0.1:6379");
    let (status, output) = run_to_end(&["migrate"], &env);
    assert!(status.success(), "{output}");
    let mut conn = db.connect().await.unwrap();
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(applied >= 1);
    // Idempotent: a second run finds nothing to do.
    let (status, output) = run_to_end(&["migrate"], &env);
    assert!(status.success(), "{output}");
}

/// At info: the replica's `listening` line, and what the tests read in its logs.
fn env_for(db: &TestDatabase) -> HashMap<String, String> {
    let mut env = base_env(&pg_url(PG_ADDR, &db.name), "redis://127.0.0.1:6379");
    env.insert("LOG_LEVEL".into(), "info".into());
    env
}

/// A database migrated by this release (the `migrate` step), then by release N+1.
async fn migrated_by_the_next_release() -> TestDatabase {
    let db = TestDatabase::create().await.unwrap();
    let (status, output) = run_to_end(&["migrate"], &env_for(&db));
    assert!(status.success(), "{output}");
    apply_next_release_migration(&mut db.connect().await.unwrap())
        .await
        .unwrap();
    db
}

/// A database where this release's second migration cannot apply: a `users` table that
/// is not ours already exists, as after a hand edit.
async fn with_a_migration_that_fails() -> TestDatabase {
    let db = TestDatabase::create().await.unwrap();
    let mut conn = db.connect().await.unwrap();
    conn.execute("CREATE TABLE users (id int)").await.unwrap();
    db
}

/// A session holding the migration lock, as a long migration elsewhere would. Taken by
/// sqlx's own migrator locking, as a release before this one takes it: both must exclude
/// each other.
async fn hold_migration_lock(db: &TestDatabase) -> sqlx::PgConnection {
    let mut holder = db.connect().await.unwrap();
    holder.lock().await.unwrap();
    let held: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted \
         AND ((classid::bigint << 32) | objid::bigint) = $1)",
    )
    .bind(migration_lock_key(&db.name))
    .fetch_one(&mut holder)
    .await
    .unwrap();
    assert!(held, "sqlx's lock is not the key this binary waits on");
    holder
}

/// `/startup`'s JSON, or Null while the port does not answer.
async fn startup_answer(client: &reqwest::Client, replica: &Replica) -> Value {
    match client.get(replica.url("/startup")).send().await {
        Ok(response) => response.json().await.unwrap_or(Value::Null),
        Err(_) => Value::Null,
    }
}

/// Waits until `/startup` and `/ready` both give `reason`.
async fn wait_for_reason(client: &reqwest::Client, replica: &Replica, reason: &str) {
    let says_so = wait_until(Duration::from_secs(20), || async {
        let startup = startup_answer(client, replica).await;
        let ready: Value = match client.get(replica.url("/ready")).send().await {
            Ok(response) => response.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        [&startup, &ready].iter().all(|answer| {
            answer["reasons"]
                .as_array()
                .is_some_and(|r| r.contains(&json!(reason)))
        })
    })
    .await;
    assert!(says_so, "no reason {reason:?}; logs:\n{}", replica.logs());
}

#[tokio::test]
async fn an_older_release_starts_ready_and_serves_on_a_schema_a_newer_release_migrated() {
    let db = migrated_by_the_next_release().await;
    let replica = Replica::start(env_for(&db)).await;
    let client = reqwest::Client::new();
    replica.wait_ready(&client, Duration::from_secs(20)).await;
    let base = replica.url("");
    let token = sign_up(&client, &base).await;
    let created = answer(
        client
            .post(format!("{base}/api/items"))
            .bearer_auth(&token)
            .json(&json!({"type": "note", "title": "written by release N"})),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let listed = answer(client.get(format!("{base}/api/items")).bearer_auth(&token)).await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    let logs = replica.logs();
    let mentions = logs
        .lines()
        .filter(|l| l.contains(&NEXT_RELEASE_VERSION.to_string()))
        .count();
    assert_eq!(mentions, 1, "the unknown migration is logged once:\n{logs}");
}

#[tokio::test]
async fn a_failed_migration_errs_for_good_and_leaves_no_lock_held() {
    let db = with_a_migration_that_fails().await;
    let settings = Settings::from_source(&env_for(&db)).unwrap();
    let metrics = std::sync::Arc::new(Metrics::new("migrations-test"));
    let database = Database::connect_lazy(&settings.database, Duration::from_secs(1), metrics);
    let failed = database
        .migrate(Duration::from_secs(5), |_| {})
        .await
        .expect_err("the second migration cannot apply");
    assert!(!failed.is_transient(), "{failed}");
    assert!(failed.to_string().contains("20261126000002"), "{failed}");
    // Checked while this process, and its pools, are still alive.
    let mut conn = db.connect().await.unwrap();
    assert_eq!(advisory_locks(&mut conn, &db.name).await.unwrap(), 0);
    database.close().await;
}

#[tokio::test]
async fn a_failed_migration_exits_non_zero_from_migrate_and_from_serve() {
    let db = with_a_migration_that_fails().await;
    let (status, output) = run_to_end(&["migrate"], &env_for(&db));
    assert_eq!(status.code(), Some(1), "{output}");
    assert!(output.contains("migrations failed"), "{output}");

    let mut replica = Replica::spawn(env_for(&db));
    let status = replica.wait_exit(Duration::from_secs(20));
    let logs = replica.logs();
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{logs}");
    assert!(
        logs.contains("migrations failed") && logs.contains("20261126000002"),
        "{logs}"
    );
}

#[tokio::test]
async fn a_replica_behind_the_migration_lock_says_so_and_stops_without_a_drain() {
    let db = TestDatabase::create().await.unwrap();
    let holder = hold_migration_lock(&db).await;
    let mut env = env_for(&db);
    env.insert("DRAIN_DELAY_MS".into(), "15000".into());
    let mut replica = Replica::start(env).await;
    let client = reqwest::Client::new();
    wait_for_reason(&client, &replica, "waiting for migration lock").await;

    let signalled = Instant::now();
    replica.signal("TERM");
    let status = replica.wait_exit(Duration::from_secs(10));
    let logs = replica.logs();
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{logs}");
    assert!(
        signalled.elapsed() < Duration::from_secs(3),
        "drained although never ready: {:?}",
        signalled.elapsed()
    );
    assert!(!logs.contains("did not stop in time"), "{logs}");
    holder.close().await.unwrap();
}

#[tokio::test]
async fn the_lock_wait_is_bounded() {
    let db = TestDatabase::create().await.unwrap();
    let _holder = hold_migration_lock(&db).await;
    let mut env = env_for(&db);
    env.insert("MIGRATION_LOCK_TIMEOUT_MS".into(), "1000".into());
    let (status, output) = run_to_end(&["migrate"], &env);
    assert_eq!(status.code(), Some(1), "{output}");
    assert!(output.contains("migration lock"), "{output}");
    let mut replica = Replica::spawn(env);
    let status = replica.wait_exit(Duration::from_secs(20));
    let logs = replica.logs();
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{logs}");
    assert!(logs.contains("migration lock"), "{logs}");
}

#[tokio::test]
async fn a_replica_migrating_says_so() {
    let db = TestDatabase::create().await.unwrap();
    let (status, output) = run_to_end(&["migrate"], &env_for(&db));
    assert!(status.success(), "{output}");
    // Holding the migrations table keeps the replica's migrator inside its run.
    let mut blocker = db.connect().await.unwrap();
    let mut tx = blocker.begin().await.unwrap();
    tx.execute("LOCK TABLE _sqlx_migrations IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let replica = Replica::start(env_for(&db)).await;
    let client = reqwest::Client::new();
    wait_for_reason(&client, &replica, "migrating").await;
    tx.rollback().await.unwrap();
    replica.wait_ready(&client, Duration::from_secs(20)).await;
    let startup = startup_answer(&client, &replica).await;
    assert_eq!(startup["started"], true, "{startup}");
    assert!(startup.get("reason").is_none(), "{startup}");
}

#[tokio::test]
async fn without_migrate_on_start_a_replica_waits_for_the_migration_step() {
    let db = TestDatabase::create().await.unwrap();
    let mut env = env_for(&db);
    env.insert("MIGRATE_ON_START".into(), "false".into());
    let replica = Replica::start(env).await;
    let client = reqwest::Client::new();
    wait_for_reason(&client, &replica, "waiting for migrations").await;
    let (status, output) = run_to_end(&["migrate"], &env_for(&db));
    assert!(status.success(), "{output}");
    replica.wait_ready(&client, Duration::from_secs(20)).await;
}
