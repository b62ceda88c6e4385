//! Point-in-time recovery, proven on real engines: [`drill`] writes through three replicas
//! of the release binary on an archiving PostgreSQL ([`ArchivingPostgres`]), notes a time,
//! writes more, restores to the time into a fresh data directory with the shipped
//! `restore.sh`, and compares.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};

use crate::cluster::{Cluster, ClusterOptions, Timings};
use crate::load::{quantile, Workload};
use crate::report::Row;
use crate::tier::archiving::ArchivingPostgres;

pub const SCENARIO: &str = "PITR: restore to a timestamp";

/// What the drill wrote through the service, and what answered.
#[derive(Default)]
struct Writes {
    requests: usize,
    failed: usize,
    latencies_ms: Vec<f64>,
    problems: Vec<String>,
}

impl Writes {
    /// Sends one write, once; returns its JSON body when it was acknowledged (2xx).
    async fn send(&mut self, what: &str, request: reqwest::RequestBuilder) -> Option<Value> {
        self.requests += 1;
        let started = Instant::now();
        let answer = request.timeout(Duration::from_secs(10)).send().await;
        self.latencies_ms
            .push(started.elapsed().as_secs_f64() * 1000.0);
        match answer {
            Ok(r) if r.status().is_success() => Some(r.json().await.unwrap_or(Value::Null)),
            Ok(r) => {
                self.failed += 1;
                self.problems.push(format!("{what}: {}", r.status()));
                None
            }
            Err(e) => {
                self.failed += 1;
                self.problems.push(format!("{what}: {e}"));
                None
            }
        }
    }
}

/// The current time on the database server, as `restore.sh --target` takes it.
async fn server_time(url: &str) -> anyhow::Result<String> {
    let mut conn = PgConnection::connect(url).await?;
    Ok(sqlx::query_scalar(
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'",
    )
    .fetch_one(&mut conn)
    .await?)
}

/// Every item of `email`'s user, id to title, on the server `url` reaches.
async fn items_of(url: &str, email: &str) -> anyhow::Result<HashMap<String, String>> {
    let mut conn = PgConnection::connect(url).await?;
    let rows: Vec<(uuid::Uuid, String)> = sqlx::query_as(
        "SELECT i.id, i.title FROM items i JOIN users u ON u.id = i.user_id WHERE u.email = $1",
    )
    .bind(email)
    .fetch_all(&mut conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, t)| (id.to_string(), t))
        .collect())
}

async fn users_named(url: &str, email: &str) -> anyhow::Result<i64> {
    let mut conn = PgConnection::connect(url).await?;
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM users WHERE email = $1")
            .bind(email)
            .fetch_one(&mut conn)
            .await?,
    )
}

/// Items created, updated and deleted before and after the noted time.
const CREATES: usize = 20;
const CHANGES: usize = 5;

