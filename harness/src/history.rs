//! A drill run's history of item operations, and its checker, in the spirit of Jepsen's.
//!
//! Every operation the load sends on an item is recorded with when it started, when it
//! ended and how it ended: ok, failed (a definite 4xx on a write: nothing applied), or
//! unknown (no answer, a timeout, a 5xx on a write: it may have been applied). Each write
//! gives the item a title of its own, so a state read back names the write that made it,
//! as Knossos and Elle rely on unique values. Afterwards [`check`] holds each item's
//! history to PostgreSQL's final row and to what the balancer serves then. It is not a
//! full linearizability search: items are single registers whose versions order every
//! state, so each rule is a comparison, and memory is the history the bounded load made.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;

/// An item as seen: its version and title, or gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Present { version: i64, title: String },
    Gone,
}

impl State {
    /// What an answer about an item shows: its body's version and title on a 2xx, gone on
    /// a 404; nothing otherwise.
    pub fn of_answer(status: Option<u16>, body: Option<&Value>) -> Option<Self> {
        match status? {
            404 => Some(Self::Gone),
            200..=299 => {
                let body = body?;
                Some(Self::Present {
                    version: body["version"].as_i64()?,
                    title: body["title"].as_str()?.to_owned(),
                })
            }
            _ => None,
        }
    }

    /// States in the order an item goes through them: versions grow, a deletion is final.
    fn rank(&self) -> (u8, i64) {
        match self {
            Self::Present { version, .. } => (0, *version),
            Self::Gone => (1, 0),
        }
    }

    fn is_older_than(&self, other: &Self) -> bool {
        self.rank() < other.rank()
    }

