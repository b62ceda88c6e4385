//! The item read path against its floors (`harness/src/floor.rs`): an authenticated cache
//! hit against the cache-hit floor (token check, one Redis `GET` on a multiplexed
//! connection), a read that misses against the miss floor (token check, one `SELECT` by
//! primary key on an unpinged pooled connection, the row serialised). Then both again
//! with 1 ms added to every Redis and PostgreSQL round trip by the harness's proxy, as
//! between hosts or availability zones, where round trips cost more than CPU. With
//! `--compare`, the authenticated cache hit of another build beside this one's, at 0 and
//! 1 ms, interleaved.

use std::time::Duration;

use anyhow::Context;

use super::replica::JWT_SECRET;
use super::table::Figure;
use super::wrk::{Request, Stats};
use super::{best, Bench, Compare, CONNECTIONS};
use crate::database::{pg_url, PG_ADDR, REDIS_ADDR};
use crate::proxy::TcpProxy;

const DATA: &str = "Data API";
/// What the data floors are polled with until they answer: a well-formed id without a
/// token, which they answer 401 (a malformed id would be refused 400 before the check).
const PROBE: &str = "/api/items/00000000-0000-0000-0000-000000000000";
/// Added to every response from Redis and PostgreSQL in the "between hosts" runs.
const ADDED_LATENCY: Duration = Duration::from_millis(1);

/// What the floors read: the data section's items, user and database.
pub(super) struct ItemReads<'a> {
    pub database: &'a str,
    pub ids: &'a [String],
    pub reads: &'a [Request],
    pub auth: &'a str,
}

/// The service's figures the floors are compared with, measured earlier in the section.
pub(super) struct Service<'a> {
    pub hit: &'a Stats,
    pub off: &'a Stats,
}

pub(super) async fn run(
    bench: &mut Bench,
    items: &ItemReads<'_>,
    service: Service<'_>,
) -> anyhow::Result<()> {
    let prefix = format!("bench-floor:{}:", uuid::Uuid::new_v4().simple());
    let direct_pg = pg_url(PG_ADDR, items.database);
    let direct_redis = format!("redis://{REDIS_ADDR}");
    let (miss_floor, entries) = run_miss_floor(bench, items, &direct_pg, true).await?;
    store_entries(&direct_redis, &prefix, items.ids, &entries).await?;
    let hit_floor = run_hit_floor(bench, items, "hit", &direct_redis, &prefix).await?;
    let pool_floor = run_hit_floor(bench, items, "hit-pool", &direct_redis, &prefix).await?;

    let slow_pg = TcpProxy::start(PG_ADDR.parse()?, false).await;
    let slow_redis = TcpProxy::start(REDIS_ADDR.parse()?, false).await;
    slow_pg.set_latency(ADDED_LATENCY);
    slow_redis.set_latency(ADDED_LATENCY);
    let slow_pg_url = pg_url(&slow_pg.addr.to_string(), items.database);
    let slow_redis_url = format!("redis://{}", slow_redis.addr);
    let (slow_miss_floor, _) = run_miss_floor(bench, items, &slow_pg_url, false).await?;
    let slow_hit_floor = run_hit_floor(bench, items, "hit", &slow_redis_url, &prefix).await?;
    let slow_pool_floor = run_hit_floor(bench, items, "hit-pool", &slow_redis_url, &prefix).await?;
    let slow_hit = replica_reads(
        bench,
        &bench.binary,
        items,
        &slow_pg_url,
        &slow_redis_url,
        false,
    )
    .await?;
    let slow_off = replica_reads(
        bench,
        &bench.binary,
        items,
        &slow_pg_url,
        &slow_redis_url,
        true,
    )
    .await?;
    let mut compared = Vec::new();
    if let Some(compare) = bench.compare.clone() {
        for (latency, pg, redis) in [
            ("", &direct_pg, &direct_redis),
            (
                ", 1 ms added to each Redis and PostgreSQL answer",
                &slow_pg_url,
                &slow_redis_url,
            ),
        ] {
            let (ours, theirs) = compare_hits(bench, items, &compare, pg, redis).await?;
            compared.push(beside(
                &format!(
                    "GET /api/items/{{id}}, cache hit{latency}: this build against {}",
                    compare.label
                ),
                &ours,
                &compare.label,
                &theirs,
            ));
        }
    }

    let figures = [
        Figure::info(
            DATA,
            "Cache-hit floor: token verified, one Redis GET on a multiplexed connection",
            hit_floor.text(),
        ),
        beside(
            "Cache-hit floor through a deadpool-redis pool (as the service before its multiplexed connection)",
            &pool_floor,
            "multiplexed",
            &hit_floor,
        ),
        beside(
            "Cache-hit floor through the pool, 1 ms added to each Redis answer",
            &slow_pool_floor,
            "multiplexed, same 1 ms",
            &slow_hit_floor,
        ),
        beside(
            "GET /api/items/{id}, cache hit, against the cache-hit floor",
            service.hit,
            "floor",
            &hit_floor,
        )
        .target(">= 70 % of floor", service.hit.rps >= 0.7 * hit_floor.rps),
        Figure::info(
            DATA,
            "Miss floor: token verified, one SELECT by primary key (no ping), row serialised",
            miss_floor.text(),
        ),
        beside(
            "GET /api/items/{id}, cache off, against the miss floor",
            service.off,
            "floor",
            &miss_floor,
        )
        .target(">= 70 % of floor", service.off.rps >= 0.7 * miss_floor.rps),
        beside(
            "GET /api/items/{id}, cache hit, 1 ms added to each Redis and PostgreSQL answer",
            &slow_hit,
            "cache-hit floor, same 1 ms",
            &slow_hit_floor,
        ),
        beside(
            "GET /api/items/{id}, cache off, 1 ms added to each Redis and PostgreSQL answer",
            &slow_off,
            "miss floor, same 1 ms",
            &slow_miss_floor,
        ),
    ];
    bench.figures.extend(figures);
    bench.figures.extend(compared);
    Ok(())
}

