//! PostgreSQL failover, proven on real engines: a Patroni cluster (etcd, two PostgreSQL,
//! synchronous replication) on loopback, and three replicas of the release binary behind a
//! real balancer reaching it through the libpq multi-host `DATABASE_URL`. Patroni, not the
//! drill, promotes the standby when the primary's machine is lost.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{check_writes_in, judge, row, Drill, Window};
use crate::load::{Answer, Batches, Kind, LoadRun, LoadSpec, Outcome};
use crate::process::wait_until;
use crate::report::Row;
use crate::tier::patroni::PatroniCluster;
use anyhow::Context;
use sqlx::Executor;

/// The goal for the write-unavailability window after a primary loss.
const GOAL: Duration = Duration::from_secs(15);

pub const DATABASE: &str = "cartae";
pub const ROLE: &str = "cartae";

/// Successful requests that make a phase: about a second of the load.
const PHASE: usize = 60;

/// The data tier alone, with no service: Patroni fails a killed primary over to the sync
/// standby within the goal, the old primary rejoins as a standby, and nothing committed is
/// lost. Writes go to whichever node accepts them, as a multi-host client does.
pub async fn failover_alone(tier: &mut PatroniCluster) -> anyhow::Result<()> {
    let old = tier.primary().await.context("no primary")?;
    let mut conn = tier.connect(old, "postgres").await?;
    conn.execute("CREATE TABLE acks (n int PRIMARY KEY)")
        .await?;
    for n in 0..100 {
        sqlx::query("INSERT INTO acks VALUES ($1)")
            .bind(n)
            .execute(&mut conn)
            .await?;
    }
    drop(conn);
    let killed = Instant::now();
    tier.kill(old);
    let mut n = 100;
    let written = wait_until(Duration::from_secs(30), || {
        let tier = &*tier;
        async move { insert_anywhere(tier, n).await }
    })
    .await;
    let window = killed.elapsed();
    anyhow::ensure!(written, "no node took a write within 30 s of the kill");
    println!("data tier alone: first write {window:.2?} after the primary's loss");
    anyhow::ensure!(
        window < GOAL,
        "writes came back after {window:?}, goal {GOAL:?}"
    );
    let new = tier
        .primary()
        .await
        .context("no primary after the failover")?;
    anyhow::ensure!(new != old, "node {old} still primary after its kill");
    let mut conn = tier.connect(new, "postgres").await?;
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM acks WHERE n < 100")
        .fetch_one(&mut conn)
        .await?;
    anyhow::ensure!(kept == 100, "{} committed rows lost", 100 - kept);
    n += 1;
    sqlx::query("INSERT INTO acks VALUES ($1)")
        .bind(n)
        .execute(&mut conn)
        .await?;
    let restarted = Instant::now();
    tier.restart(old)?;
    let rejoined = wait_until(Duration::from_secs(60), || async {
        tier.in_recovery(old).await.ok() == Some(true)
            && tier.topology().await.and_then(|t| t.sync_standby)
                == Some(tier.nodes[old].name.clone())
    })
    .await;
    anyhow::ensure!(rejoined, "the old primary did not rejoin as sync standby");
    println!(
        "data tier alone: old primary back as sync standby after {:.2?}",
        restarted.elapsed()
    );
    Ok(())
}

/// Inserts row `n` on whichever node accepts writes; false when none does now.
async fn insert_anywhere(tier: &PatroniCluster, n: i32) -> bool {
    for i in 0..tier.nodes.len() {
        let Ok(mut conn) = tier.connect(i, "postgres").await else {
            continue;
        };
        let insert = sqlx::query("INSERT INTO acks VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(n)
            .execute(&mut conn);
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(2), insert).await {
            return true;
        }
    }
    false
}

/// Both scenarios, in order, on one data tier and one cluster (behind HAProxy in the test):
/// the primary killed under load, then the old primary back. The second needs the first's
/// killed node; without it, its row says so.
pub async fn under_load(drill: &Drill, tier: &mut PatroniCluster) -> Vec<Row> {
    let first = primary_killed(drill, tier)
        .await
        .unwrap_or_else(|(e, r)| failed(drill, KILLED, e, r));
    let back = match first.1 {
        Some(old) => old_primary_back(drill, tier, old)
            .await
            .unwrap_or_else(|e| failed(drill, BACK, e, None).0),
        None => {
            failed(
                drill,
                BACK,
                anyhow::anyhow!("not run: no killed node"),
                None,
            )
            .0
        }
    };
    vec![first.0, back]
}

