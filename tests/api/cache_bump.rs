//! `cartae-database-api cache-bump`: after the database is restored to an earlier time,
//! every cached entry may be newer than the data; one command makes all of them stale.

use std::collections::HashMap;

use sqlx::{Connection, PgConnection};

use crate::helpers::{base_env, pg_url, spawn_app, PG_ADDR, REDIS_ADDR};
use crate::support::process::run_to_end;

async fn cache_bump(env: HashMap<String, String>) -> (std::process::ExitStatus, String) {
    tokio::task::spawn_blocking(move || run_to_end(&["cache-bump"], &env))
        .await
        .unwrap()
}

#[tokio::test]
async fn cache_bump_makes_entries_newer_than_a_restored_database_stale() {
    let app = spawn_app().await;
    let token = app.new_user().await;
    let item = app.note(&token, "written after the restore point").await;
    let id = item["id"].as_str().unwrap();
    app.get_item(&token, id).await;

    // A restore rewrites the row behind the service's back, as PostgreSQL replaying WAL
    // to an earlier time does: no write of the service invalidates anything.
    let url = pg_url(PG_ADDR, &app.database_name);
    let mut conn = PgConnection::connect(&url).await.unwrap();
    sqlx::query("UPDATE items SET title = 'as restored' WHERE id = $1::uuid")
        .bind(id)
        .execute(&mut conn)
        .await
        .unwrap();
    let stale = app.get_item(&token, id).await;
    assert_eq!(
        stale.body["title"], "written after the restore point",
        "the entry is still cached: without a bump, the service serves data the database no longer has"
    );

    let mut env = base_env(&url, &format!("redis://{REDIS_ADDR}"));
    env.insert("CACHE_KEY_PREFIX".to_owned(), app.key_prefix.clone());
    let (status, output) = cache_bump(env).await;
    assert!(status.success(), "{output}");

    let fresh = app.get_item(&token, id).await;
    assert_eq!(fresh.body["title"], "as restored", "{}", fresh.body);
}

#[tokio::test]
async fn cache_bump_without_redis_fails_and_says_so() {
    let mut env = base_env(&pg_url(PG_ADDR, "postgres"), "redis://127.0.0.1:1");
    env.insert("REDIS_TIMEOUT_MS".to_owned(), "200".to_owned());
    let (status, output) = cache_bump(env).await;
    assert_eq!(status.code(), Some(1), "{output}");
    assert!(output.contains("cache-bump failed"), "{output}");
}
