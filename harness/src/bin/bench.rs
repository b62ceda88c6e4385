//! The benchmark suite: probe cost against a floor server, footprint, start-up, the data
//! API and its scaling with data, and three replicas behind Traefik against one direct.
//!
//!   cargo build --release && cargo run --release -p cartae-harness --bin bench
//!
//! prints the table and rewrites the generated section of `BENCHMARKS.md`. Options:
//! `--smoke` (a second or two per figure, no verdicts, writes `target/bench-smoke.md`;
//! CI runs it), `--out <file.md>`, `--only <section substring>`.
//!
//! Every figure stands beside a baseline measured in the same run, because this machine
//! is shared: absolute numbers move from run to run, ratios within one run hold. Servers
//! under test are pinned to CPU 0 and `wrk` to CPU 1 when `taskset` exists. Every process
//! the suite starts binds 127.0.0.1 on free ports and is killed by its PID on drop, so
//! also when a step fails.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cartae_harness::balancer::{without_rate_limit, Balancer, BalancerKind};
use cartae_harness::bench::{
    cycle_script, ensure_wrk, machine, ms, pinned, rss_mib, run_wrk, table, thousands,
    write_section, Figure, Load, Replica, ReplicaSpec, RssPeak, Stats, SERVER_CPU,
};
use cartae_harness::cluster::{release_binary, Cluster, Timings};
use cartae_harness::database::{pg_url, TestDatabase, PG_ADDR, REDIS_ADDR};
use cartae_harness::load::Workload;
use cartae_harness::process::{free_port, ManagedChild};
use cartae_harness::proxy::TcpProxy;

const PROBES: &str = "Probe cost";
const FOOTPRINT: &str = "Footprint";
const LB: &str = "Load balancer";
const DATA: &str = "Data API";
const SCALING: &str = "Scaling";

/// Connections held open by the load generator in throughput runs.
const CONNECTIONS: u32 = 32;
/// The health-check interval of the replicas under test: shorter than production's 5 s
/// so that a run spans several rounds and the round-trip count means something.
const CHECK_INTERVAL_MS: u64 = 1000;

