//! The HA promises, proven against three replicas of the release binary behind real
//! Traefik and real HAProxy. Needs `cargo build --release` first (scripts/test-all.sh
//! does), plus `traefik` and `haproxy` on the PATH.

use cartae_harness::balancer::BalancerKind;
use cartae_harness::cluster::Timings;
use cartae_harness::scenarios::run::{selected, DrillRun};
use cartae_harness::scenarios::{Drill, SCENARIOS, TLS_SCENARIOS};
use cartae_harness::tier::tls::TlsServers;

async fn drill(kind: BalancerKind) {
    drill_of(kind, None, &SCENARIOS).await;
}

async fn drill_of(kind: BalancerKind, tls: Option<TlsServers>, scenarios: &[&str]) {
    let over = if tls.is_some() { "-tls" } else { "" };
    let run = DrillRun::begin(&format!("test-{}{over}", kind.name())).await;
    let drill = Drill::start_with(kind, &run.dir, Timings::default(), tls)
        .await
        .expect("the drill starts");
    let mut rows = Vec::new();
    for &scenario in scenarios.iter().filter(|s| selected("HA_SCENARIOS", s)) {
        rows.push(drill.run(scenario).await);
    }
    run.finish(&rows, &[], drill);
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
