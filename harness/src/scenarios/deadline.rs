//! Deadline-cut writes: PostgreSQL slower than the 5 s request deadline for some writes,
//! under load. Items of a user of the row's own are locked from a direct PostgreSQL
//! connection, and conditional PATCHes (If-Match), conditional DELETEs and keyed upserts
//! sent to them wait on the lock past the deadline: the client gets 503, outcome unknown.
//! Some rows are released as soon as every cut write has answered (the writes then commit
//! after their 503), the others are held past `statement_timeout` (PostgreSQL cancels
//! them). The client then does what docs/api.md says: a conditional write is retried once
//! with the ETag it had, a keyed upsert with its key until it is answered.
//!
//! Afterwards the history checker holds every item the row touched to PostgreSQL's row,
//! read through the balancer with the cache and with Redis cut, and each keyed upsert must
//! have been applied exactly once.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};

use super::shared::{judge, row};
use super::Drill;
use crate::history::{Action, Op};
use crate::load::{item_op, Answer, Kind, LoadRun, LoadSpec, Outcome, Workload};
use crate::report::Row;

/// Items of each kind of cut write: conditional PATCH, conditional DELETE, keyed upsert.
/// Nine writes held at once stay under the user's 10 concurrent writes per replica.
const CUT_EACH: usize = 3;
/// The first `RELEASED` of each kind are unlocked once every cut write has answered.
const RELEASED: usize = 2;
/// How long the other rows stay locked: past `statement_timeout` (deadline + 250 ms).
const HELD: Duration = Duration::from_secs(7);
/// A keyed upsert is retried this many times, 200 ms apart, until it is answered.
const UPSERT_ATTEMPTS: u32 = 10;
const SOURCE: &str = "drill-deadline";

const BUDGET: &str = "the cut writes' 503 with Retry-After (outcome unknown, by design); after \
     them, 412 to a conditional PATCH and 404 to a DELETE or a read where the cut write had \
     been applied. The load on the user's other items: none";

/// The cut writes of one item kind, and what the client does after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    Patch,
    Delete,
    Upsert,
}

/// One request of the row's own, with when it was sent and its body.
struct Sent {
    outcome: Outcome,
    body: Option<Value>,
}

