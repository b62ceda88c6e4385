//! Runs cartae-database-api for real, on loopback, to prove its HA promises and measure it.
//!
//! Its layers, top to bottom (imports point down; `infra/ci/check-layers.py harness/src`
//! checks it):
//!
//! 1. The drills and benchmarks.
//!    - [`scenarios`]: every drill, one module per promise (PITR, PostgreSQL failover and
//!      scaling included), and [`scenarios::run`], the one runner each drill test uses
//!      (its turn, its log folder, its table, its verdict).
//!    - [`bench`]: the benchmark suite (`src/bin/bench.rs`), a module per section of
//!      `BENCHMARKS.md`.
//! 2. What routes to the replicas or watches them.
//!    - [`balancer`]: real Traefik with the shipped dynamic configuration, or real HAProxy
//!      with the shipped configuration, only the server addresses and timings rewritten.
//!    - [`prometheus`]: a real Prometheus with the shipped rules; [`alertmanager`]: a real
//!      Alertmanager with the shipped configuration, and the webhook its alerts reach.
//!    - [`dns`]: a real DNS server (dnsmasq) publishing the replicas under the compose
//!      service's name, for the drills that discover them as the stack does.
//!    - [`engine`]: a real Docker engine: the image built from the shipped Dockerfile and
//!      the shipped compose stack.
//! 3. The replicas: [`cluster`], three replicas of the release binary, started, replaced
//!    and rolled back by the shipped `infra/scripts/rolling-update.sh`.
//! 4. The parts.
//!    - [`tier`]: private data tiers a test may kill: one way to run a PostgreSQL, and on
//!      it TLS-only servers, an archiving server, a Patroni cluster; Redis under Sentinel.
//!    - [`proxy`]: a TCP proxy between the replicas and PostgreSQL or Redis, to cut, hang or
//!      slow a dependency.
//!    - [`database`]: a database of its own for each test, on the shared PostgreSQL.
//!    - [`load`]: a load client with bounded workers, requests and time, recording every
//!      request's outcome and latency; [`report`]: the drill's table; [`history`]: the
//!      record of a run's item operations and the checker that holds it to PostgreSQL.
//!    - [`process`]: child processes stopped by their PID, whatever happens.
//!    - [`floor`]: the floor server the benchmarks' probe figures compare with.

pub mod alertmanager;
pub mod balancer;
pub mod bench;
pub mod cluster;
pub mod database;
pub mod dns;
pub mod engine;
pub mod floor;
pub mod history;
pub mod load;
pub mod process;
pub mod prometheus;
pub mod proxy;
pub mod report;
pub mod scenarios;
pub mod tier;

use std::path::PathBuf;

/// The repository root (the harness crate lives one level below it).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}
