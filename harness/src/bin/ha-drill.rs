//! The full HA drill: every scenario behind Traefik, then behind HAProxy, and a table.
//!
//!   cargo build --release && cargo run --release -p cartae-harness --bin ha-drill
//!
//! Options: `--lb traefik|haproxy` (default both), `--only <scenario substring>`,
//! `--out <file.md>` to also write the table. Logs of every replica and balancer stay in
//! `ha-logs/<timestamp>/` when a scenario fails.

use std::path::PathBuf;

use cartae_harness::balancer::BalancerKind;
use cartae_harness::cluster::Timings;
use cartae_harness::report::{table, Row};
use cartae_harness::scenarios::{Drill, SCENARIOS};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let balancers = match arg("--lb").as_deref() {
        Some("traefik") => vec![BalancerKind::Traefik],
        Some("haproxy") => vec![BalancerKind::Haproxy],
        None => vec![BalancerKind::Traefik, BalancerKind::Haproxy],
        Some(other) => anyhow::bail!("--lb: unknown balancer {other}"),
    };
    let only = arg("--only");
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let root = cartae_harness::repo_root()
        .join("ha-logs")
        .join(stamp.to_string());
    let mut rows: Vec<Row> = Vec::new();
    for kind in balancers {
        let dir: PathBuf = root.join(kind.name());
        eprintln!(
            "== {}: starting three replicas and the balancer",
            kind.name()
        );
        let drill = Drill::start(kind, &dir, Timings::default()).await?;
        for scenario in SCENARIOS
            .iter()
            .filter(|s| only.as_deref().is_none_or(|o| s.contains(o)))
        {
            eprintln!("== {}: {scenario}", kind.name());
            let row = drill.run(scenario).await;
            eprintln!(
                "   {}",
                if row.passed() {
                    "PASS".to_owned()
                } else {
                    format!("FAIL: {:?}", row.problems)
                }
            );
            rows.push(row);
        }
        if rows.iter().any(|r| !r.passed()) {
            eprintln!("logs kept in {}", drill.keep_logs().display());
        }
    }
    let text = table(&rows);
    println!("{text}");
    if let Some(out) = arg("--out") {
        std::fs::write(out, &text)?;
    }
    if rows.iter().all(Row::passed) {
        if only.is_none() {
            let _ = std::fs::remove_dir_all(&root);
        }
        Ok(())
    } else {
        std::process::exit(1)
    }
}