pub(super) async fn run(d: &Drill) -> anyhow::Result<Row> {
    let base = d.balancer.url("");
    // A user of the row's own: its items are all at version 1, whatever earlier rows did.
    let user = Workload::prepare(&d.client, &base).await?;
    let upserted = upsert_sources(d, &user).await?;
    let targets: Vec<(Cut, String)> = (0..CUT_EACH)
        .map(|i| (Cut::Patch, user.item_ids[i].clone()))
        .chain((0..CUT_EACH).map(|i| (Cut::Delete, user.item_ids[CUT_EACH + i].clone())))
        .chain(upserted.iter().map(|id| (Cut::Upsert, id.clone())))
        .collect();
    // The load reads and updates the user's other items: it must not wait on the locks.
    let mut others = user.clone();
    others.item_ids.drain(..2 * CUT_EACH);
    let load = LoadRun::start(
        d.client.clone(),
        base,
        others,
        LoadSpec {
            history: true,
            ..LoadSpec::default()
        },
    );
    let history = load.history();
    d.until_successes(&load, 60, Duration::from_secs(10)).await;
    let c = Cutting {
        d,
        load: &load,
        user: &user,
    };
    let mut mine: Vec<Sent> = Vec::new();
    let mut ops: Vec<Op> = Vec::new();
    // Cached before the cut, so a lost invalidation would serve the old state.
    c.read_round(&targets, &mut mine, &mut ops).await;

    let mut released_lock = d.cluster.database.connect().await?;
    let mut held_lock = d.cluster.database.connect().await?;
    let (released, held): (Vec<_>, Vec<_>) = targets
        .iter()
        .enumerate()
        .partition(|(i, _)| i % CUT_EACH < RELEASED);
    let released_tx = lock(&mut released_lock, released.iter().map(|(_, t)| &t.1)).await?;
    let held_tx = lock(&mut held_lock, held.iter().map(|(_, t)| &t.1)).await?;
    let sent = Instant::now();
    let cut = futures::future::join_all(
        targets
            .iter()
            .enumerate()
            .map(|(n, (kind, id))| c.cut_write(*kind, id, n)),
    )
    .await;
    released_tx.commit().await?;
    c.read_round(&targets, &mut mine, &mut ops).await;
    tokio::time::sleep_until((sent + HELD).into()).await;
    held_tx.commit().await?;
    // Before the client's retries, whose 412 and 404 would repair a stale entry: the
    // cache follows PostgreSQL whatever answer the cut writes got.
    let ids: Vec<&str> = targets.iter().map(|(_, id)| id.as_str()).collect();
    let mut stale = Vec::new();
    d.check_served_as_stored(&user, &ids, &mut stale).await?;

    let mut unknown = 0;
    let mut upsert_titles = Vec::new();
    for (n, ((kind, id), (first, action))) in targets.iter().zip(cut).enumerate() {
        let unknown_outcome = first.outcome.first.status == Some(503);
        unknown += usize::from(unknown_outcome);
        let upsert_retries = match (&action, kind) {
            (Action::Update { title }, Cut::Upsert) => {
                upsert_titles.push(title.clone());
                if unknown_outcome {
                    c.retry_upsert(n, title).await
                } else {
                    Vec::new()
                }
            }
            _ => Vec::new(),
        };
        let answered = upsert_retries.last().unwrap_or(&first);
        let outcome = Outcome {
            latency: answered.outcome.ended() - first.outcome.started,
            last: answered.outcome.last.clone(),
            attempts: 1 + upsert_retries.len() as u32,
            ..first.outcome.clone()
        };
        ops.push(item_op(id, action, &outcome, answered.body.as_ref()));
        mine.push(Sent {
            outcome,
            body: None,
        });
        if unknown_outcome && *kind != Cut::Upsert {
            let (sent, action) = c.conditional(*kind, id, "retry").await;
            ops.push(item_op(id, action, &sent.outcome, sent.body.as_ref()));
            mine.push(sent);
        }
    }
    c.read_round(&targets, &mut mine, &mut ops).await;
    let outcomes = load.stop().await?;
    ops.extend(history.take());

    let own: Vec<Outcome> = mine.into_iter().map(|s| s.outcome).collect();
    let all: Vec<Outcome> = outcomes.iter().chain(&own).cloned().collect();
    let mut r = row("deadline-cut writes", d, &all);
    judge(&mut r, &outcomes, BUDGET, |_| false);
    judge(&mut r, &own, BUDGET, |o| {
        (o.first.status == Some(503) && o.first.retry_after)
            || matches!(o.first.status, Some(404 | 412))
    });
    if unknown < targets.len() {
        r.problems.push(format!(
            "{} of {} locked writes were not cut by the deadline",
            targets.len() - unknown,
            targets.len()
        ));
    }
    if !stale.is_empty() {
        r.problems.push(format!(
            "once the cut writes had finished, {} of {} items served otherwise than stored: {}",
            stale.len(),
            ids.len(),
            stale.join("; ")
        ));
    }
    let applied = applied_once(d, &upserted, &upsert_titles, &mut r.problems).await?;
    r.notes = format!(
        "{unknown} writes held on row locks past the 5 s deadline (503, outcome unknown), \
         {RELEASED} of {CUT_EACH} of each kind released after the 503, the others held \
         {HELD:?}; before the retries {} of {} items served as PostgreSQL has them; {applied} \
         keyed upserts applied exactly once after their retries",
        ids.len() - stale.len(),
        ids.len()
    );
    d.check_writes(&outcomes, &mut r.problems).await?;
    d.check_history(&user, &ops, &mut r).await?;
    Ok(r)
}

/// What the row's own requests need: the drill, the load they are timed from, the user.
struct Cutting<'a> {
    d: &'a Drill,
    load: &'a LoadRun,
    user: &'a Workload,
}