const KILLED: &str = "PostgreSQL primary killed under mixed load";
const BACK: &str = "The old primary comes back";

/// A failed scenario's row: what it measured so far, and why it stopped.
fn failed(d: &Drill, name: &str, e: anyhow::Error, r: Option<Row>) -> (Row, Option<usize>) {
    let mut r = r.unwrap_or_else(|| row(name, d, &[]));
    r.problems.push(format!("{e:#}"));
    (r, None)
}

type Failed = (anyhow::Error, Option<Row>);

/// Kills the primary's machine under reads, writes and searches; Patroni promotes the
/// sync standby. Returns the row and the killed node.
async fn primary_killed(
    d: &Drill,
    tier: &mut PatroniCluster,
) -> Result<(Row, Option<usize>), Failed> {
    let no_row = |e: anyhow::Error| (e, None);
    let old = tier
        .primary()
        .await
        .context("no primary before the kill")
        .map_err(no_row)?;
    let new = 1 - old;
    let load = mixed_load(
        d,
        LoadSpec {
            retry_writes: true,
            // 200 ms apart: 30 s, twice the goal, before a write is given up.
            write_attempts: 150,
            ..LoadSpec::default()
        },
    );
    let probe = WriteProbe::start(d, load.started);
    until_successes(&load, PHASE, Duration::from_secs(10)).await;
    let kill = Instant::now();
    tier.kill(old);
    let promoted = wait_until(Duration::from_secs(30), || async {
        tier.in_recovery(new).await.ok() == Some(false)
    })
    .await
    .then(|| kill.elapsed());
    // Writes are back when the probe has one acknowledged after the kill; then a phase
    // of the load, so the window's end is inside the run.
    wait_until(Duration::from_secs(30), || async {
        probe.acknowledged_after(kill.saturating_duration_since(load.started))
    })
    .await;
    until_successes(&load, PHASE, Duration::from_secs(15)).await;
    let settled = Instant::now();
    let window = Window::of(&load, kill, settled);
    let probe = probe.stop().await;
    let mut outcomes = load.stop().await.map_err(no_row)?;
    let unavailable = probe.unavailable_after(window.from);
    outcomes.extend(probe.outcomes);
    outcomes.sort_by_key(|o| o.started);
    let mut r = row(KILLED, d, &outcomes);
    r.detection = promoted;
    r.recovery = unavailable;
    judge(
        &mut r,
        &outcomes,
        "only 503 with Retry-After, only for requests in flight between the kill and the \
         moment writes are acknowledged again (no writable primary: reads and searches the \
         cache does not answer need it too); every such write retried with its \
         Idempotency-Key until acknowledged; none before the kill or after",
        |o| {
            window.overlaps(o)
                && o.first.status == Some(503)
                && o.first.retry_after
                && (o.kind != Kind::Write || o.ok())
        },
    );
    match unavailable {
        Some(t) if t < GOAL => {}
        other => r.problems.push(format!(
            "writes unavailable for {other:?} after the kill, goal under {GOAL:?}"
        )),
    }
    if promoted.is_none() {
        r.problems
            .push("Patroni did not promote the standby within 30 s".to_owned());
    }
    let mut conn = tier
        .connect(new, DATABASE)
        .await
        .map_err(|e| (e, Some(r.clone())))?;
    check_writes_in(&mut conn, &outcomes, &mut r.problems)
        .await
        .map_err(|e| (e, Some(r.clone())))?;
    r.notes = killed_notes(&outcomes, &window, old, tier);
    Ok((r, Some(old)))
}

fn killed_notes(
    outcomes: &[Outcome],
    window: &Window,
    old: usize,
    tier: &PatroniCluster,
) -> String {
    let in_window = |kind: Kind| {
        let all: Vec<&Outcome> = outcomes
            .iter()
            .filter(|o| o.kind == kind && window.overlaps(o))
            .collect();
        let failed = all.iter().filter(|o| !o.first_ok()).count();
        format!("{}/{}", all.len() - failed, all.len())
    };
    let writes_failed = outcomes
        .iter()
        .filter(|o| o.kind == Kind::Write && !o.first_ok())
        .count();
    format!(
        "SIGKILL of Patroni and PostgreSQL on {} (machine loss); detection = until Patroni \
         promoted the sync standby (pg_is_in_recovery() false on it); recovery = write \
         unavailability, from the kill to the first write acknowledged after the last \
         refused one (a write probe every 100 ms). Answered on the first attempt during \
         the window: reads {}, searches {}, writes {}; {writes_failed} writes refused then \
         retried with their key, 0 duplicates, every acknowledged write on the new primary \
         (RPO 0)",
        tier.nodes[old].name,
        in_window(Kind::Read),
        in_window(Kind::Search),
        in_window(Kind::Write),
    )
}

