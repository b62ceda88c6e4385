//! The HA promises, proven against three replicas of the release binary behind real
//! Traefik and real HAProxy. Needs `cargo build --release` first (scripts/test-all.sh
//! does), plus `traefik` and `haproxy` on the PATH.

use cartae_harness::balancer::BalancerKind;
use cartae_harness::cluster::Timings;
use cartae_harness::report::table;
use cartae_harness::scenarios::{Drill, SCENARIOS, TLS_SCENARIOS};
use cartae_harness::tls::TlsServers;

/// The two drills run one after the other: each is timing-sensitive, and together they
/// would oversubscribe a small CI machine.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `HA_SCENARIOS`, a comma list of parts of scenario names, runs only those (to work on
/// a few without the whole drill); unset, every scenario runs.
fn selected(scenario: &str) -> bool {
    match std::env::var("HA_SCENARIOS") {
        Ok(wanted) if !wanted.trim().is_empty() => {
            wanted.split(',').any(|part| scenario.contains(part.trim()))
        }
        _ => true,
    }
}

async fn drill(kind: BalancerKind) {
    drill_of(kind, None, &SCENARIOS).await;
}

async fn drill_of(kind: BalancerKind, tls: Option<TlsServers>, scenarios: &[&str]) {
    let _turn = ONE_AT_A_TIME.lock().await;
    let over = if tls.is_some() { "-tls" } else { "" };
    let dir = cartae_harness::repo_root().join("ha-logs").join(format!(
        "test-{}{over}-{}",
        kind.name(),
        uuid::Uuid::new_v4().simple()
    ));
    let drill = Drill::start_with(kind, &dir, Timings::default(), tls)
        .await
        .expect("the drill starts");
    let mut rows = Vec::new();
    for &scenario in scenarios.iter().filter(|s| selected(s)) {
        rows.push(drill.run(scenario).await);
    }
    println!("{}", table(&rows));
    let failed: Vec<_> = rows.iter().filter(|r| !r.passed()).collect();
    if failed.is_empty() {
        drop(drill);
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        let logs = drill.keep_logs();
        panic!(
            "{} scenario(s) failed behind {}; logs in {}:\n{}",
            failed.len(),
            kind.name(),
            logs.display(),
            table(&rows)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ha_promise_holds_behind_traefik() {
    drill(BalancerKind::Traefik).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ha_promise_holds_behind_haproxy() {
    drill(BalancerKind::Haproxy).await;
}

/// The outages again, with both dependencies reached over TLS (verify-full, and `rediss://`
/// with the run's CA) behind HAProxy: the pools' reconnect path, handshake included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outages_over_tls_behind_haproxy() {
    let servers = TlsServers::start().expect("TLS servers start");
    drill_of(BalancerKind::Haproxy, Some(servers), &TLS_SCENARIOS).await;
}
