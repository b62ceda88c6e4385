//! Overload: one replica with a fixed admission limit, offered more and more load, and what
//! a refusal costs it beside a served request.
//!
//! - The curve: cache-hit item reads from `wrk` at 0.5×, 1×, 2×, 4× and 8× the limit in
//!   connections (closed loop: a refused connection asks again at once, which is the
//!   worst case for the replica), against goodput (answers below 400 per second) and the
//!   p99 of those answers. Drawn to `docs/overload-curve.svg` by a full run. The limit is
//!   fixed: no adaptive limit was built.
//! - The refusal cost: the CPU time per request of the replica (from `/proc`), for a
//!   served cache hit and for a refused read, on a replica whose only permit is held by a
//!   write stuck on PostgreSQL (the harness proxy hangs) and which queues nothing.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use plotters::prelude::*;

use super::replica::cpu_seconds;
use super::table::{ms, thousands, Figure};
use super::wrk::{check_requests, cycle_script, Load, Request, Stats};
use super::{Bench, CONNECTIONS};
use crate::database::{pg_url, TestDatabase, PG_ADDR, REDIS_ADDR};
use crate::load::Workload;
use crate::proxy::{Mode, TcpProxy};

const OVERLOAD: &str = "Overload";
/// `MAX_IN_FLIGHT_REQUESTS` of the replica under test, and its `MAX_QUEUED_REQUESTS`
/// (equal, as by default). Fixed rather than the default, which depends on the CPUs: the
/// offered loads are multiples of it.
const LIMIT: u32 = 16;

/// One point of the curve.
struct Point {
    factor: f64,
    stats: Stats,
}

pub(super) async fn run(bench: &mut Bench) -> anyhow::Result<()> {
    let database = TestDatabase::create().await?;
    let pg = TcpProxy::start(PG_ADDR.parse()?, false).await;
    let db_url = pg_url(&pg.addr.to_string(), &database.name);
    let redis = format!("redis://{REDIS_ADDR}");
    let mut spec = bench.spec("overload", db_url.clone(), redis.clone());
    spec.env.extend([
        ("MAX_IN_FLIGHT_REQUESTS".into(), LIMIT.to_string()),
        ("MAX_QUEUED_REQUESTS".into(), LIMIT.to_string()),
    ]);
    let (replica, _) = bench.replica(&spec).await?;
    let base = replica.url("");
    let workload = Workload::prepare(&bench.client, &base).await?;
    let auth = format!("Bearer {}", workload.token);
    let reads = super::data_api::item_reads(&workload);
    check_requests(&bench.client, &base, &reads, &[("Authorization", &auth)]).await?;

    // At the limit: every request admitted at once, none queued or refused.
    let (served, served_cpu) = measured(bench, replica.pid(), &base, &reads, &auth, LIMIT).await?;
    let live_cpu = {
        let load = Load::get(replica.url("/live"), CONNECTIONS, bench.duration());
        let before = cpu_seconds(replica.pid()).context("no CPU time")?;
        let live = bench.load(&load).await?;
        cpu_per_request(replica.pid(), before, &live)?
    };

    let factors: &[f64] = if bench.smoke {
        &[0.5, 2.0, 8.0]
    } else {
        &[0.5, 1.0, 2.0, 4.0, 8.0]
    };
    let mut curve = Vec::new();
    for &factor in factors {
        let connections = ((LIMIT as f64 * factor).round() as u32).max(1);
        eprintln!("   {connections} connections");
        let (stats, _) = measured(bench, replica.pid(), &base, &reads, &auth, connections).await?;
        curve.push(Point { factor, stats });
    }
    drop(replica);

    let (refused, refused_cpu) = refusals(bench, &pg, db_url, redis, &reads, &auth).await?;
    drop(pg);

    curve_figures(bench, &curve);
    let share = refused_cpu / served_cpu;
    bench.figures.push(
        Figure::info(
            OVERLOAD,
            "GET /api/items/{id} refused (503: the permit held, no queue)",
            format!(
                "{:.1} µs CPU per request; {} req/s, p99 {} ms",
                refused_cpu * 1e6,
                thousands(refused.rps),
                ms(refused.p99_ms)
            ),
        )
        .baseline(format!(
            "served cache hit: {:.1} µs CPU per request ({} req/s); GET /live: {:.1} µs",
            served_cpu * 1e6,
            thousands(served.rps),
            live_cpu * 1e6
        ))
        .ratio(share)
        .target("<= 3 % of a served cache hit", share <= 0.03),
    );
    let svg = if bench.smoke {
        crate::repo_root()
            .join("target")
            .join("overload-curve-smoke.svg")
    } else {
        crate::repo_root().join("docs").join("overload-curve.svg")
    };
    draw(&svg, &curve).with_context(|| format!("drawing {}", svg.display()))?;
    Ok(())
}

/// A `wrk` cycle of `requests` at `connections`, and the replica's CPU time per request
/// during it.
async fn measured(
    bench: &Bench,
    pid: i32,
    base: &str,
    requests: &[Request],
    auth: &str,
    connections: u32,
) -> anyhow::Result<(Stats, f64)> {
    let load = Load {
        url: base.to_owned(),
        connections,
        duration: bench.duration(),
        script: Some(cycle_script(requests, &[("Authorization", auth)])),
        headers: Vec::new(),
        cpus: Some(super::replica::LOAD_CPU),
    };
    let before = cpu_seconds(pid).context("no CPU time")?;
    let stats = bench.load(&load).await?;
    let cpu = cpu_per_request(pid, before, &stats)?;
    Ok((stats, cpu))
}