    fn title(&self) -> Option<&str> {
        match self {
            Self::Present { title, .. } => Some(title),
            Self::Gone => None,
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Present { version, title } => write!(f, "v{version} {title:?}"),
            Self::Gone => f.write_str("gone"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Ok,
    /// A definite refusal: the write was not applied.
    Failed,
    /// No answer, or one that says the write may have been applied.
    Unknown,
}

impl Ending {
    /// How a write ended, from its status (`None`: no answer came back).
    pub fn of_write(status: Option<u16>) -> Self {
        match status {
            Some(200..=299) => Self::Ok,
            Some(400..=499) => Self::Failed,
            _ => Self::Unknown,
        }
    }

    /// How a read ended: a 404 is an answer too (the item is gone).
    pub fn of_read(status: Option<u16>) -> Self {
        match status {
            Some(200..=299 | 404) => Self::Ok,
            Some(400..=499) => Self::Failed,
            _ => Self::Unknown,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Read,
    /// Sets the item's title to one no other write uses.
    Update {
        title: String,
    },
    Delete,
}

/// One operation of the history.
#[derive(Debug, Clone)]
pub struct Op {
    pub item: String,
    pub action: Action,
    /// From the start of the run, first attempt to final answer.
    pub started: Duration,
    pub ended: Duration,
    pub ending: Ending,
    /// What an ok answer showed: the state read, or the state the write made.
    pub seen: Option<State>,
}

impl Op {
    fn is_write(&self) -> bool {
        self.action != Action::Read
    }
}

/// What an item is once the run is over: PostgreSQL's row, and what the balancer served
/// when read afterwards (with the cache, and without it).
#[derive(Debug, Clone)]
pub struct Final {
    pub row: State,
    pub served: Vec<State>,
}

/// The checker's finding over one history.
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    pub operations: usize,
    pub items: usize,
    pub unknown: usize,
    pub violations: Vec<String>,
}

impl Verdict {
    pub fn valid(&self) -> bool {
        self.violations.is_empty()
    }

    /// One line for a row's notes.
    pub fn summary(&self) -> String {
        let outcome = if self.valid() {
            "valid".to_owned()
        } else {
            format!("{} violations", self.violations.len())
        };
        format!(
            "checker: {} item operations on {} items, {} unknown: {outcome}",
            self.operations, self.items, self.unknown
        )
    }

    /// The violations as a row's problems: the first few, and how many there were.
    pub fn problems(&self, problems: &mut Vec<String>) {
        if !self.valid() {
            let shown: Vec<&str> = self.violations.iter().take(3).map(String::as_str).collect();
            problems.push(format!(
                "the checker found {} violations: {}",
                self.violations.len(),
                shown.join("; ")
            ));
        }
    }
}

/// Holds every item's operations in `history` to the rules, and to `finals` (every item
/// the history names must have one).
pub fn check(history: &[Op], finals: &HashMap<String, Final>) -> Verdict {
    let mut by_item: HashMap<&str, Vec<&Op>> = HashMap::new();
    for op in history {
        by_item.entry(op.item.as_str()).or_default().push(op);
    }
    let mut verdict = Verdict {
        operations: history.len(),
        items: by_item.len(),
        unknown: history
            .iter()
            .filter(|o| o.is_write() && o.ending == Ending::Unknown)
            .count(),
        violations: Vec::new(),
    };
    let mut items: Vec<_> = by_item.into_iter().collect();
    items.sort_by_key(|(item, _)| *item);
    for (item, ops) in items {
        let found = &mut verdict.violations;
        check_reads(item, &ops, found);
        match finals.get(item) {
            Some(last) => check_final(item, &ops, last, found),
            None => found.push(format!("{item}: no final state to check against")),
        }
    }
    verdict
}

/// A read never shows a state older than a write acknowledged before it began, a write
/// that failed, or a deletion no write could have made.
fn check_reads(item: &str, ops: &[&Op], found: &mut Vec<String>) {
    let mut acknowledged: Vec<(Duration, &State)> = ops
        .iter()
        .filter(|o| o.is_write() && o.ending == Ending::Ok)
        .filter_map(|o| Some((o.ended, o.seen.as_ref()?)))
        .collect();
    acknowledged.sort_by_key(|(ended, _)| *ended);
    // The newest state acknowledged by each moment: a prefix maximum.
    let mut newest: Vec<(Duration, &State)> = Vec::with_capacity(acknowledged.len());
    for (ended, state) in acknowledged {
        let keep = match newest.last() {
            Some((_, before)) if !before.is_older_than(state) => *before,
            _ => state,
        };
        newest.push((ended, keep));
    }
    for read in ops.iter().filter(|o| o.action == Action::Read) {
        let Some(seen) = read.seen.as_ref().filter(|_| read.ending == Ending::Ok) else {
            continue;
        };
        let before = newest.partition_point(|(ended, _)| *ended < read.started);
        if let Some((_, floor)) = before.checked_sub(1).map(|i| newest[i]) {
            if seen.is_older_than(floor) {
                found.push(format!(
                    "{item}: read at {:.2?} showed {seen}, older than {floor} acknowledged before it began",
                    read.started
                ));
            }
        }
        if let Some(title) = seen.title() {
            if failed_write_titled(ops, title) {
                found.push(format!(
                    "{item}: read at {:.2?} showed {seen}, the state of a write answered failed",
                    read.started
                ));
            }
        } else if !ops.iter().any(|o| {
            o.action == Action::Delete && o.ending != Ending::Failed && o.started <= read.ended
        }) {
            found.push(format!(
                "{item}: read at {:.2?} found it gone, and no delete that may have applied had begun",
                read.started
            ));
        }
    }
}

fn failed_write_titled(ops: &[&Op], title: &str) -> bool {
    ops.iter().any(|o| {
        o.ending == Ending::Failed && matches!(&o.action, Action::Update { title: t } if t == title)
    })
}

/// PostgreSQL holds every acknowledged write and no failed one, and what the balancer
/// serves afterwards is PostgreSQL's row: an unknown write is applied or not, never half.
fn check_final(item: &str, ops: &[&Op], last: &Final, found: &mut Vec<String>) {
    let row = &last.row;
    for write in ops
        .iter()
        .filter(|o| o.is_write() && o.ending == Ending::Ok)
    {
        if let Some(made) = write.seen.as_ref().filter(|made| row.is_older_than(made)) {
            found.push(format!(
                "{item}: the write acknowledged at {:.2?} ({made}) is not in PostgreSQL, which has {row}",
                write.ended
            ));
        }
    }
    match row.title() {
        Some(title) if failed_write_titled(ops, title) => found.push(format!(
            "{item}: PostgreSQL has {row}, the state of a write answered failed"
        )),
        None if !ops
            .iter()
            .any(|o| o.action == Action::Delete && o.ending != Ending::Failed) =>
        {
            found.push(format!(
                "{item}: gone from PostgreSQL, and no delete may have applied"
            ))
        }
        _ => {}
    }
    for served in last.served.iter().filter(|served| *served != row) {
        found.push(format!(
            "{item}: the balancer serves {served} afterwards, PostgreSQL has {row}"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    fn present(version: i64, title: &str) -> State {
        State::Present {
            version,
            title: title.to_owned(),
        }
    }

    fn op(action: Action, (from, to): (u64, u64), ending: Ending, seen: Option<State>) -> Op {
        Op {
            item: "a".to_owned(),
            action,
            started: at(from),
            ended: at(to),
            ending,
            seen,
        }
    }

    fn update(title: &str, span: (u64, u64), ending: Ending, version: Option<i64>) -> Op {
        let seen = version.map(|v| present(v, title));
        op(
            Action::Update {
                title: title.to_owned(),
            },
            span,
            ending,
            seen,
        )
    }

    fn read(span: (u64, u64), seen: State) -> Op {
        op(Action::Read, span, Ending::Ok, Some(seen))
    }

    fn finals(row: State, served: &[State]) -> HashMap<String, Final> {
        HashMap::from([(
            "a".to_owned(),
            Final {
                row,
                served: served.to_vec(),
            },
        )])
    }

    fn violations(history: &[Op], row: State, served: &[State]) -> Vec<String> {
        check(history, &finals(row, served)).violations
    }

    #[test]
    fn a_history_where_every_read_follows_the_acknowledged_writes_is_valid() {
        let history = [
            read((0, 5), present(1, "seed")),
            update("w1", (10, 20), Ending::Ok, Some(2)),
            // Concurrent with w1: may see either state.
            read((15, 25), present(1, "seed")),
            read((30, 35), present(2, "w1")),
            update("w2", (40, 60), Ending::Unknown, None),
            // The unknown write may or may not show.
            read((70, 75), present(2, "w1")),
            read((80, 85), present(3, "w2")),
        ];
        let verdict = check(&history, &finals(present(3, "w2"), &[present(3, "w2")]));
        assert!(verdict.valid(), "{:?}", verdict.violations);
        assert_eq!(
            (verdict.operations, verdict.items, verdict.unknown),
            (7, 1, 1)
        );
        assert!(
            verdict.summary().ends_with("valid"),
            "{}",
            verdict.summary()
        );
    }

    #[test]
    fn a_read_older_than_a_write_acknowledged_before_it_began_is_rejected() {
        let history = [
            update("w1", (10, 20), Ending::Ok, Some(2)),
            read((30, 35), present(1, "seed")),
        ];
        let found = violations(&history, present(2, "w1"), &[]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("older than v2"), "{found:?}");
    }

    #[test]
    fn a_read_of_a_deleted_item_after_its_acknowledged_delete_is_rejected() {
        let history = [
            op(Action::Delete, (10, 20), Ending::Ok, Some(State::Gone)),
            read((30, 35), present(1, "seed")),
        ];
        let found = violations(&history, State::Gone, &[]);
        assert_eq!(found.len(), 1, "{found:?}");
    }

    #[test]
    fn a_state_made_by_a_write_answered_failed_is_rejected_in_reads_and_in_postgresql() {
        let history = [
            update("refused", (10, 20), Ending::Failed, None),
            read((30, 35), present(2, "refused")),
        ];
        let found = violations(&history, present(2, "refused"), &[]);
        assert_eq!(found.len(), 2, "{found:?}");
    }

    #[test]
    fn an_acknowledged_write_missing_from_postgresql_is_rejected() {
        let history = [update("w1", (10, 20), Ending::Ok, Some(2))];
        let found = violations(&history, present(1, "seed"), &[]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("not in PostgreSQL"), "{found:?}");
    }

    #[test]
    fn an_unknown_write_may_be_applied_or_not_but_the_cache_must_agree() {
        let history = [update("cut", (10, 5_010), Ending::Unknown, None)];
        for row in [present(1, "seed"), present(2, "cut")] {
            assert!(violations(&history, row.clone(), &[row]).is_empty());
        }
        // Applied in PostgreSQL, the old state still served: half applied.
        let found = violations(&history, present(2, "cut"), &[present(1, "seed")]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("serves v1"), "{found:?}");
    }

    #[test]
    fn a_deletion_nobody_may_have_made_is_rejected() {
        let history = [
            read((0, 5), State::Gone),
            op(Action::Delete, (10, 20), Ending::Failed, None),
        ];
        let found = violations(&history, State::Gone, &[State::Gone]);
        assert_eq!(found.len(), 2, "{found:?}");
    }

    #[test]
    fn an_unknown_delete_explains_a_gone_item_and_a_404_read() {
        let history = [
            op(Action::Delete, (10, 5_010), Ending::Unknown, None),
            read((5_100, 5_105), State::Gone),
        ];
        assert!(violations(&history, State::Gone, &[State::Gone]).is_empty());
    }

    #[test]
    fn an_item_without_a_final_state_is_rejected() {
        let history = [read((0, 5), present(1, "seed"))];
        assert!(!check(&history, &HashMap::new()).valid());
    }

    #[test]
    fn answers_give_states_and_endings() {
        let body = serde_json::json!({"version": 3, "title": "t"});
        assert_eq!(
            State::of_answer(Some(200), Some(&body)),
            Some(present(3, "t"))
        );
        assert_eq!(State::of_answer(Some(404), None), Some(State::Gone));
        assert_eq!(State::of_answer(Some(503), Some(&body)), None);
        assert_eq!(Ending::of_write(Some(503)), Ending::Unknown);
        assert_eq!(Ending::of_write(None), Ending::Unknown);
        assert_eq!(Ending::of_write(Some(412)), Ending::Failed);
        assert_eq!(Ending::of_read(Some(404)), Ending::Ok);
    }
}
