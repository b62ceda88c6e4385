//! etcd's auto-compaction bounds the database Patroni writes into, proven on the real
//! thing: two data tiers on loopback (etcd, two PostgreSQL under Patroni, `loop_wait` 1 s),
//! one etcd with the shipped compaction mode and a short retention, one without, run side
//! by side while the primary takes a small write load. etcd keeps every revision unless
//! compacted: the uncompacted one's history (and the space it uses) only grows, the
//! compacted one's stays bounded. docker-compose.ha.yml sets the mode (`periodic`) with an
//! hour of retention; the test shortens only the retention.
//!
//! Needs patroni and etcd (scripts/test-all.sh installs them). About 100 s.

use std::time::{Duration, Instant};

use anyhow::Context;
use cartae_harness::tier::patroni::{PatroniCluster, TierOptions};
use sqlx::Executor;

/// How long both tiers run once healthy.
const RUN: Duration = Duration::from_secs(75);

/// The compacted tier's retention: a few compactions within [`RUN`].
const RETENTION: &str = "10s";

/// What etcd says of its own database, from its `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
struct EtcdDb {
    revision: f64,
    compacted_to: f64,
    file_bytes: f64,
    in_use_bytes: f64,
}

async fn etcd_db(client: &reqwest::Client, tier: &PatroniCluster) -> anyhow::Result<EtcdDb> {
    let text = client
        .get(format!("{}/metrics", tier.etcd_url))
        .send()
        .await?
        .text()
        .await?;
    let value = |name: &str| -> anyhow::Result<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .with_context(|| format!("etcd exports no {name}"))
    };
    Ok(EtcdDb {
        revision: value("etcd_debugging_mvcc_current_revision")?,
        compacted_to: value("etcd_debugging_mvcc_compact_revision")?,
        file_bytes: value("etcd_mvcc_db_total_size_in_bytes")?,
        in_use_bytes: value("etcd_mvcc_db_total_size_in_use_in_bytes")?,
    })
}

/// A write every 100 ms on the tier's primary, so its WAL position (which Patroni
/// publishes in etcd every loop) moves as on a database in use.
async fn write_load(tier: &PatroniCluster, until: Instant) -> anyhow::Result<()> {
    let primary = tier.primary().await.context("no primary")?;
    let mut conn = tier.connect(primary, "postgres").await?;
    conn.execute("CREATE TABLE IF NOT EXISTS ticks (at timestamptz)")
        .await?;
    while Instant::now() < until {
        conn.execute("INSERT INTO ticks VALUES (now())").await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

async fn start(etcd_args: &[&str]) -> PatroniCluster {
    let options = TierOptions {
        etcd_args: etcd_args.iter().map(|a| (*a).to_owned()).collect(),
        ..TierOptions::default()
    };
    PatroniCluster::start_with(options)
        .await
        .expect("the data tier starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_compaction_bounds_etcd_under_patroni() {
    let client = reqwest::Client::new();
    let retention = format!("--auto-compaction-retention={RETENTION}");
    let compaction = ["--auto-compaction-mode=periodic", retention.as_str()];
    let (plain, compacted) = tokio::join!(start(&[]), start(&compaction));
    let before = (
        etcd_db(&client, &plain).await.expect("etcd metrics"),
        etcd_db(&client, &compacted).await.expect("etcd metrics"),
    );
    let until = Instant::now() + RUN;
    let (a, b) = tokio::join!(write_load(&plain, until), write_load(&compacted, until));
    a.and(b).expect("writes on both primaries");
    let after = (
        etcd_db(&client, &plain).await.expect("etcd metrics"),
        etcd_db(&client, &compacted).await.expect("etcd metrics"),
    );
    println!("over {RUN:?}, Patroni loop_wait 1 s, a write every 100 ms:");
    for (name, b, a) in [
        ("no compaction", before.0, after.0),
        ("compaction", before.1, after.1),
    ] {
        println!(
            "  {name:>13}: revision {} -> {}, compacted to {}, db file {:.0} -> {:.0} KiB, \
             in use {:.0} -> {:.0} KiB",
            b.revision,
            a.revision,
            a.compacted_to,
            b.file_bytes / 1024.0,
            a.file_bytes / 1024.0,
            b.in_use_bytes / 1024.0,
            a.in_use_bytes / 1024.0,
        );
    }
    let (plain_after, compacted_after) = after;
    // Both tiers wrote: otherwise there was nothing to compact and nothing is shown.
    let written = plain_after.revision - before.0.revision;
    assert!(
        written >= 100.0,
        "Patroni wrote only {written} revisions in {RUN:?}"
    );
    // etcd 3.4 reports -1 until its first compaction.
    assert!(
        plain_after.compacted_to <= 0.0,
        "etcd without the flag compacted to {}",
        plain_after.compacted_to
    );
    // The compacted etcd keeps about RETENTION of history: its last compaction is recent.
    assert!(
        compacted_after.revision - compacted_after.compacted_to < written / 2.0,
        "the compacted etcd keeps {} of its {} revisions",
        compacted_after.revision - compacted_after.compacted_to,
        compacted_after.revision
    );
    // The space in use over the run: every revision kept, against about RETENTION of
    // them (bbolt counts whole 4 KiB pages, hence a ratio rather than zero growth).
    let plain_growth = plain_after.in_use_bytes - before.0.in_use_bytes;
    let compacted_growth = compacted_after.in_use_bytes - before.1.in_use_bytes;
    assert!(
        compacted_growth * 2.0 < plain_growth,
        "in use grew {compacted_growth} bytes compacted, {plain_growth} bytes not"
    );
}