fn cpu_per_request(pid: i32, before: f64, stats: &Stats) -> anyhow::Result<f64> {
    let used = cpu_seconds(pid).context("no CPU time")? - before;
    Ok(used / stats.requests.max(1) as f64)
}

/// Reads refused by a replica whose one permit is held by a write that PostgreSQL never
/// answers (the proxy hangs), with no queue: every read is shed at once.
async fn refusals(
    bench: &Bench,
    pg: &TcpProxy,
    db_url: String,
    redis: String,
    reads: &[Request],
    auth: &str,
) -> anyhow::Result<(Stats, f64)> {
    let mut spec = bench.spec("shed", db_url, redis);
    spec.env.extend([
        ("MAX_IN_FLIGHT_REQUESTS".into(), "1".into()),
        ("MAX_QUEUED_REQUESTS".into(), "0".into()),
        ("REQUEST_TIMEOUT_MS".into(), "120000".into()),
    ]);
    let (replica, _) = bench.replica(&spec).await?;
    let base = replica.url("");
    pg.set_mode(Mode::Hang);
    let holder = tokio::spawn({
        let request = bench
            .client
            .post(format!("{base}/api/items"))
            .header("Authorization", auth)
            .header("content-type", "application/json")
            .body(r#"{"type":"note","title":"held","content":"holds the permit","tags":[]}"#)
            .timeout(Duration::from_secs(110));
        async move { request.send().await }
    });
    // The write holds the permit once a read is refused.
    let (_, path, _) = reads.first().context("no read")?;
    let mut shed = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let status = bench
            .client
            .get(format!("{base}{path}"))
            .header("Authorization", auth)
            .send()
            .await?
            .status();
        if status == 503 {
            shed = true;
            break;
        }
    }
    if !shed {
        bail!("the replica never refused a read while its permit was held");
    }
    let (stats, cpu) = measured(bench, replica.pid(), &base, reads, auth, CONNECTIONS).await?;
    holder.abort();
    pg.set_mode(Mode::Forward);
    if stats.status_errors != stats.requests {
        bail!(
            "{} of {} reads were served while the permit was held",
            stats.requests - stats.status_errors,
            stats.requests
        );
    }
    Ok((stats, cpu))
}

fn curve_figures(bench: &mut Bench, curve: &[Point]) {
    let Some(first) = curve.first() else {
        return;
    };
    // The reference is the first point at or beyond the limit: below it the replica may
    // not be saturated yet.
    let reference = curve.iter().find(|p| p.factor >= 1.0).unwrap_or(first);
    for point in curve {
        let s = &point.stats;
        let connections = ((LIMIT as f64 * point.factor).round() as u32).max(1);
        let refused = s.rps - s.goodput();
        let mut figure = Figure::info(
            OVERLOAD,
            format!(
                "Cache-hit reads, {connections} connections ({}× the limit of {LIMIT})",
                point.factor
            ),
            format!(
                "goodput {} req/s, p99 of the 2xx {} ms; refused {} req/s",
                thousands(s.goodput()),
                ms(s.p99_ok_ms),
                thousands(refused)
            ),
        )
        .baseline(format!(
            "{}× the limit: {} req/s, p99 {} ms",
            reference.factor,
            thousands(reference.stats.goodput()),
            ms(reference.stats.p99_ok_ms)
        ))
        .ratio(s.goodput() / reference.stats.goodput().max(1e-9));
        if point.factor > reference.factor {
            let kept = s.goodput() >= 0.9 * reference.stats.goodput();
            figure = figure.target(format!("goodput >= 90 % of {}×", reference.factor), kept);
        }
        bench.figures.push(figure);
    }
}

/// Goodput and the p99 of the 2xx against the offered load, two charts side by side.
fn draw(path: &Path, curve: &[Point]) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let root = SVGBackend::new(path, (960, 400)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(480);
    let xs = (0.35f64..11.0).log_scale();
    let goodput: Vec<(f64, f64)> = curve
        .iter()
        .map(|p| (p.factor, p.stats.goodput()))
        .collect();
    let p99: Vec<(f64, f64)> = curve
        .iter()
        .map(|p| (p.factor, p.stats.p99_ok_ms))
        .collect();
    let top = |v: &[(f64, f64)]| v.iter().map(|p| p.1).fold(1.0, f64::max) * 1.15;
    for (area, title, unit, points, color) in [
        (&left, "Goodput (2xx/s)", "2xx per second", &goodput, BLUE),
        (&right, "p99 of the 2xx (ms)", "milliseconds", &p99, RED),
    ] {
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!("{title}, fixed limit {LIMIT} in flight + {LIMIT} queued"),
                ("sans-serif", 16),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(60)
            .build_cartesian_2d(xs.clone(), 0.0..top(points))?;
        chart
            .configure_mesh()
            .x_desc("offered load: wrk connections / admission limit")
            .y_desc(unit)
            .draw()?;
        chart.draw_series(LineSeries::new(points.iter().copied(), &color))?;
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
    }
    root.present()?;
    Ok(())
}