/// Restarts the killed node: it must rewind, follow the new primary as its sync standby,
/// and take no writes; at no moment may two nodes accept writes.
async fn old_primary_back(d: &Drill, tier: &mut PatroniCluster, old: usize) -> anyhow::Result<Row> {
    let new = 1 - old;
    let restarted = Instant::now();
    tier.restart(old)?;
    let mut most_primaries = 0;
    let mut rejoined = None;
    while restarted.elapsed() < Duration::from_secs(60) {
        most_primaries = most_primaries.max(primaries(tier).await);
        let standby = tier.in_recovery(old).await.ok() == Some(true);
        let sync = tier.topology().await.and_then(|t| t.sync_standby);
        if standby && sync.as_deref() == Some(tier.nodes[old].name.as_str()) {
            rejoined = Some(restarted.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let load = mixed_load(d, LoadSpec::default());
    // Split brain is watched under the load too.
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(20) && load.successes() < PHASE * 2 {
        most_primaries = most_primaries.max(primaries(tier).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let outcomes = load.stop().await?;
    let mut r = row(BACK, d, &outcomes);
    r.recovery = rejoined;
    judge(&mut r, &outcomes, "none: the primary never left", |_| false);
    if rejoined.is_none() {
        r.problems.push(format!(
            "{} not back as sync standby within 60 s",
            tier.nodes[old].name
        ));
    }
    if most_primaries > 1 {
        r.problems
            .push("split brain: both nodes accepted writes at once".to_owned());
    }
    if tier.primary().await != Some(new) {
        r.problems
            .push("the primary changed when the old one came back".to_owned());
    }
    let mut primary = tier.connect(new, DATABASE).await?;
    check_writes_in(&mut primary, &outcomes, &mut r.problems).await?;
    let refused = standby_refuses_writes(tier, old).await?;
    if !refused {
        r.problems.push(format!(
            "{} accepted a direct write: not a standby",
            tier.nodes[old].name
        ));
    }
    let same = same_rows(tier, new, old).await?;
    if !same {
        r.problems.push(format!(
            "{}'s items differ from the primary's after 5 s",
            tier.nodes[old].name
        ));
    }
    r.notes = format!(
        "{} restarted by its Patroni: pg_rewind, then sync standby (recovery = until \
         pg_is_in_recovery() true on it and Patroni names it sync standby); {} writes \
         through the service, all on the primary {}; a direct write on {} refused \
         (read-only); same items on both once replicated; at most {most_primaries} node \
         with pg_is_in_recovery() false at any 200 ms sample",
        tier.nodes[old].name,
        outcomes
            .iter()
            .filter(|o| o.kind == Kind::Write && o.ok())
            .count(),
        tier.nodes[new].name,
        tier.nodes[old].name,
    );
    Ok(r)
}

/// How many nodes accept writes now (pg_is_in_recovery() false).
async fn primaries(tier: &PatroniCluster) -> usize {
    let mut n = 0;
    for i in 0..tier.nodes.len() {
        if tier.in_recovery(i).await.ok() == Some(false) {
            n += 1;
        }
    }
    n
}

/// A write straight to node `index`, past the service: a standby must refuse it with
/// SQLSTATE 25006 (read-only transaction).
async fn standby_refuses_writes(tier: &PatroniCluster, index: usize) -> anyhow::Result<bool> {
    let mut conn = tier.connect(index, DATABASE).await?;
    let attempt = conn
        .execute(
            "INSERT INTO items (id, user_id, type, title) \
             SELECT gen_random_uuid(), user_id, type, 'split-brain' FROM items LIMIT 1",
        )
        .await;
    Ok(match attempt {
        Ok(_) => false,
        Err(e) => e
            .as_database_error()
            .and_then(|d| d.code())
            .is_some_and(|c| c == "25006"),
    })
}

/// Whether node `b` holds the same items as node `a`, within 5 s of replication.
async fn same_rows(tier: &PatroniCluster, a: usize, b: usize) -> anyhow::Result<bool> {
    const SUM: &str =
        "SELECT count(*)::bigint, coalesce(sum(hashtext(id::text))::bigint, 0) FROM items";
    let mut on_a = tier.connect(a, DATABASE).await?;
    let expected: (i64, i64) = sqlx::query_as(SUM).fetch_one(&mut on_a).await?;
    let mut on_b = tier.connect(b, DATABASE).await?;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        let got: (i64, i64) = sqlx::query_as(SUM).fetch_one(&mut on_b).await?;
        if got == expected {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(false)
}

/// Reads, writes and searches through the balancer, as `spec` says otherwise.
fn mixed_load(d: &Drill, spec: LoadSpec) -> LoadRun {
    let spec = LoadSpec {
        mix: [4, 4, 2, 0],
        ..spec
    };
    LoadRun::start(
        d.client.clone(),
        d.balancer.url(""),
        d.workload.clone(),
        spec,
    )
}

async fn until_successes(load: &LoadRun, count: usize, within: Duration) {
    let target = load.successes() + count + load.workers();
    wait_until(within, || async { load.successes() >= target }).await;
}

/// One attempt of the probe, as offsets from the load's start.
#[derive(Debug, Clone, Copy)]
struct Attempt {
    started: Duration,
    ended: Duration,
    ok: bool,
}

/// A write every 100 ms through the balancer, each retried with its key every 100 ms
/// until acknowledged: it measures when writes stop and come back to a tenth of a second.
struct WriteProbe {
    stop: Arc<AtomicBool>,
    attempts: Arc<std::sync::Mutex<Vec<Attempt>>>,
    task: tokio::task::JoinHandle<Vec<Outcome>>,
}

struct ProbeRun {
    outcomes: Vec<Outcome>,
    attempts: Vec<Attempt>,
}

impl WriteProbe {
    fn start(d: &Drill, base: Instant) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let attempts = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (client, url, workload) = (d.client.clone(), d.balancer.url(""), d.workload.clone());
        let task = tokio::spawn({
            let (stop, attempts) = (stop.clone(), attempts.clone());
            async move {
                let mut outcomes = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let key = uuid::Uuid::new_v4().to_string();
                    let started = base.elapsed();
                    let mut first: Option<Answer> = None;
                    let mut tries = 0;
                    // Bounded like the load's writes: 300 tries 100 ms apart.
                    let last = loop {
                        tries += 1;
                        let at = base.elapsed();
                        let request = workload.request(
                            &client,
                            &url,
                            Kind::Write,
                            n,
                            Some(&key),
                            (Batches::Own { size: 1 }, 0),
                        );
                        let answer = Answer::of(&request.send().await);
                        if let Ok(mut all) = attempts.lock() {
                            all.push(Attempt {
                                started: at,
                                ended: base.elapsed(),
                                ok: answer.ok(),
                            });
                        }
                        first.get_or_insert_with(|| answer.clone());
                        if answer.ok() || tries >= 300 {
                            break answer;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    };
                    outcomes.push(Outcome {
                        kind: Kind::Write,
                        started,
                        latency: base.elapsed() - started,
                        first: first.unwrap_or_else(|| last.clone()),
                        last,
                        attempts: tries,
                        idempotency_key: Some(key),
                    });
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                outcomes
            }
        });
        Self {
            stop,
            attempts,
            task,
        }
    }

    /// Whether an attempt started after `from` has been acknowledged.
    fn acknowledged_after(&self, from: Duration) -> bool {
        self.attempts
            .lock()
            .map(|all| all.iter().any(|a| a.ok && a.started > from))
            .unwrap_or(false)
    }

    async fn stop(self) -> ProbeRun {
        self.stop.store(true, Ordering::SeqCst);
        let outcomes = self.task.await.unwrap_or_default();
        let attempts = self.attempts.lock().map(|a| a.clone()).unwrap_or_default();
        ProbeRun { outcomes, attempts }
    }
}

impl ProbeRun {
    /// From `from` (the kill) to the end of the first acknowledged attempt started after
    /// the last refused one; zero when none was refused, `None` when writes never came back.
    fn unavailable_after(&self, from: Duration) -> Option<Duration> {
        let Some(last_refused) = self
            .attempts
            .iter()
            .filter(|a| !a.ok && a.ended >= from)
            .map(|a| a.started)
            .max()
        else {
            return Some(Duration::ZERO);
        };
        self.attempts
            .iter()
            .filter(|a| a.ok && a.started > last_refused)
            .map(|a| a.ended)
            .min()
            .map(|back| back.saturating_sub(from))
    }
}
