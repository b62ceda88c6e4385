//! The data-tier drill for Redis: three replicas of the release binary behind a real
//! balancer, Redis reached through Sentinel (a private master, replica and three sentinels
//! on loopback), the master SIGKILLed under mixed load. Needs `cargo build --release`
//! first, plus `redis-server`, `haproxy` and `traefik` on the PATH.

use cartae_harness::balancer::BalancerKind;
use cartae_harness::cluster::{ClusterOptions, Timings};
use cartae_harness::report::table;
use cartae_harness::scenarios::{redis_sentinel, Drill};
use cartae_harness::sentinel::{Passwords, SentinelGroup};

/// One drill at a time: each is timing-sensitive, and two would oversubscribe 2 cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn drill(kind: BalancerKind) {
    let _turn = ONE_AT_A_TIME.lock().await;
    let dir = cartae_harness::repo_root().join("ha-logs").join(format!(
        "sentinel-{}-{}",
        kind.name(),
        uuid::Uuid::new_v4().simple()
    ));
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
    let drill = Drill::start_with_options(kind, &dir, Timings::default(), options)
        .await
        .expect("the drill starts");
    let row = redis_sentinel::run(&drill, &mut group)
        .await
        .unwrap_or_else(|e| panic!("the scenario could not run: {e:#}"));
    let rows = [row];
    println!("{}", table(&rows));
    if rows[0].passed() {
        drop(drill);
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        let logs = drill.keep_logs();
        let _ = std::fs::write(logs.join("sentinel.log"), group.logs());
        panic!(
            "{} failed behind {}; logs in {}:\n{}",
            redis_sentinel::NAME,
            kind.name(),
            logs.display(),
            table(&rows)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_master_killed_behind_haproxy() {
    drill(BalancerKind::Haproxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_master_killed_behind_traefik() {
    drill(BalancerKind::Traefik).await;
}
