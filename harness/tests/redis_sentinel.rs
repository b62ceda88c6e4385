//! The data-tier drill for Redis: three replicas of the release binary behind a real
//! balancer, Redis reached through Sentinel (a private master, replica and three sentinels
//! on loopback), the master SIGKILLed under mixed load. Needs `cargo build --release`
//! first, plus `redis-server`, `haproxy` and `traefik` on the PATH.

use cartae_harness::balancer::BalancerKind;
use cartae_harness::cluster::{ClusterOptions, Timings};
use cartae_harness::scenarios::run::DrillRun;
use cartae_harness::scenarios::{redis_sentinel, Drill};
use cartae_harness::tier::sentinel::{Passwords, SentinelGroup};

async fn drill(kind: BalancerKind) {
    let run = DrillRun::begin(&format!("sentinel-{}", kind.name())).await;
    let mut group = SentinelGroup::start(Passwords {
        master: Some("drill-master-pw".into()),
        sentinels: Some("drill-sentinel-pw".into()),
    })
    .await
    .expect("the sentinel group starts");
    let options = ClusterOptions {
        extra_env: group.env(),
        ..ClusterOptions::default()
    };
    let drill = Drill::start_with_options(kind, &run.dir, Timings::default(), options)
        .await
        .expect("the drill starts");
    let row = redis_sentinel::run(&drill, &mut group)
        .await
        .unwrap_or_else(|e| panic!("the scenario could not run: {e:#}"));
    run.finish(&[row], &[], (drill, group));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_master_killed_behind_haproxy() {
    drill(BalancerKind::Haproxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_master_killed_behind_traefik() {
    drill(BalancerKind::Traefik).await;
}
