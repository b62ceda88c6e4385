//! Through the load balancer: the mixed workload on one replica directly, then on three
//! behind real Traefik.

use std::time::Duration;

use anyhow::Context;

use super::table::{ms, thousands, Figure};
use super::wrk::{check_requests, cycle_script, Load, Request};
use super::{best, Bench, CHECK_INTERVAL_MS, CONNECTIONS};
use crate::balancer::{Balancer, BalancerKind, RATE_LIMIT};
use crate::cluster::{Cluster, Timings};
use crate::load::Workload;

const LB: &str = "Load balancer";

/// The mixed workload on one replica directly, then on three behind real Traefik.
pub(super) async fn run(bench: &mut Bench) -> anyhow::Result<()> {
    let dir = bench.scratch.join("cluster");
    let timings = Timings {
        check_interval: Duration::from_millis(CHECK_INTERVAL_MS),
        check_timeout: Duration::from_millis(500),
        ..Timings::default()
    };
    let cluster = Cluster::start(timings, &dir).await?;
    let balancer = Balancer::start_with(
        BalancerKind::Traefik,
        &cluster,
        &dir.join("traefik"),
        &[RATE_LIMIT],
    )
    .await?;
    let (requests, token, what) = mixed_workload(bench, &cluster.instances[0].url("")).await?;
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    for base in [cluster.instances[0].url(""), balancer.url("")] {
        check_requests(&bench.client, &base, &requests, &headers).await?;
    }
    let script = cycle_script(&requests, &headers);
    let d = bench.duration();
    let run = |base: String| Load {
        url: base,
        connections: CONNECTIONS,
        duration: d,
        script: Some(script.clone()),
        headers: Vec::new(),
        // Everything shares the two CPUs here: three replicas and Traefik cannot be
        // pinned apart from the load generator on this machine.
        cpus: None,
    };
    let (mut direct, mut through) = (None, None);
    for _ in 0..bench.passes() {
        direct = best(
            direct,
            bench.load(&run(cluster.instances[0].url(""))).await?,
        );
        through = best(through, bench.load(&run(balancer.url(""))).await?);
    }
    let (direct, through) = (direct.context("no run")?, through.context("no run")?);
    bench.figures.push(
        Figure::info(LB, format!("1 replica direct, {what}"), direct.text())
            .baseline("unpinned: replicas, Traefik and wrk share every CPU"),
    );
    bench.figures.push(
        Figure::info(
            LB,
            format!("3 replicas behind Traefik, {what}"),
            through.text(),
        )
        .baseline(format!(
            "direct: {} req/s, p99 {} ms",
            thousands(direct.rps),
            ms(direct.p99_ms)
        ))
        .ratio(through.rps / direct.rps),
    );
    drop(balancer);
    drop(cluster);
    Ok(())
}

/// The drill's mix (6 reads, 2 writes, 2 searches out of 10) for the user and items
/// `Workload::prepare` creates.
fn mixed_requests(workload: &Workload) -> Vec<Request> {
    let mut requests = Vec::new();
    for i in 0..10 {
        let n = i % workload.item_ids.len();
        requests.push(match i {
            0..=5 => ("GET", format!("/api/items/{}", workload.item_ids[n]), None),
            6 | 7 => (
                "POST",
                "/api/items".to_owned(),
                Some(format!(
                    r#"{{"type":"note","title":"bench mixed {i}","content":"written by the bench","tags":["bench"]}}"#
                )),
            ),
            _ => (
                "GET",
                format!(
                    "/api/search?q={}",
                    workload.search_terms[n % workload.search_terms.len()]
                ),
                None,
            ),
        });
    }
    requests
}

/// The mixed workload: the data API's mix when it answers, else the probes.
async fn mixed_workload(
    bench: &Bench,
    base: &str,
) -> anyhow::Result<(Vec<Request>, Option<String>, String)> {
    match Workload::prepare(&bench.client, base).await {
        Ok(workload) => Ok((
            mixed_requests(&workload),
            Some(workload.token),
            "mixed data workload (6 item reads, 2 writes, 2 searches)".into(),
        )),
        Err(e) => {
            // The probes are not routed through the balancer: its one public path that
            // needs no database instead.
            eprintln!("   no data API ({e:#}): /api/openapi.json instead");
            Ok((
                vec![("GET", "/api/openapi.json".into(), None)],
                None,
                "/api/openapi.json".into(),
            ))
        }
    }
}
