//! Embedded migrations under an advisory lock: replicas starting together do not race.

use std::collections::HashMap;

use futures::future::join_all;
use sqlx::Row;

use crate::helpers::{base_env, pg_url, spawn_app_with, AppOptions, TestDatabase, PG_ADDR};
use crate::support::process::run_to_end;

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