impl Cutting<'_> {
    /// Sends `request` as the user, timed from the load's start.
    async fn exchange(&self, kind: Kind, request: reqwest::RequestBuilder) -> Sent {
        let sent = Instant::now();
        let response = request
            .bearer_auth(&self.user.token)
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        let answer = Answer::of(&response);
        let body = match response {
            Ok(response) => response.json().await.ok(),
            Err(_) => None,
        };
        Sent {
            outcome: Outcome::once(
                kind,
                sent.duration_since(self.load.started),
                sent.elapsed(),
                answer,
            ),
            body,
        }
    }

    fn item_url(&self, id: &str) -> String {
        self.d.balancer.url(&format!("/api/items/{id}"))
    }

    /// Reads every target through the balancer, recording what it served.
    async fn read_round(&self, targets: &[(Cut, String)], mine: &mut Vec<Sent>, ops: &mut Vec<Op>) {
        for (_, id) in targets {
            let sent = self
                .exchange(Kind::Read, self.d.client.get(self.item_url(id)))
                .await;
            ops.push(item_op(id, Action::Read, &sent.outcome, sent.body.as_ref()));
            mine.push(sent);
        }
    }

    /// The write the lock holds past the deadline on target `n`.
    async fn cut_write(&self, kind: Cut, id: &str, n: usize) -> (Sent, Action) {
        match kind {
            Cut::Upsert => {
                let title = format!("drill-deadline-upsert-{}", uuid::Uuid::new_v4().simple());
                let sent = self.exchange(Kind::Write, self.upsert(n, &title)).await;
                (sent, Action::Update { title })
            }
            _ => self.conditional(kind, id, "cut").await,
        }
    }

    /// The upsert of target `n`'s source to `title`, with the title as its key.
    fn upsert(&self, n: usize, title: &str) -> reqwest::RequestBuilder {
        self.d
            .client
            .post(self.d.balancer.url("/api/items/upsert"))
            .header("Idempotency-Key", title)
            .json(&upsert_body(n % CUT_EACH, title))
    }

    /// A PATCH to a title of its own, or a DELETE, conditional on the item's first version.
    async fn conditional(&self, kind: Cut, id: &str, what: &str) -> (Sent, Action) {
        let url = self.item_url(id);
        let (request, action) = if kind == Cut::Delete {
            (self.d.client.delete(url), Action::Delete)
        } else {
            let title = format!("drill-deadline-{what}-{}", uuid::Uuid::new_v4().simple());
            let request = self.d.client.patch(url).json(&json!({ "title": title }));
            (request, Action::Update { title })
        };
        let request = request.header("If-Match", "\"1\"");
        (self.exchange(Kind::Write, request).await, action)
    }

    /// Retries the cut upsert of target `n` with its key (and body) until it is answered.
    async fn retry_upsert(&self, n: usize, title: &str) -> Vec<Sent> {
        let mut retries: Vec<Sent> = Vec::new();
        while retries.len() < UPSERT_ATTEMPTS as usize {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let sent = self.exchange(Kind::Write, self.upsert(n, title)).await;
            let answered = !sent.outcome.first.retryable();
            retries.push(sent);
            if answered {
                break;
            }
        }
        retries
    }
}

/// Creates one item per cut upsert, by source, and returns their ids.
async fn upsert_sources(d: &Drill, workload: &Workload) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::new();
    for i in 0..CUT_EACH {
        let item: Value = d
            .client
            .post(d.balancer.url("/api/items/upsert"))
            .bearer_auth(&workload.token)
            .json(&upsert_body(i, "deadline source"))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        ids.push(item["id"].as_str().context("upsert gave no id")?.to_owned());
    }
    Ok(ids)
}

fn upsert_body(source: usize, title: &str) -> Value {
    json!({"type": "note", "title": title, "tags": ["drill"],
           "source": {"connector": SOURCE, "sourceId": format!("{source}")}})
}

/// Holds the row locks of `ids` until the returned transaction ends.
async fn lock<'c>(
    conn: &'c mut PgConnection,
    ids: impl Iterator<Item = &String>,
) -> anyhow::Result<sqlx::Transaction<'c, sqlx::Postgres>> {
    let ids: Vec<String> = ids.cloned().collect();
    let mut tx = conn.begin().await?;
    sqlx::query("SELECT 1 FROM items WHERE id = ANY($1::uuid[]) FOR UPDATE")
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// Each keyed upsert cut by the deadline and retried is in PostgreSQL exactly once: its
/// item at the version after the one it was created with, with its title. Returns how
/// many were.
async fn applied_once(
    d: &Drill,
    upserted: &[String],
    titles: &[String],
    problems: &mut Vec<String>,
) -> anyhow::Result<usize> {
    let mut conn = d.cluster.database.connect().await?;
    let mut once = 0;
    for (id, title) in upserted.iter().zip(titles) {
        let row: Option<(i32, String)> =
            sqlx::query_as("SELECT version, title FROM items WHERE id = $1::uuid")
                .bind(id)
                .fetch_optional(&mut conn)
                .await?;
        match row {
            Some((2, found)) if &found == title => once += 1,
            other => problems.push(format!(
                "keyed upsert {title} of item {id}: PostgreSQL has {other:?}, expected version 2 with its title"
            )),
        }
    }
    Ok(once)
}
