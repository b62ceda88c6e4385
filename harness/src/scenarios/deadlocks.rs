//! Deadlock-prone batches: concurrent batches upsert the same sources, half of them
//! listed in ascending order and half in descending order. Upserted in request order, two
//! such transactions lock the same rows in opposite orders and PostgreSQL aborts one of
//! them (40P01); the service upserts in a canonical order, so they only queue.

use sqlx::Row as _;

use super::shared::{judge, row};
use super::Drill;
use crate::load::{Batches, LoadSpec};
use crate::report::Row;

/// Sources every batch names: enough rows that two opposite-order transactions overlap.
const SOURCES: usize = 50;
const BATCHES: usize = 200;
/// What the service counts a deadlock (40P01) or a serialization failure (40001) as.
const SERIALIZATION: &str = "db_query_errors_total{error_type=\"serialization\"}";

pub(super) async fn run(d: &Drill) -> anyhow::Result<Row> {
    let before = d.metric_per_replica(SERIALIZATION).await;
    let outcomes = d
        .load(LoadSpec {
            workers: 8,
            rate: 40.0,
            max_requests: BATCHES,
            mix: [0, 0, 0, 1],
            batches: Batches::Shared { size: SOURCES },
            ..LoadSpec::default()
        })
        .finish()
        .await?;
    let after = d.metric_per_replica(SERIALIZATION).await;
    let mut r = row("deadlock-prone batches", d, &outcomes);
    judge(
        &mut r,
        &outcomes,
        "none: rows are locked in one canonical order, so concurrent batches queue and \
         never deadlock (any answer but 200 counts, a 503 included)",
        |_| false,
    );
    let aborted: f64 = after.iter().zip(&before).map(|(a, b)| a - b).sum();
    if aborted > 0.0 {
        r.problems.push(format!(
            "the replicas counted {aborted} deadlocks or serialization failures"
        ));
    }
    if outcomes.len() < BATCHES {
        r.problems.push(format!(
            "{} batches sent, expected {BATCHES}",
            outcomes.len()
        ));
    }
    let rows = shared_rows(d).await?;
    if rows != SOURCES as i64 {
        r.problems.push(format!(
            "{rows} rows for the {SOURCES} shared sources, expected one each"
        ));
    }
    r.notes = format!(
        "{BATCHES} batches of the same {SOURCES} sources, 8 at once, alternately ascending \
         and descending; deadlocks or serialization failures counted by the replicas: {aborted}"
    );
    Ok(r)
}

async fn shared_rows(d: &Drill) -> anyhow::Result<i64> {
    let mut conn = d.cluster.database.connect().await?;
    let row = sqlx::query(
        "SELECT count(*) AS n FROM items \
         WHERE source_connector = 'drill-batch' AND source_id LIKE 'shared-%'",
    )
    .fetch_one(&mut conn)
    .await?;
    Ok(row.get("n"))
}
