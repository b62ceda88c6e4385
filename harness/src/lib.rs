//! Runs cartae-database-api for real, on loopback, to prove its HA promises and measure it.
//!
//! - [`proxy`]: a TCP proxy between the replicas and PostgreSQL or Redis, to cut, hang or
//!   slow a dependency.
//! - [`process`]: child processes stopped by their PID, whatever happens.
//! - [`cluster`]: three replicas of the release binary, started, replaced and rolled back by
//!   the shipped `infra/scripts/rolling-update.sh` through its process runtime.
//! - [`balancer`]: real Traefik with the shipped dynamic configuration, or real HAProxy
//!   with the shipped configuration, only the server addresses and timings rewritten.
//! - [`dns`]: a real DNS server (dnsmasq) publishing the replicas under the compose
//!   service's name, for the drills that discover them as the stack does.
//! - [`load`]: a load client with bounded workers, requests and time, recording every
//!   request's outcome and latency.
//! - [`history`]: the record of a run's item operations (start, end, ok, failed or
//!   unknown) and the checker that holds it to PostgreSQL's final rows.
//! - [`patroni`]: a private PostgreSQL data tier (etcd, two nodes under Patroni, synchronous
//!   replication) whose primary a drill can kill like a lost machine.
//! - [`tls`]: a CA made at run time, and private PostgreSQL and Redis servers that speak
//!   only TLS.
//! - [`pitr`]: a PostgreSQL archiving its WAL with pgBackRest, and the restore drill.
//! - [`sentinel`]: a private Redis master, replica and three sentinels, for the drills and
//!   tests where Sentinel fails Redis over.
//! - [`engine`]: a real Docker engine: the image built from the shipped Dockerfile and the
//!   shipped compose stack, which [`scenarios::engine`] drills.
//! - [`scenarios`]: the drill itself, one module per promise, and [`report`] its table.
//! - [`bench`]: the benchmark suite (`src/bin/bench.rs`), a module per section of
//!   `BENCHMARKS.md`; [`floor`]: the floor server its probe figures compare with.

pub mod balancer;
pub mod bench;
pub mod cluster;
pub mod database;
pub mod dns;
pub mod engine;
pub mod floor;
pub mod history;
pub mod load;
pub mod patroni;
pub mod pitr;
pub mod process;
pub mod prometheus;
pub mod proxy;
pub mod report;
pub mod scenarios;
pub mod sentinel;
pub mod tls;

use std::path::PathBuf;

/// The repository root (the harness crate lives one level below it).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}