/// The cache hit of this build and of `compare`'s, fresh replicas interleaved, the best
/// of [`Bench::passes`] each.
async fn compare_hits(
    bench: &Bench,
    items: &ItemReads<'_>,
    compare: &Compare,
    database_url: &str,
    redis_url: &str,
) -> anyhow::Result<(Stats, Stats)> {
    let (mut ours, mut theirs) = (None, None);
    for _ in 0..bench.passes() {
        let run = replica_reads(
            bench,
            &compare.binary,
            items,
            database_url,
            redis_url,
            false,
        );
        theirs = best(theirs, run.await?);
        let run = replica_reads(bench, &bench.binary, items, database_url, redis_url, false);
        ours = best(ours, run.await?);
    }
    match (ours, theirs) {
        (Some(ours), Some(theirs)) => Ok((ours, theirs)),
        _ => anyhow::bail!("no pass ran"),
    }
}

/// `stats` beside `baseline`, with their ratio.
fn beside(name: &str, stats: &Stats, baseline_name: &str, baseline: &Stats) -> Figure {
    Figure::info(DATA, name, stats.text())
        .baseline(format!("{baseline_name}: {}", baseline.text()))
        .ratio(stats.rps / baseline.rps)
}

/// The miss floor's run over the item reads; with `bodies`, also each item's JSON as the
/// floor serialised it, in the order of `items.ids`.
async fn run_miss_floor(
    bench: &Bench,
    items: &ItemReads<'_>,
    database_url: &str,
    bodies: bool,
) -> anyhow::Result<(Stats, Vec<String>)> {
    let (_floor, port, _) = bench
        .floor_server(&["miss", database_url, JWT_SECRET], PROBE, 401)
        .await?;
    let base = format!("http://127.0.0.1:{port}");
    let mut entries = Vec::new();
    for id in items.ids.iter().filter(|_| bodies) {
        let response = bench
            .client
            .get(format!("{base}/api/items/{id}"))
            .header("Authorization", items.auth)
            .send()
            .await?;
        let status = response.status();
        let body = response.text().await?;
        anyhow::ensure!(
            status.is_success(),
            "the miss floor answered {status}: {body}"
        );
        entries.push(body);
    }
    let stats = bench
        .cycle(&base, items.reads, items.auth, CONNECTIONS)
        .await?;
    Ok((stats, entries))
}

async fn run_hit_floor(
    bench: &Bench,
    items: &ItemReads<'_>,
    kind: &str,
    redis_url: &str,
    prefix: &str,
) -> anyhow::Result<Stats> {
    let (_floor, port, _) = bench
        .floor_server(&[kind, redis_url, prefix, JWT_SECRET], PROBE, 401)
        .await?;
    let base = format!("http://127.0.0.1:{port}");
    bench
        .cycle(&base, items.reads, items.auth, CONNECTIONS)
        .await
}

/// The cache-hit floor's entries: each item's JSON under `<prefix><id>`, for ten minutes.
async fn store_entries(
    redis_url: &str,
    prefix: &str,
    ids: &[String],
    entries: &[String],
) -> anyhow::Result<()> {
    let mut redis = redis::Client::open(redis_url)?
        .get_multiplexed_async_connection()
        .await
        .context("redis for the floor's entries")?;
    let mut pipe = redis::pipe();
    for (id, body) in ids.iter().zip(entries) {
        pipe.cmd("SET")
            .arg(format!("{prefix}{id}"))
            .arg(body)
            .arg("PX")
            .arg(600_000)
            .ignore();
    }
    pipe.query_async::<()>(&mut redis).await?;
    Ok(())
}

/// The service's item reads with the given dependencies: cache on (every read after the
/// first a hit) or off (`CACHE_ITEM_TTL_MS=1`, every read a miss).
async fn replica_reads(
    bench: &Bench,
    binary: &std::path::Path,
    items: &ItemReads<'_>,
    database_url: &str,
    redis_url: &str,
    cache_off: bool,
) -> anyhow::Result<Stats> {
    let name = if cache_off {
        "slow-cache-off"
    } else {
        "slow-hit"
    };
    let mut spec = bench.spec(name, database_url.to_owned(), redis_url.to_owned());
    if cache_off {
        spec.env.push(("CACHE_ITEM_TTL_MS".into(), "1".into()));
    }
    let (replica, _) = bench.replica_of(binary, &spec).await?;
    bench
        .cycle(&replica.url(""), items.reads, items.auth, CONNECTIONS)
        .await
}
