//! Scaling out and in under load with the stack's own discovery (`scenarios::scale`),
//! behind HAProxy on DNS and behind Traefik fed by its provider's labels.
//!
//! Needs `cargo build --release` first, `haproxy`, `traefik`, `dnsmasq` and `prometheus`
//! on the PATH, and root (dnsmasq on port 53, `unshare -m`).

use cartae_harness::balancer::BalancerKind;
use cartae_harness::scenarios::run::DrillRun;
use cartae_harness::scenarios::scale::{steps, Stack};

async fn drill(kind: BalancerKind) {
    let run = DrillRun::begin(&format!("test-scale-{}", kind.name())).await;
    let mut stack = Stack::start(kind, &run.dir)
        .await
        .expect("the scale drill starts");
    let rows = steps(&mut stack).await;
    run.finish(&rows, &[], stack);
}

/// HAProxy's `server-template` on DNS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_behind_haproxy_follows_dns() {
    drill(BalancerKind::Haproxy).await;
}

/// Traefik's router and service rewritten from the shipped labels as its Docker provider
/// would, on each change; Prometheus still on DNS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_behind_traefik_follows_its_provider() {
    drill(BalancerKind::Traefik).await;
}
