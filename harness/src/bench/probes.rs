//! Probe cost: `/live`, `/ready` and `/health` against the floor server, and PostgreSQL
//! round trips under a `/health` storm.

use std::time::Duration;

use anyhow::Context;

use super::replica::{rss_mib, RssPeak};
use super::table::{thousands, Figure};
use super::wrk::Load;
use super::{best, Bench, CHECK_INTERVAL_MS, CONNECTIONS};
use crate::database::{pg_url, TestDatabase, PG_ADDR, REDIS_ADDR};
use crate::proxy::TcpProxy;

const PROBES: &str = "Probe cost";

/// `/live`, `/ready`, `/health` on one replica against the floor server; PostgreSQL round
/// trips under a `/health` storm against the same replica left idle.
pub(super) async fn run(bench: &mut Bench) -> anyhow::Result<()> {
    let database = TestDatabase::create().await?;
    let pg = TcpProxy::start(PG_ADDR.parse()?, true).await;
    let spec = bench.spec(
        "probes",
        pg_url(&pg.addr.to_string(), &database.name),
        format!("redis://{REDIS_ADDR}"),
    );
    let (replica, _) = bench.replica(&spec).await?;
    let pid = replica.pid();
    let body = bench
        .client
        .get(replica.url("/live"))
        .send()
        .await?
        .text()
        .await?;
    let (floor, floor_port, _) = bench.floor(&body).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    bench.floor_idle_rss_mib = rss_mib(floor.pid()).unwrap_or(0.0);

    // Idle baseline for the round trips: the same replica, the same span, no requests.
    let span = bench.duration() * bench.passes() as u32;
    let q0 = pg.queries();
    tokio::time::sleep(span).await;
    let idle_queries = pg.queries() - q0;

    let floor_url = format!("http://127.0.0.1:{floor_port}/live");
    let (mut floor_best, mut live, mut ready, mut health) = (None, None, None, None);
    let (mut health_queries, mut health_requests) = (0, 0);
    let rss = RssPeak::start(pid);
    let floor_rss = RssPeak::start(floor.pid());
    let d = bench.duration();
    for pass in 0..bench.passes() {
        eprintln!("   pass {}", pass + 1);
        floor_best = best(
            floor_best,
            bench
                .load(&Load::get(floor_url.clone(), CONNECTIONS, d))
                .await?,
        );
        live = best(
            live,
            bench
                .load(&Load::get(replica.url("/live"), CONNECTIONS, d))
                .await?,
        );
        ready = best(
            ready,
            bench
                .load(&Load::get(replica.url("/ready"), CONNECTIONS, d))
                .await?,
        );
        let q = pg.queries();
        let h = bench
            .load(&Load::get(replica.url("/health"), CONNECTIONS, d))
            .await?;
        health_queries += pg.queries() - q;
        health_requests += h.requests;
        health = best(health, h);
    }
    bench.loaded_rss_mib = bench.loaded_rss_mib.max(rss.peak_mib());
    bench.floor_loaded_rss_mib = floor_rss.peak_mib();
    drop((rss, floor_rss, floor));
    let (floor_s, live, ready, health) = (
        floor_best.context("no floor run")?,
        live.context("no /live run")?,
        ready.context("no /ready run")?,
        health.context("no /health run")?,
    );
    let note = format!(
        "best of {} runs of {} s, {CONNECTIONS} connections",
        bench.passes(),
        d.as_secs()
    );
    bench.figures.push(
        Figure::info(PROBES, "Floor server GET /live", floor_s.text()).baseline(note.clone()),
    );
    let r = live.rps / floor_s.rps;
    bench.figures.push(
        Figure::info(PROBES, "GET /live", live.text())
            .baseline(format!("floor: {} req/s", thousands(floor_s.rps)))
            .ratio(r)
            .target(">= 90 % of floor", r >= 0.90),
    );
    bench.figures.push(
        Figure::info(PROBES, "GET /ready", ready.text())
            .baseline(format!("/live: {} req/s", thousands(live.rps)))
            .ratio(ready.rps / live.rps),
    );
    let r = health.rps / live.rps;
    bench.figures.push(
        Figure::info(PROBES, "GET /health", health.text())
            .baseline(format!("/live: {} req/s", thousands(live.rps)))
            .ratio(r)
            .target(">= 80 % of /live", r >= 0.80),
    );
    let health_secs = (d * bench.passes() as u32).as_secs_f64();
    let per_1000 = health_queries as f64 * 1000.0 / health_requests.max(1) as f64;
    // The idle replica's own queries (the health check's round per interval, the denylist
    // poll's four reads a second) happen with or without probes; the probes may add none.
    // Each of those two readers may have one read in flight at an edge of each run.
    let bound = idle_queries as f64 + 2.0 * bench.passes() as f64;
    bench.figures.push(
        Figure::info(
            PROBES,
            "PostgreSQL round trips per 1,000 /health",
            format!(
                "{per_1000:.4} ({health_queries} in {} requests over {health_secs:.0} s)",
                thousands(health_requests as f64)
            ),
        )
        .baseline(format!(
            "idle, same span: {idle_queries}; check interval {CHECK_INTERVAL_MS} ms"
        ))
        .target(
            format!("<= idle + edges ({bound:.0}): probes add none"),
            (health_queries as f64) <= bound,
        ),
    );
    Ok(())
}
