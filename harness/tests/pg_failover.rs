//! PostgreSQL failover, proven on real engines (`scenarios::pg_failover`): the data tier
//! alone, then three replicas of the release binary behind real HAProxy on it.
//!
//! Needs `cargo build --release` first, and patroni, etcd and haproxy on the machine
//! (scripts/test-all.sh installs them). About two minutes.

use cartae_harness::balancer::BalancerKind;
use cartae_harness::cluster::{ClusterOptions, Timings};
use cartae_harness::scenarios::pg_failover::{failover_alone, under_load, DATABASE, ROLE};
use cartae_harness::scenarios::run::DrillRun;
use cartae_harness::scenarios::Drill;
use cartae_harness::tier::patroni::PatroniCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patroni_fails_over_and_rejoins_alone() {
    let run = DrillRun::begin("test-pg-failover-alone").await;
    let mut tier = PatroniCluster::start().await.expect("the data tier starts");
    let problems: Vec<String> = failover_alone(&mut tier)
        .await
        .err()
        .map(|e| format!("{e:#}"))
        .into_iter()
        .collect();
    run.finish(&[], &problems, tier);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_failover_under_load_behind_haproxy() {
    let run = DrillRun::begin("test-pg-failover").await;
    let mut tier = PatroniCluster::start().await.expect("the data tier starts");
    tier.create_database(DATABASE, ROLE)
        .await
        .expect("the service's database is created");
    let options = ClusterOptions {
        extra_env: vec![("DATABASE_URL".to_owned(), tier.url(ROLE, DATABASE))],
        ..ClusterOptions::default()
    };
    let drill =
        Drill::start_with_options(BalancerKind::Haproxy, &run.dir, Timings::default(), options)
            .await
            .expect("the drill starts on the Patroni cluster");
    let rows = under_load(&drill, &mut tier).await;
    run.finish(&rows, &[], (drill, tier));
}