/// Back up, write through the service, note the time, write more (creates, updates,
/// deletes, a new user), restore to the time: exactly the state acknowledged before it.
pub async fn drill(state_dir: &Path) -> anyhow::Result<Row> {
    let pg = ArchivingPostgres::start()?;
    pg.create_database("cartae").await?;
    let options = ClusterOptions {
        extra_env: vec![("DATABASE_URL".to_owned(), pg.url("cartae"))],
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start_with_options(Timings::default(), state_dir, options).await?;
    let backup_started = Instant::now();
    pg.backup_full().await?;
    let backup_took = backup_started.elapsed();
    // pgBackRest restores to a time only from a backup whose stop time, in whole seconds
    // and taken once its WAL is archived, is before the target: on a quiet machine the
    // writes below took under a second and the target fell inside the backup's last second.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let client = reqwest::Client::new();
    let base = cluster.instances[0].url("");
    let workload = Workload::prepare(&client, &base).await?;
    let email = workload.credentials["email"]
        .as_str()
        .context("workload has no email")?
        .to_owned();
    let mut writes = Writes::default();
    let item = |id: &str| format!("{base}/api/items/{id}");
    for i in 0..CREATES {
        let body = json!({"type": "note", "title": format!("before {i}")});
        let request = client
            .post(format!("{base}/api/items"))
            .bearer_auth(&workload.token)
            .json(&body);
        writes.send("create before", request).await;
    }
    // The state every acknowledged write before the time left, as the primary has it.
    let expected = items_of(&pg.url("cartae"), &email).await?;
    // Commit timestamps on either side of the target are apart by more than any clock
    // granularity.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let target = server_time(&pg.url("cartae")).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut after = Vec::new();
    for i in 0..CREATES {
        let body = json!({"type": "note", "title": format!("after {i}")});
        let request = client
            .post(format!("{base}/api/items"))
            .bearer_auth(&workload.token)
            .json(&body);
        if let Some(created) = writes.send("create after", request).await {
            after.push(created["id"].as_str().unwrap_or_default().to_owned());
        }
    }
    let earlier: Vec<&String> = expected.keys().collect();
    for id in earlier.iter().take(CHANGES) {
        let request = client
            .patch(item(id))
            .bearer_auth(&workload.token)
            .json(&json!({"title": "changed after"}));
        writes.send("update after", request).await;
    }
    for id in earlier.iter().skip(CHANGES).take(CHANGES) {
        let request = client.delete(item(id)).bearer_auth(&workload.token);
        writes.send("delete after", request).await;
    }
    let late_email = format!("late-{}@example.com", uuid::Uuid::new_v4().simple());
    let register = client
        .post(format!("{base}/api/auth/register"))
        .json(&json!({"email": late_email, "password": "drill-password-0123456789"}));
    writes.send("register after", register).await;
    // The state after the time differs from the one before it, or the drill proves nothing.
    let later = items_of(&pg.url("cartae"), &email).await?;
    drop(cluster);

    pg.archive_check().await?;
    let restored = pg.restore_to(&target).await?;
    let found = items_of(&restored.url("cartae"), &email).await?;
    let late_users = users_named(&restored.url("cartae"), &late_email).await?;

    let mut problems = writes.problems.clone();
    if later == expected {
        problems.push("the writes after the time changed nothing".to_owned());
    }
    let missing = expected
        .keys()
        .filter(|id| !found.contains_key(*id))
        .count();
    let extra = found
        .keys()
        .filter(|id| !expected.contains_key(*id))
        .count();
    let changed = expected
        .iter()
        .filter(|(id, title)| found.get(*id).is_some_and(|t| t != *title))
        .count();
    if missing > 0 {
        problems.push(format!(
            "{missing} item(s) acknowledged before the time are missing"
        ));
    }
    if extra > 0 {
        problems.push(format!("{extra} item(s) created after the time are there"));
    }
    if changed > 0 {
        problems.push(format!(
            "{changed} item(s) carry a change made after the time"
        ));
    }
    if late_users != 0 {
        problems.push("the user registered after the time is there".to_owned());
    }
    let ms = &writes.latencies_ms;
    Ok(Row {
        scenario: SCENARIO.to_owned(),
        balancer: "direct",
        requests: writes.requests,
        failed: writes.failed,
        retried: 0,
        failed_after_retries: writes.failed,
        p50_ms: quantile(ms, 0.50),
        p95_ms: quantile(ms, 0.95),
        p99_ms: quantile(ms, 0.99),
        detection: None,
        recovery: Some(restored.elapsed),
        budget: "none: every write is acknowledged".to_owned(),
        problems,
        notes: format!(
            "full backup by backup.sh {:.1} s; restore.sh to the noted time (restore, replay, promote) in the Recovery column. \
             Restored {} of {} items acknowledged before it, {} missing; after it: {} creates, {CHANGES} updates, {CHANGES} deletes \
             and a sign-up, {extra} created item(s) and {changed} change(s) found",
            backup_took.as_secs_f64(),
            expected.len() - missing,
            expected.len(),
            missing,
            after.len(),
        ),
    })
}
