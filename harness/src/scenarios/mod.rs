//! The drill: each scenario exercises one HA promise against the live cluster behind a
//! real load balancer, measures it, and leaves the cluster as it found it (three ready
//! replicas). One module per scenario; [`shared`] holds the counting and the watchers.
//!
//! Every row counts each request's first attempt. A scenario that tolerates failures says
//! which ones and why in its failure budget, and the client retries a write only in the
//! scenarios that kill replicas (the retry is then what a careful client does, and the
//! row shows how many there were).

mod brownout;
mod checked;
mod crash;
mod deadline;
mod deadlocks;
pub mod engine;
mod failed_rollout;
mod frozen;
mod login_storm;
mod logout;
mod outages;
mod overload_ramp;
pub mod pg_failover;
pub mod pitr;
pub mod redis_sentinel;
mod rolling;
mod rotation;
pub mod run;
mod saturation;
pub mod scale;
mod schema;
mod shared;
mod slow_clients;
mod steady;
mod sticky;
mod two_down;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use crate::balancer::{Balancer, BalancerKind};
use crate::cluster::{Cluster, ClusterOptions, Timings};
use crate::load::{LoadRun, LoadSpec, Workload};
use crate::proxy::Mode;
use crate::report::Row;

pub use shared::{check_writes_in, counted, judge, metric_sum, row, Window};

pub struct Drill {
    pub cluster: Cluster,
    pub balancer: Balancer,
    pub client: reqwest::Client,
    pub workload: Workload,
    pub dir: PathBuf,
}

/// The scenarios, in the order the drill runs them.
pub const SCENARIOS: [&str; 21] = [
    "steady state",
    "rolling update x3",
    "crash (SIGKILL)",
    "frozen replica (SIGSTOP 12 s)",
    "two replicas down",
    "PostgreSQL outage 10 s",
    "Redis outage 10 s",
    "failed rollout",
    "schema: roll forward and back",
    "schema: failed migration",
    "schema: restart on a newer schema",
    "sticky sessions",
    "deadlock-prone batches",
    "pool saturation",
    "PostgreSQL brownout",
    "deadline-cut writes",
    "overload ramp",
    "login storm",
    "slow clients",
    "secret rotation",
    "logout under load",
];

/// The drill over TLS: the outages cut and restore TLS connections, so the pools must
/// reconnect with a full handshake. Enough to prove the reconnect path; the other
/// scenarios do not depend on how the dependencies are reached.
pub const TLS_SCENARIOS: [&str; 2] = ["PostgreSQL outage 10 s", "Redis outage 10 s"];

impl Drill {
    /// Starts the cluster and the balancer, then prepares the workload through it.
    pub async fn start(kind: BalancerKind, dir: &Path, timings: Timings) -> anyhow::Result<Self> {
        Self::start_with(kind, dir, timings, None).await
    }

    /// As [`Self::start`], the replicas reaching `tls`'s servers over TLS when given.
    pub async fn start_with(
        kind: BalancerKind,
        dir: &Path,
        timings: Timings,
        tls: Option<crate::tier::tls::TlsServers>,
    ) -> anyhow::Result<Self> {
        let options = ClusterOptions {
            tls,
            ..ClusterOptions::default()
        };
        Self::start_with_options(kind, dir, timings, options).await
    }

    /// As [`Self::start`], the cluster changed by `options` (a data tier of the drill's own).
    pub async fn start_with_options(
        kind: BalancerKind,
        dir: &Path,
        timings: Timings,
        options: ClusterOptions,
    ) -> anyhow::Result<Self> {
        let cluster = Cluster::start_with_options(timings, &dir.join("cluster"), options).await?;
        let balancer = Balancer::start(kind, &cluster, &dir.join(kind.name())).await?;
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(32)
            .build()?;
        let workload = Workload::prepare(&client, &balancer.url(""))
            .await
            .context("prepare the workload")?;
        Ok(Self {
            cluster,
            balancer,
            client,
            workload,
            dir: dir.to_owned(),
        })
    }

