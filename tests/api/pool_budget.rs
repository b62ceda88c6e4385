//! The pool budget check at start: a replica warns when `REPLICAS_MAX` replicas' pools
//! cannot fit in PostgreSQL's `max_connections`, and says that it fits otherwise.

use std::collections::HashMap;
use std::time::Duration;

use cartae_harness::database::{pg_url, TestDatabase, PG_ADDR};
use cartae_harness::process::wait_until;

use crate::helpers::base_env;
use crate::support::process::Replica;

/// The replica's logs once it has checked the budget, with `REPLICAS_MAX` as given.
async fn budget_log(replicas_max: &str) -> String {
    let db = TestDatabase::create().await.unwrap();
    let mut env: HashMap<String, String> =
        base_env(&pg_url(PG_ADDR, &db.name), "redis://127.0.0.1:6379");
    env.insert("POSTGRES_POOL_MAX".into(), "10".into());
    env.insert("REPLICAS_MAX".into(), replicas_max.into());
    env.insert("LOG_LEVEL".into(), "info".into());
    let replica = Replica::start(env).await;
    let checked = wait_until(Duration::from_secs(20), || async {
        replica.logs().contains("pool budget")
    })
    .await;
    let logs = replica.logs();
    assert!(checked, "no pool budget line; logs:\n{logs}");
    logs.lines()
        .filter(|l| l.contains("pool budget"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn a_pool_budget_past_max_connections_is_a_warning() {
    // 100 000 replicas x 12 connections fit in no PostgreSQL.
    let line = budget_log("100000").await;
    assert!(
        line.contains("WARN") && line.contains("exceeds") && line.contains("100000 replica(s)"),
        "{line}"
    );
}

#[tokio::test]
async fn a_pool_budget_that_fits_is_said_once_at_info() {
    let line = budget_log("1").await;
    assert!(line.contains("INFO") && line.contains("fits"), "{line}");
    assert_eq!(line.lines().count(), 1, "{line}");
}
