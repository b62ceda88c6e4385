//! The history checker's part of a row: every item a run's history names, as PostgreSQL
//! has it once the run is over and as the balancer serves it then, with the cache and
//! with Redis cut (the replicas then read PostgreSQL), held to the history.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;
use sqlx::Row as _;

use super::Drill;
use crate::history::{check, Final, Op, State};
use crate::load::Workload;
use crate::proxy::Mode;
use crate::report::Row;

/// The item as PostgreSQL has it.
async fn stored(conn: &mut sqlx::PgConnection, item: &str) -> anyhow::Result<State> {
    Ok(
        sqlx::query("SELECT version::int8 AS version, title FROM items WHERE id = $1::uuid")
            .bind(item)
            .fetch_optional(conn)
            .await?
            .map(|row| State::Present {
                version: row.get("version"),
                title: row.get("title"),
            })
            .unwrap_or(State::Gone),
    )
}

/// A write the deadline cut finishes in its own task, at most `statement_timeout` (the
/// deadline plus 250 ms) after its 503: the history is checked once those are over.
const SETTLE: Duration = Duration::from_secs(1);

impl Drill {
    /// Checks `history` (items of `workload`'s user) and reports the verdict: a line in
    /// the row's notes, and a problem for any violation.
    pub(super) async fn check_history(
        &self,
        workload: &Workload,
        history: &[Op],
        r: &mut Row,
    ) -> anyhow::Result<()> {
        tokio::time::sleep(SETTLE).await;
        let finals = self.finals(workload, history).await?;
        let verdict = check(history, &finals);
        r.notes = format!("{}; {}", r.notes, verdict.summary());
        verdict.problems(&mut r.problems);
        Ok(())
    }

    async fn finals(
        &self,
        workload: &Workload,
        history: &[Op],
    ) -> anyhow::Result<HashMap<String, Final>> {
        let items: BTreeSet<&str> = history.iter().map(|o| o.item.as_str()).collect();
        let mut conn = self.cluster.database.connect().await?;
        let mut finals = HashMap::new();
        for item in &items {
            let row = stored(&mut conn, item).await?;
            let cached = self.served(workload, item).await?;
            finals.insert(
                item.to_string(),
                Final {
                    row,
                    served: vec![cached],
                },
            );
        }
        self.cluster.redis_proxy.set_mode(Mode::Cut);
        let uncached = self.serve_all(workload, &items, &mut finals).await;
        self.cluster.redis_proxy.set_mode(Mode::Forward);
        uncached.context("read the items with Redis cut")?;
        Ok(finals)
    }

    /// Notes each of `workload`'s `items` the balancer serves otherwise than PostgreSQL
    /// has it now, once the writes cut by the deadline have had time to finish.
    pub(super) async fn check_served_as_stored(
        &self,
        workload: &Workload,
        items: &[&str],
        problems: &mut Vec<String>,
    ) -> anyhow::Result<()> {
        tokio::time::sleep(SETTLE).await;
        let mut conn = self.cluster.database.connect().await?;
        for item in items {
            let (row, served) = (
                stored(&mut conn, item).await?,
                self.served(workload, item).await?,
            );
            if row != served {
                problems.push(format!(
                    "{item}: the balancer serves {served}, PostgreSQL has {row}"
                ));
            }
        }
        Ok(())
    }

    async fn serve_all(
        &self,
        workload: &Workload,
        items: &BTreeSet<&str>,
        finals: &mut HashMap<String, Final>,
    ) -> anyhow::Result<()> {
        for item in items {
            let served = self.served(workload, item).await?;
            if let Some(last) = finals.get_mut(*item) {
                last.served.push(served);
            }
        }
        Ok(())
    }

    /// The item as the balancer serves it to `workload`'s user.
    pub(super) async fn served(&self, workload: &Workload, item: &str) -> anyhow::Result<State> {
        let response = self
            .client
            .get(self.balancer.url(&format!("/api/items/{item}")))
            .bearer_auth(&workload.token)
            .timeout(Duration::from_secs(5))
            .send()
            .await?;
        let status = response.status().as_u16();
        let body: Option<Value> = response.json().await.ok();
        State::of_answer(Some(status), body.as_ref())
            .with_context(|| format!("reading item {item} through the balancer answered {status}"))
    }
}
