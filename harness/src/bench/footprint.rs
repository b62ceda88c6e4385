//! Footprint: binary size, start-up time (migrations applied and fresh database), and
//! resident memory idle and under load.

use std::time::Duration;

use super::replica::rss_mib;
use super::table::{ms, Figure};
use super::Bench;
use crate::database::{pg_url, TestDatabase, PG_ADDR, REDIS_ADDR};

const FOOTPRINT: &str = "Footprint";

/// Start-up time (migrations applied and fresh database), binary size, idle memory.
pub(super) async fn run(bench: &mut Bench) -> anyhow::Result<()> {
    let size = std::fs::metadata(&bench.binary)?.len() as f64 / 1024.0 / 1024.0;
    let floor_bin = bench.binary.with_file_name("floor-server");
    let floor_size = std::fs::metadata(&floor_bin)
        .map(|m| format!("floor-server: {:.1} MiB", m.len() as f64 / 1024.0 / 1024.0))
        .unwrap_or_else(|_| "floor-server not built".into());
    bench.figures.push(
        Figure::info(FOOTPRINT, "Release binary size", format!("{size:.1} MiB"))
            .baseline(floor_size),
    );

    let runs = if bench.smoke { 1 } else { 3 };
    let redis = format!("redis://{REDIS_ADDR}");
    let mut fresh = Vec::new();
    let mut migrated = Vec::new();
    let mut idle_rss = 0.0;
    let database = TestDatabase::create().await?;
    for i in 0..runs {
        // A new, empty database each time: every migration runs.
        let empty = TestDatabase::create().await?;
        let spec = bench.spec("fresh", pg_url(PG_ADDR, &empty.name), redis.clone());
        let (replica, t) = bench.replica(&spec).await?;
        fresh.push(t);
        drop(replica);
        if i == 0 {
            // Migrate the database the "applied" runs use.
            let spec = bench.spec("migrate", pg_url(PG_ADDR, &database.name), redis.clone());
            drop(bench.replica(&spec).await?);
        }
        let spec = bench.spec("migrated", pg_url(PG_ADDR, &database.name), redis.clone());
        let (replica, t) = bench.replica(&spec).await?;
        migrated.push(t);
        if i == runs - 1 {
            tokio::time::sleep(Duration::from_secs(2)).await;
            idle_rss = rss_mib(replica.pid()).unwrap_or(0.0);
        }
    }
    let (_floor, _, floor_start) = bench.floor("{}").await?;
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (m, f) = (median(&mut migrated), median(&mut fresh));
    let msf = |d: Duration| format!("{} ms", ms(d.as_secs_f64() * 1000.0));
    bench.figures.push(
        Figure::info(
            FOOTPRINT,
            "Start-up, exec to /ready 200, migrations applied",
            format!("{} (median of {runs})", msf(m)),
        )
        .baseline(format!(
            "floor server exec to first 200: {}",
            msf(floor_start)
        ))
        .target("< 1 s", m < Duration::from_secs(1)),
    );
    bench.figures.push(
        Figure::info(
            FOOTPRINT,
            "Start-up, exec to /ready 200, fresh database",
            format!("{} (median of {runs})", msf(f)),
        )
        .baseline(format!("migrations applied: {}", msf(m)))
        .target("< 3 s", f < Duration::from_secs(3)),
    );
    bench.figures.push(
        Figure::info(
            FOOTPRINT,
            "Resident memory idle",
            format!("{idle_rss:.1} MiB"),
        )
        .baseline(if bench.floor_idle_rss_mib > 0.0 {
            format!("floor server idle: {:.1} MiB", bench.floor_idle_rss_mib)
        } else {
            String::new()
        })
        .target("< 20 MiB", idle_rss < 20.0),
    );
    Ok(())
}

/// Peak resident memory under load, across every section that loaded a replica (none
/// when no section did).
pub(super) fn under_load(bench: &mut Bench) {
    if bench.loaded_rss_mib > 0.0 {
        let loaded = bench.loaded_rss_mib;
        bench.figures.push(
            Figure::info(
                FOOTPRINT,
                "Resident memory under load",
                format!("{loaded:.1} MiB"),
            )
            .baseline(format!(
                "before the data load, after 2 registrations and 2 logins: {:.1} MiB; \
                 floor server: {:.1} MiB loaded, {:.1} MiB idle",
                bench.after_logins_rss_mib, bench.floor_loaded_rss_mib, bench.floor_idle_rss_mib
            ))
            .target("< 64 MiB", loaded < 64.0),
        );
    }
}