    pub async fn run(&self, scenario: &str) -> Row {
        let result = match scenario {
            "steady state" => steady::run(self).await,
            "rolling update x3" => rolling::run(self).await,
            "crash (SIGKILL)" => crash::run(self).await,
            "frozen replica (SIGSTOP 12 s)" => frozen::run(self).await,
            "two replicas down" => two_down::run(self).await,
            "PostgreSQL outage 10 s" => outages::postgres(self).await,
            "Redis outage 10 s" => outages::redis(self).await,
            "failed rollout" => failed_rollout::run(self).await,
            "schema: roll forward and back" => schema::roll_forward_and_back(self).await,
            "schema: failed migration" => schema::failed_migration(self).await,
            "schema: restart on a newer schema" => schema::restart_on_newer_schema(self).await,
            "sticky sessions" => sticky::run(self).await,
            "deadlock-prone batches" => deadlocks::run(self).await,
            "pool saturation" => saturation::run(self).await,
            "PostgreSQL brownout" => brownout::run(self).await,
            "deadline-cut writes" => deadline::run(self).await,
            "overload ramp" => overload_ramp::run(self).await,
            "login storm" => login_storm::run(self).await,
            "slow clients" => slow_clients::run(self).await,
            "secret rotation" => rotation::run(self).await,
            "logout under load" => logout::run(self).await,
            other => Err(anyhow::anyhow!("unknown scenario {other}")),
        };
        let mut row = result.unwrap_or_else(|e| {
            let mut r = shared::row(scenario, self, &[]);
            r.problems.push(format!("{e:#}"));
            r
        });
        row.scenario = scenario.to_owned();
        self.restore(&mut row.problems).await;
        row
    }

    /// Leaves three ready, routed replicas behind, whatever happened. A scenario that
    /// kills a replica restarts it itself, so one found missing here is that scenario's
    /// problem: it is restarted so the next scenario can run, and recorded.
    async fn restore(&self, problems: &mut Vec<String>) {
        self.cluster.pg_proxy.set_mode(Mode::Forward);
        self.cluster.pg_proxy.set_latency(Duration::ZERO);
        self.cluster.redis_proxy.set_mode(Mode::Forward);
        let identities = std::cell::RefCell::new(Vec::new());
        crate::process::wait_until(Duration::from_secs(5), || {
            let identities = &identities;
            async move {
                let now = self.cluster.identities(&self.client).await;
                let all = now.iter().all(Result::is_ok);
                *identities.borrow_mut() = now;
                all
            }
        })
        .await;
        let missing: Vec<&str> = identities
            .borrow()
            .iter()
            .zip(&self.cluster.instances)
            .filter(|(id, _)| id.is_err())
            .map(|(_, i)| i.name.as_str())
            .collect();
        if !missing.is_empty() {
            problems.push(format!(
                "{missing:?} not running after the scenario: the drill restarted them"
            ));
            if let Err(e) = self.cluster.restart_missing().await {
                problems.push(format!("could not restore the cluster: {e:#}"));
            }
        }
        if !self
            .cluster
            .wait_all_ready(&self.client, Duration::from_secs(15))
            .await
        {
            problems.push("not every replica ready after the scenario".to_owned());
        }
        if !self.all_routed(Duration::from_secs(15)).await {
            problems.push("the balancer did not route to every replica afterwards".to_owned());
        }
    }

    /// Writes the logs a person needs to see why a scenario failed.
    pub fn keep_logs(&self) -> PathBuf {
        let path = self.dir.join("replicas.log");
        let _ = std::fs::write(&path, self.cluster.logs());
        self.dir.clone()
    }

    fn load(&self, spec: LoadSpec) -> LoadRun {
        LoadRun::start(
            self.client.clone(),
            self.balancer.url(""),
            self.workload.clone(),
            spec,
        )
    }

    /// One load-balancer health-check round: interval plus timeout.
    fn lb_round(&self) -> Duration {
        let t = &self.cluster.timings;
        t.lb_check_interval + t.lb_check_timeout
    }
}