struct Bench {
    smoke: bool,
    scratch: PathBuf,
    binary: PathBuf,
    client: reqwest::Client,
    figures: Vec<Figure>,
    /// Peak resident memory of the replica under load, across every run that loads it.
    loaded_rss_mib: f64,
    floor_loaded_rss_mib: f64,
    floor_idle_rss_mib: f64,
    /// The data replica's resident memory after its users registered and logged in, before
    /// any load: each password hash (Argon2id) allocates 19 MiB.
    after_logins_rss_mib: f64,
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--floor") {
        let port = args.get(2).context("--floor <port> <body>")?.parse()?;
        return cartae_harness::floor::serve(port, args.get(3).cloned().unwrap_or_default());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let smoke = flag("--smoke");
    let only = arg("--only");
    ensure_wrk()?;
    // Absolute: replicas start in a scratch directory, where a relative path would not
    // resolve.
    let binary = std::fs::canonicalize(release_binary()?)?;
    let root = cartae_harness::repo_root();
    let scratch = root.join("target").join("bench-scratch").join(format!(
        "{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()
    ));
    std::fs::create_dir_all(&scratch)?;
    let machine = machine();
    let started = Instant::now();
    let mut bench = Bench {
        smoke,
        scratch: scratch.clone(),
        binary,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?,
        figures: Vec::new(),
        loaded_rss_mib: 0.0,
        floor_loaded_rss_mib: 0.0,
        floor_idle_rss_mib: 0.0,
        after_logins_rss_mib: 0.0,
    };
    let wanted = |section: &str| {
        only.as_deref()
            .is_none_or(|o| section.to_lowercase().contains(&o.to_lowercase()))
    };
    let mut failures = Vec::new();
    let mut outcome = |name: &str, result: anyhow::Result<()>| {
        if let Err(e) = result {
            eprintln!("   {name} failed: {e:#}");
            failures.push(format!("{name}: {e:#}"));
        }
    };
    if wanted("probes") {
        eprintln!("== probes");
        outcome("probes", probes(&mut bench).await);
    }
    if wanted("footprint") {
        eprintln!("== footprint");
        outcome("footprint", footprint(&mut bench).await);
    }
    if wanted("data api") {
        eprintln!("== data api");
        outcome("data api", data_api(&mut bench).await);
    }
    if wanted("scaling") {
        eprintln!("== scaling");
        outcome("scaling", scaling(&mut bench).await);
    }
    if wanted("load balancer") {
        eprintln!("== load balancer");
        outcome("load balancer", load_balancer(&mut bench).await);
    }
    if wanted("footprint") && bench.loaded_rss_mib > 0.0 {
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

    let elapsed = started.elapsed();
    let mut text = table(&bench.figures, smoke);
    for f in &failures {
        text.push_str(&format!("\nFAILED: {f}\n"));
    }
    println!("{text}");
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(&root)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let stamp = chrono_like_now();
    let section = format!(
        "Measured {stamp} at commit `{commit}` in {:.0} s{}.\n\nMachine: {machine}.\n\n{text}",
        elapsed.as_secs_f64(),
        if smoke {
            " (smoke: a second or two per figure, not a measurement)"
        } else {
            ""
        }
    );
    let out = arg("--out").map(PathBuf::from).unwrap_or_else(|| {
        if smoke {
            root.join("target").join("bench-smoke.md")
        } else {
            root.join("BENCHMARKS.md")
        }
    });
    write_section(&out, &section)?;
    eprintln!("wrote {} ({:.0} s)", out.display(), elapsed.as_secs_f64());
    if failures.is_empty() {
        let _ = std::fs::remove_dir_all(&scratch);
    } else {
        eprintln!("logs kept in {}", scratch.display());
        bail!("{} step(s) failed", failures.len());
    }
    Ok(())
}

/// UTC date and time, without pulling a date crate into the harness.
fn chrono_like_now() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

impl Bench {
    fn duration(&self) -> Duration {
        if self.smoke {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(5)
        }
    }

    fn passes(&self) -> usize {
        if self.smoke {
            1
        } else {
            2
        }
    }

    fn spec(&self, name: &str, database_url: String, redis_url: String) -> ReplicaSpec {
        ReplicaSpec {
            name: name.to_owned(),
            database_url,
            redis_url,
            cpus: Some(SERVER_CPU),
            env: vec![
                (
                    "HEALTH_CHECK_INTERVAL_MS".into(),
                    CHECK_INTERVAL_MS.to_string(),
                ),
                (
                    "HEALTH_CHECK_TIMEOUT_MS".into(),
                    (CHECK_INTERVAL_MS / 2).to_string(),
                ),
            ],
        }
    }

    async fn replica(&self, spec: &ReplicaSpec) -> anyhow::Result<(Replica, Duration)> {
        let mut replica = Replica::spawn(&self.binary, spec, &self.scratch)?;
        let ready = replica
            .wait_ready(&self.client, Duration::from_secs(30))
            .await?;
        Ok((replica, ready))
    }

