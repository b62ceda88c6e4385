//! The benchmark suite: probe cost against a floor server, footprint, start-up, the data
//! API and its scaling with data, and three replicas behind Traefik against one direct.
//!
//! `src/bin/bench.rs` parses the command line and calls [`run`]; each section of the
//! table, one row group of `BENCHMARKS.md`, is its own module:
//!
//! - `probes`: probe cost against the floor server, PostgreSQL round trips per `/health`;
//! - `footprint`: binary size, start-up time, resident memory idle and under load;
//! - `data_api`: item reads (cache hit, cache off, Redis down), writes, list and search;
//!   `floors`: the item reads against their floor servers, and with 1 ms added to every
//!   Redis and PostgreSQL round trip;
//! - `scaling`: list and search latency as a user's items grow, keyset against OFFSET;
//! - `overload`: one replica's goodput and p99 against offered load at a fixed admission
//!   limit (drawn to `docs/overload-curve.svg`), and a refusal's CPU cost beside a served
//!   request's;
//! - `load_balancer`: three replicas behind Traefik against one direct.
//!
//! The shared plumbing: [`replica`] (a pinned replica, resident memory), [`wrk`] (the load
//! generator and its workloads), [`table`] (figures, the Markdown table, `BENCHMARKS.md`),
//! and here the suite's state ([`Bench`]) and its run.
//!
//! Every figure stands beside a baseline measured in the same run, because this machine
//! is shared: absolute numbers move from run to run, ratios within one run hold. Servers
//! under test are pinned to CPU 0 and `wrk` to CPU 1 when `taskset` exists. Every process
//! the suite starts binds 127.0.0.1 on free ports and is killed by its PID on drop, so
//! also when a step fails.

mod data_api;
mod floors;
mod footprint;
mod load_balancer;
mod overload;
mod probes;
pub mod replica;
mod scaling;
pub mod table;
pub mod wrk;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;

use crate::cluster::release_binary;
use crate::process::{free_port, ManagedChild};
use replica::{pinned, Replica, ReplicaSpec, LOAD_CPU, SERVER_CPU};
use table::{chrono_like_now, machine, table, write_section, Figure};
use wrk::{check_requests, cycle_script, ensure_wrk, run_wrk, Load, Request, Stats};

/// Connections held open by the load generator in throughput runs.
const CONNECTIONS: u32 = 32;
/// The health-check interval of the replicas under test: shorter than production's 5 s
/// so that a run spans several rounds and the round-trip count means something.
const CHECK_INTERVAL_MS: u64 = 1000;

struct Bench {
    smoke: bool,
    scratch: PathBuf,
    binary: PathBuf,
    compare: Option<Compare>,
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

/// What the command line asks for.
pub struct Options {
    /// A second or two per figure, no verdicts.
    pub smoke: bool,
    /// Only the sections whose name contains this (case-insensitive).
    pub only: Option<String>,
    /// Where the table goes instead of `BENCHMARKS.md` (or `target/bench-smoke.md`).
    pub out: Option<PathBuf>,
    /// Another build of the service whose authenticated cache hit is measured beside this
    /// build's, in the same run: a before and after that the machine's drift cannot fake.
    pub compare: Option<Compare>,
}

/// Another build of the service, and what the table calls it.
#[derive(Clone)]
pub struct Compare {
    pub binary: PathBuf,
    pub label: String,
}

/// Runs the wanted sections, prints the table and writes it to the output file.
pub async fn run(options: Options) -> anyhow::Result<()> {
    let Options {
        smoke,
        only,
        out,
        compare,
    } = options;
    ensure_wrk()?;
    // Absolute: replicas start in a scratch directory, where a relative path would not
    // resolve.
    let binary = std::fs::canonicalize(release_binary()?)?;
    let root = crate::repo_root();
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
        compare: match compare {
            Some(c) => Some(Compare {
                binary: std::fs::canonicalize(&c.binary)?,
                label: c.label,
            }),
            None => None,
        },
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
        outcome("probes", probes::run(&mut bench).await);
    }
    if wanted("footprint") {
        eprintln!("== footprint");
        outcome("footprint", footprint::run(&mut bench).await);
    }
    if wanted("data api") {
        eprintln!("== data api");
        outcome("data api", data_api::run(&mut bench).await);
    }
    if wanted("scaling") {
        eprintln!("== scaling");
        outcome("scaling", scaling::run(&mut bench).await);
    }
    if wanted("overload") {
        eprintln!("== overload");
        outcome("overload", overload::run(&mut bench).await);
    }
    if wanted("load balancer") {
        eprintln!("== load balancer");
        outcome("load balancer", load_balancer::run(&mut bench).await);
    }
    if wanted("footprint") {
        footprint::under_load(&mut bench);
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
    let out = out.unwrap_or_else(|| {
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
        self.replica_of(&self.binary, spec).await
    }

    /// A replica of the given build of the service.
    async fn replica_of(
        &self,
        binary: &std::path::Path,
        spec: &ReplicaSpec,
    ) -> anyhow::Result<(Replica, Duration)> {
        let mut replica = Replica::spawn(binary, spec, &self.scratch)?;
        let ready = replica
            .wait_ready(&self.client, Duration::from_secs(30))
            .await?;
        Ok((replica, ready))
    }

    /// The floor server, pinned like the replicas, answering `body` on `/live`.
    async fn floor(&self, body: &str) -> anyhow::Result<(ManagedChild, u16, Duration)> {
        self.floor_server(&["live", body], "/live", 200).await
    }

    /// A floor server (`floor::main`'s `kind <port> args…`), pinned like the replicas;
    /// returns once `probe` answers `up` (a data floor answers 401 to a request without a
    /// token).
    async fn floor_server(
        &self,
        kind_and_args: &[&str],
        probe: &str,
        up: u16,
    ) -> anyhow::Result<(ManagedChild, u16, Duration)> {
        let port = free_port();
        let exe = std::env::current_exe()?;
        let mut command = pinned(&exe, Some(SERVER_CPU));
        command
            .arg("--floor")
            .arg(kind_and_args[0])
            .arg(port.to_string())
            .args(&kind_and_args[1..]);
        let spawned = Instant::now();
        let log = self.scratch.join(format!("floor-{}.log", kind_and_args[0]));
        let child = ManagedChild::spawn("floor", command, log)?;
        let url = format!("http://127.0.0.1:{port}{probe}");
        let client = &self.client;
        // Polled every 2 ms, as the replicas' /ready is, so both start-up times compare.
        while spawned.elapsed() < Duration::from_secs(10) {
            let answered = client
                .get(&url)
                .timeout(Duration::from_millis(500))
                .send()
                .await
                .is_ok_and(|r| r.status() == up);
            if answered {
                return Ok((child, port, spawned.elapsed()));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        bail!("the floor server did not answer:\n{}", child.logs())
    }

    async fn load(&self, load: &Load) -> anyhow::Result<Stats> {
        run_wrk(load, &self.scratch).await
    }

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
            cpus: Some(LOAD_CPU),
        })
        .await
    }
}

fn best(a: Option<Stats>, b: Stats) -> Option<Stats> {
    Some(match a {
        Some(a) if a.rps >= b.rps => a,
        _ => b,
    })
}