    /// The floor server, pinned like the replicas, answering `body` on `/live`.
    async fn floor(&self, body: &str) -> anyhow::Result<(ManagedChild, u16, Duration)> {
        let port = free_port();
        let exe = std::env::current_exe()?;
        let mut command = pinned(&exe, Some(SERVER_CPU));
        command.arg("--floor").arg(port.to_string()).arg(body);
        let spawned = Instant::now();
        let child = ManagedChild::spawn("floor", command, self.scratch.join("floor.log"))?;
        let url = format!("http://127.0.0.1:{port}/live");
        let client = &self.client;
        // Polled every 2 ms, as the replicas' /ready is, so both start-up times compare.
        while spawned.elapsed() < Duration::from_secs(10) {
            let up = client
                .get(&url)
                .timeout(Duration::from_millis(500))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            if up {
                return Ok((child, port, spawned.elapsed()));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        bail!("the floor server did not answer:\n{}", child.logs())
    }

    async fn load(&self, load: &Load) -> anyhow::Result<Stats> {
        run_wrk(load, &self.scratch).await
    }
}

fn best(a: Option<Stats>, b: Stats) -> Option<Stats> {
    Some(match a {
        Some(a) if a.rps >= b.rps => a,
        _ => b,
    })
}

/// `/live`, `/ready`, `/health` on one replica against the floor server; PostgreSQL round
/// trips under a `/health` storm against the same replica left idle.
async fn probes(bench: &mut Bench) -> anyhow::Result<()> {
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
    let rounds = health_secs * 1000.0 / CHECK_INTERVAL_MS as f64;
    // One round trip per round, plus one round in flight at either end.
    let bound = rounds + 2.0;
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
            format!("<= 1 per check round ({bound:.0})"),
            (health_queries as f64) <= bound,
        ),
    );
    Ok(())
}

/// Start-up time (migrations applied and fresh database), binary size, idle memory.
async fn footprint(bench: &mut Bench) -> anyhow::Result<()> {
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

/// The mixed workload on one replica directly, then on three behind real Traefik.
async fn load_balancer(bench: &mut Bench) -> anyhow::Result<()> {
    let dir = bench.scratch.join("cluster");
    let timings = Timings {
        check_interval: Duration::from_millis(CHECK_INTERVAL_MS),
        check_timeout: Duration::from_millis(500),
        ..Timings::default()
    };
    let cluster = Cluster::start(timings, &dir).await?;
    let balancer = Balancer::start_with(
        BalancerKind::Traefik,
        &cluster,
        &dir.join("traefik"),
        without_rate_limit,
    )
    .await?;
    let (requests, token, what) = mixed_workload(bench, &cluster.instances[0].url("")).await?;
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    for base in [cluster.instances[0].url(""), balancer.url("")] {
        check_requests(&bench.client, &base, &requests, &headers).await?;
    }
    let script = cycle_script(&requests, &headers);
    let d = bench.duration();
    let run = |base: String| Load {
        url: base,
        connections: CONNECTIONS,
        duration: d,
        script: Some(script.clone()),
        headers: Vec::new(),
        // Everything shares the two CPUs here: three replicas and Traefik cannot be
        // pinned apart from the load generator on this machine.
        cpus: None,
    };
    let (mut direct, mut through) = (None, None);
    for _ in 0..bench.passes() {
        direct = best(
            direct,
            bench.load(&run(cluster.instances[0].url(""))).await?,
        );
        through = best(through, bench.load(&run(balancer.url(""))).await?);
    }
    let (direct, through) = (direct.context("no run")?, through.context("no run")?);
    bench.figures.push(
        Figure::info(LB, format!("1 replica direct, {what}"), direct.text())
            .baseline("unpinned: replicas, Traefik and wrk share every CPU"),
    );
    bench.figures.push(
        Figure::info(
            LB,
            format!("3 replicas behind Traefik, {what}"),
            through.text(),
        )
        .baseline(format!(
            "direct: {} req/s, p99 {} ms",
            thousands(direct.rps),
            ms(direct.p99_ms)
        ))
        .ratio(through.rps / direct.rps),
    );
    drop(balancer);
    drop(cluster);
    Ok(())
}

type Request = (&'static str, String, Option<String>);

/// The drill's mix (6 reads, 2 writes, 2 searches out of 10) for the user and items
/// `Workload::prepare` creates.
fn mixed_requests(workload: &Workload) -> Vec<Request> {
    let mut requests = Vec::new();
    for i in 0..10 {
        let n = i % workload.item_ids.len();
        requests.push(match i {
            0..=5 => ("GET", format!("/api/items/{}", workload.item_ids[n]), None),
            6 | 7 => (
                "POST",
                "/api/items".to_owned(),
                Some(format!(
                    r#"{{"type":"note","title":"bench mixed {i}","content":"written by the bench","tags":["bench"]}}"#
                )),
            ),
            _ => (
                "GET",
                format!(
                    "/api/search?q={}",
                    workload.search_terms[n % workload.search_terms.len()]
                ),
                None,
            ),
        });
    }
    requests
}

/// The mixed workload: the data API's mix when it answers, else the probes.
async fn mixed_workload(
    bench: &Bench,
    base: &str,
) -> anyhow::Result<(Vec<Request>, Option<String>, String)> {
    match Workload::prepare(&bench.client, base).await {
        Ok(workload) => Ok((
            mixed_requests(&workload),
            Some(workload.token),
            "mixed data workload (6 item reads, 2 writes, 2 searches)".into(),
        )),
        Err(e) => {
            eprintln!("   no data API ({e:#}): the probe mix instead");
            Ok((
                vec![
                    ("GET", "/live".into(), None),
                    ("GET", "/ready".into(), None),
                    ("GET", "/health".into(), None),
                ],
                None,
                "probe mix (/live, /ready, /health)".into(),
            ))
        }
    }
}

/// Sends each request of a workload once and fails unless every answer is a success: a
/// throughput figure made of error responses would mean nothing.
async fn check_requests(
    client: &reqwest::Client,
    base: &str,
    requests: &[Request],
    headers: &[(&str, &str)],
) -> anyhow::Result<()> {
    for (method, path, body) in requests {
        let mut request = client.request(method.parse()?, format!("{base}{path}"));
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.clone());
        }
        let response = request.send().await?;
        let status = response.status();
        if !status.is_success() {
            bail!(
                "{method} {base}{path} answered {status}: {}",
                response.text().await.unwrap_or_default()
            );
        }
    }
    Ok(())
}

fn gets(paths: impl IntoIterator<Item = String>) -> Vec<Request> {
    paths.into_iter().map(|p| ("GET", p, None)).collect()
}

/// The paths of the first `pages` pages of the item list, following `nextCursor`.
async fn cursor_pages(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    limit: usize,
    pages: usize,
) -> anyhow::Result<Vec<String>> {
    let mut paths = vec![format!("/api/items?limit={limit}")];
    while paths.len() < pages {
        let last = paths.last().context("no page")?;
        let page: serde_json::Value = client
            .get(format!("{base}{last}"))
            .bearer_auth(token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let Some(cursor) = page["nextCursor"].as_str() else {
            break;
        };
        paths.push(format!("/api/items?limit={limit}&cursor={cursor}"));
    }
    Ok(paths)
}

impl Bench {
    /// A wrk run of `requests` in a cycle, with the bearer token, against `base`.
    async fn cycle(
        &self,
        base: &str,
        requests: &[Request],
        auth: &str,
        connections: u32,
    ) -> anyhow::Result<Stats> {
        let headers = [("Authorization", auth)];
        check_requests(&self.client, base, requests, &headers).await?;
        self.load(&Load {
            url: base.to_owned(),
            connections,
            duration: self.duration(),
            script: Some(cycle_script(requests, &headers)),
            headers: Vec::new(),
            cpus: Some(cartae_harness::bench::LOAD_CPU),
        })
        .await
    }
}

/// Item reads with the cache hit, missed every time, and with Redis down; writes, the
/// list with a cursor and search, each beside its cache-off run or `/live`.
async fn data_api(bench: &mut Bench) -> anyhow::Result<()> {
    let database = TestDatabase::create().await?;
    let redis = format!("redis://{REDIS_ADDR}");
    let db_url = pg_url(PG_ADDR, &database.name);
    let spec = bench.spec("data", db_url.clone(), redis.clone());
    let (replica, _) = bench.replica(&spec).await?;
    let base = replica.url("");
    let workload = match Workload::prepare(&bench.client, &base).await {
        Ok(w) => w,
        Err(e) => {
            bench.figures.push(Figure::missing(
                DATA,
                "every data API figure",
                format!("the data API does not answer: {e:#}"),
            ));
            return Ok(());
        }
    };
    let auth = format!("Bearer {}", workload.token);
    let reads = gets(
        workload
            .item_ids
            .iter()
            .map(|id| format!("/api/items/{id}")),
    );
    let pages = cursor_pages(&bench.client, &base, &workload.token, 4, 5).await?;
    let list = gets(pages);
    let search = gets(
        workload
            .search_terms
            .iter()
            .map(|t| format!("/api/search?q={t}")),
    );
    // Writes go to another user: reads and searches then see the same 20 items on every
    // replica, and no write bumps the readers' cache generation.
    let writer = Workload::prepare(&bench.client, &base).await?;
    let writer_auth = format!("Bearer {}", writer.token);
    let post: Vec<Request> = vec![(
        "POST",
        "/api/items".into(),
        Some(r#"{"type":"note","title":"bench write","content":"written by the bench","tags":["bench"]}"#.into()),
    )];
    let c = CONNECTIONS;
    bench.after_logins_rss_mib = rss_mib(replica.pid()).unwrap_or(0.0);
    let rss = RssPeak::start(replica.pid());
    let live = bench
        .load(&Load::get(replica.url("/live"), c, bench.duration()))
        .await?;
    let hit = bench.cycle(&base, &reads, &auth, c).await?;
    let list_on = bench.cycle(&base, &list, &auth, c).await?;
    let search_on = bench.cycle(&base, &search, &auth, c).await?;
    let write = bench.cycle(&base, &post, &writer_auth, c).await?;
    bench.loaded_rss_mib = bench.loaded_rss_mib.max(rss.peak_mib());
    drop(rss);
    drop(replica);

    // Cache off: entries expire 1 ms after they are written, so every read misses and
    // goes to PostgreSQL (then writes the entry back, as a miss does).
    let mut off_spec = bench.spec("cache-off", db_url.clone(), redis.clone());
    off_spec.env.push(("CACHE_ITEM_TTL_MS".into(), "1".into()));
    off_spec.env.push(("CACHE_QUERY_TTL_MS".into(), "1".into()));
    let (off_replica, _) = bench.replica(&off_spec).await?;
    let off_base = off_replica.url("");
    let off = bench.cycle(&off_base, &reads, &auth, c).await?;
    let list_off = bench.cycle(&off_base, &list, &auth, c).await?;
    let search_off = bench.cycle(&off_base, &search, &auth, c).await?;
    drop(off_replica);

    // Redis down: the replica reaches Redis through a proxy that refuses everything.
    let cut = TcpProxy::start(REDIS_ADDR.parse()?, false).await;
    cut.set_mode(cartae_harness::proxy::Mode::Cut);
    let down_spec = bench.spec("redis-down", db_url, format!("redis://{}", cut.addr));
    let (down_replica, _) = bench.replica(&down_spec).await?;
    let down = bench.cycle(&down_replica.url(""), &reads, &auth, c).await?;
    drop(down_replica);

    let rps = |s: &Stats| format!("{} req/s, p99 {} ms", thousands(s.rps), ms(s.p99_ms));
    bench.figures.push(
        Figure::info(DATA, "GET /api/items/{id}, cache hit", hit.text())
            .baseline(format!("cache off: {}", rps(&off)))
            .ratio(hit.rps / off.rps)
            .target("faster than cache off", hit.rps > off.rps),
    );
    bench.figures.push(
        Figure::info(
            DATA,
            "GET /api/items/{id}, cache off (CACHE_ITEM_TTL_MS=1: every read misses)",
            off.text(),
        )
        .baseline(format!("GET /live, same build: {}", rps(&live)))
        .ratio(off.rps / live.rps),
    );
    bench.figures.push(
        Figure::info(
            DATA,
            "GET /api/items/{id}, Redis down (proxy refusing)",
            down.text(),
        )
        .baseline(format!("cache off: {}", rps(&off)))
        .ratio(down.rps / off.rps),
    );
    bench.figures.push(
        Figure::info(DATA, "POST /api/items", write.text())
            .baseline(format!("GET /live: {}", rps(&live)))
            .ratio(write.rps / live.rps),
    );
    bench.figures.push(
        Figure::info(
            DATA,
            "GET /api/items?limit=4, 5 pages by cursor, cache on",
            list_on.text(),
        )
        .baseline(format!("cache off: {}", rps(&list_off)))
        .ratio(list_on.rps / list_off.rps),
    );
    bench.figures.push(
        Figure::info(
            DATA,
            "GET /api/search?q=, 4 terms, cache on",
            search_on.text(),
        )
        .baseline(format!("cache off: {}", rps(&search_off)))
        .ratio(search_on.rps / search_off.rps),
    );
    Ok(())
}

/// Rows for one user's items with `generate_series`: `g` from `from` to `to`, one second
/// apart, a title term in 0.1 % of them ("quarterly") and a body term in 1 % ("roadmap").
const INSERT_ITEMS: &str = r#"
INSERT INTO items (id, user_id, type, title, content, tags, created_at, updated_at)
SELECT gen_random_uuid(), u.id,
       (ARRAY['note', 'task', 'email', 'document'])[1 + g % 4],
       'item ' || g || CASE WHEN g % 1000 = 0 THEN ' quarterly' ELSE '' END,
       'body of item ' || g || CASE WHEN g % 100 = 0 THEN ' roadmap' ELSE '' END,
       ARRAY['bench', 'tag' || (g % 50)],
       timestamptz '2026-01-01 00:00:00+00' + g * interval '1 second' + u.k * interval '1 millisecond',
       timestamptz '2026-01-01 00:00:00+00' + g * interval '1 second' + u.k * interval '1 millisecond'
FROM generate_series($2::int, $3::int) AS g
JOIN (SELECT id, (row_number() OVER (ORDER BY email))::int - 1 AS k
      FROM users WHERE email LIKE $1) AS u
  ON g % $4::int = u.k % $4::int
"#;

struct Latency {
    stats: Stats,
}

impl Latency {
    fn text(&self) -> String {
        format!(
            "p50 {} ms, p99 {} ms",
            ms(self.stats.p50_ms),
            ms(self.stats.p99_ms)
        )
    }
}

/// List-page and search latency as one user's items grow, among other users' items;
/// keyset pages against what OFFSET would cost, measured in SQL.
async fn scaling(bench: &mut Bench) -> anyhow::Result<()> {
    use sqlx::{Executor, Row};
    let (stages, others): (&[i32], i32) = if bench.smoke {
        (&[1_000, 10_000], 10_000)
    } else {
        (&[10_000, 100_000, 1_000_000], 100_000)
    };
    let database = TestDatabase::create().await?;
    // Redis unreachable: pages are never served from the cache, so every request runs its
    // query, which is what scales. (A 1 ms TTL is not enough: at c=1 a request follows
    // the previous one within the millisecond.) The token check then costs one indexed
    // PostgreSQL lookup per request, the same at every size.
    let cut = TcpProxy::start(REDIS_ADDR.parse()?, false).await;
    cut.set_mode(cartae_harness::proxy::Mode::Cut);
    let spec = bench.spec(
        "scaling",
        pg_url(PG_ADDR, &database.name),
        format!("redis://{}", cut.addr),
    );
    let (replica, _) = bench.replica(&spec).await?;
    let base = replica.url("");
    let email = format!("scaling-{}@example.com", uuid::Uuid::new_v4().simple());
    let credentials =
        serde_json::json!({"email": email, "password": "scaling-password-0123456789"});
    let registered = bench
        .client
        .post(format!("{base}/api/auth/register"))
        .json(&credentials)
        .send()
        .await?;
    if registered.status() != 201 {
        bench.figures.push(Figure::missing(
            SCALING,
            "every scaling figure",
            format!(
                "the data API does not answer (register: {})",
                registered.status()
            ),
        ));
        return Ok(());
    }
    let token = cartae_harness::load::sign_in(&bench.client, &base, &credentials).await?;
    let auth = format!("Bearer {token}");
    let mut conn = database.connect().await?;
    conn.execute("SET synchronous_commit = off").await?;
    conn.execute("SET maintenance_work_mem = '256MB'").await?;
    let user: String = sqlx::query("SELECT id::text FROM users WHERE email = $1")
        .bind(&email)
        .fetch_one(&mut conn)
        .await?
        .get(0);
    let loading = Instant::now();
    let mut load_time = Duration::ZERO;
    conn.execute(
        "INSERT INTO users (id, email, password_hash)
         SELECT gen_random_uuid(), 'other-' || g || '@example.com', 'not a hash'
         FROM generate_series(1, 10) AS g",
    )
    .await?;
    sqlx::query(INSERT_ITEMS)
        .bind("other-%")
        .bind(1)
        .bind(others)
        .bind(10)
        .execute(&mut conn)
        .await?;
    load_time += loading.elapsed();
    let mut loaded = 0;
    let mut first_at_smallest: Option<(Stats, Stats)> = None;
    let latency_run = bench.duration().min(Duration::from_secs(3));
    let c1 = |url: String| Load {
        url,
        connections: 1,
        duration: latency_run,
        script: None,
        headers: vec![format!("Authorization: {auth}")],
        cpus: Some(cartae_harness::bench::LOAD_CPU),
    };
    for &n in stages {
        let started = Instant::now();
        sqlx::query(INSERT_ITEMS)
            .bind(&email)
            .bind(loaded + 1)
            .bind(n)
            .bind(1)
            .execute(&mut conn)
            .await?;
        // As autovacuum would: statistics, and the GIN pending list merged into the index.
        conn.execute("VACUUM ANALYZE items").await?;
        loaded = n;
        let load_secs = started.elapsed().as_secs_f64();
        load_time += started.elapsed();
        // The last item of the page before the one at 90 % depth.
        let depth = (n as f64 * 0.9) as i64;
        let row = sqlx::query(
            "SELECT (extract(epoch FROM created_at) * 1000000)::bigint, id::text FROM items
             WHERE user_id = $1::uuid ORDER BY created_at DESC, id DESC OFFSET $2 LIMIT 1",
        )
        .bind(&user)
        .bind(depth - 1)
        .fetch_one(&mut conn)
        .await?;
        let (micros, id): (i64, String) = (row.get(0), row.get(1));
        let cursor = cartae_harness::bench::base64url(format!("v1:{micros}:{id}").as_bytes());
        let first_path = "/api/items?limit=50".to_owned();
        let deep_path = format!("/api/items?limit=50&cursor={cursor}");
        let search_path = "/api/search?q=quarterly".to_owned();
        let deep: serde_json::Value = bench
            .client
            .get(format!("{base}{deep_path}"))
            .bearer_auth(&token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        if deep["items"].as_array().map(Vec::len) != Some(50) {
            bail!("the deep page did not answer 50 items: the cursor format changed? {deep}");
        }
        let first = bench.load(&c1(format!("{base}{first_path}"))).await?;
        let deep = bench.load(&c1(format!("{base}{deep_path}"))).await?;
        let search = bench.load(&c1(format!("{base}{search_path}"))).await?;

        // The same pages in SQL: keyset, and OFFSET at the same depth.
        let keyset_sql = "SELECT * FROM items WHERE user_id = $1::uuid
             AND (created_at, id) < (timestamptz 'epoch' + $2::bigint * interval '1 microsecond', $3::uuid)
             ORDER BY created_at DESC, id DESC LIMIT 51";
        let offset_sql = "SELECT * FROM items WHERE user_id = $1::uuid
             ORDER BY created_at DESC, id DESC OFFSET $2 LIMIT 51";
        let mut keyset_ms = Vec::new();
        let mut offset_ms = Vec::new();
        for _ in 0..6 {
            let t = Instant::now();
            let rows = sqlx::query(keyset_sql)
                .bind(&user)
                .bind(micros)
                .bind(&id)
                .fetch_all(&mut conn)
                .await?;
            keyset_ms.push(t.elapsed().as_secs_f64() * 1000.0);
            let t = Instant::now();
            let offset_rows = sqlx::query(offset_sql)
                .bind(&user)
                .bind(depth)
                .fetch_all(&mut conn)
                .await?;
            offset_ms.push(t.elapsed().as_secs_f64() * 1000.0);
            if rows.len() != offset_rows.len() {
                bail!("keyset and OFFSET pages differ in length");
            }
        }
        let median = |v: &mut Vec<f64>| {
            v.remove(0); // the first run warms the cache
            v.sort_by(|a, b| a.total_cmp(b));
            v[v.len() / 2]
        };
        let (k, o) = (median(&mut keyset_ms), median(&mut offset_ms));

        let label = thousands(n as f64);
        let smallest = first_at_smallest
            .get_or_insert((first.clone(), search.clone()))
            .clone();
        let first_l = Latency { stats: first };
        let deep_l = Latency { stats: deep };
        let search_l = Latency { stats: search };
        bench.figures.push(
            Figure::info(
                SCALING,
                format!("{label} items: list page 1 (limit 50)"),
                first_l.text(),
            )
            .baseline(format!(
                "at {}: p50 {} ms; loaded in {load_secs:.1} s",
                thousands(stages[0] as f64),
                ms(smallest.0.p50_ms)
            ))
            .ratio(first_l.stats.p50_ms / smallest.0.p50_ms),
        );
        let flat = deep_l.stats.p50_ms <= 2.0 * first_l.stats.p50_ms;
        bench.figures.push(
            Figure::info(
                SCALING,
                format!("{label} items: list page at 90 % depth (cursor)"),
                deep_l.text(),
            )
            .baseline(format!("page 1: p50 {} ms", ms(first_l.stats.p50_ms)))
            .ratio(deep_l.stats.p50_ms / first_l.stats.p50_ms)
            .target("flat: <= 2x page 1", flat),
        );
        bench.figures.push(
            Figure::info(
                SCALING,
                format!("{label} items: OFFSET {depth} in SQL (what OFFSET paging would cost)"),
                format!("{} ms", ms(o)),
            )
            .baseline(format!("keyset at the same depth in SQL: {} ms", ms(k)))
            .ratio(o / k),
        );
        bench.figures.push(
            Figure::info(
                SCALING,
                format!("{label} items: search \"quarterly\" (0.1 % of them)"),
                search_l.text(),
            )
            .baseline(format!(
                "at {}: p50 {} ms",
                thousands(stages[0] as f64),
                ms(smallest.1.p50_ms)
            ))
            .ratio(search_l.stats.p50_ms / smallest.1.p50_ms),
        );
    }
    bench.figures.push(Figure::info(
        SCALING,
        "Data generated and loaded (generate_series)",
        format!(
            "{} items of one user among {} of 10 others, {:.0} s in all",
            thousands(loaded as f64),
            thousands(others as f64),
            load_time.as_secs_f64()
        ),
    ));
    drop(replica);
    Ok(())
}
