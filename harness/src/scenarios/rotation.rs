//! Secret rotation: the JWT secret changed by rolling updates under authenticated load,
//! with no valid token refused anywhere. A rollout runs updated and not-yet-updated
//! replicas side by side, so each must accept what the other signs; hence the documented
//! steps (`src/auth/jwt.rs`), each a rollout by the shipped script:
//!
//! 1. verify the new key first (`JWT_SECRET=old`, `JWT_SECRET_PREVIOUS=new`);
//! 2. sign with it (`new`, previous `old`), logging in again throughout the rollout;
//! 3. rotate back the same way (`old`, previous `new`): the later scenarios' tokens are
//!    signed with the drill's key;
//! 4. drop the previous key (`old` alone) once only old-key tokens are in use; afterwards
//!    a new-key token is refused by every replica.
//!
//! Besides the load (the workload's token, through the balancer), a checker logs in through
//! the balancer twice a second and sends a read with the newest token of each valid key,
//! through the balancer (counted in the row) and to each replica directly, so that both
//! kinds of token reach both updated and not-yet-updated replicas whatever the balancer
//! picks. A replica counts as updated once its pid differs from before the rollout.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use super::shared::{judge, row, sampling, ReadyWatcher};
use super::Drill;
use crate::cluster::{JwtKeys, DRILL_JWT_SECRET};
use crate::load::{Answer, Kind, LoadSpec, Outcome};
use crate::report::Row;

/// The key the drill rotates to: random, as the service requires; public, as only a
/// test's may be.
const NEW_SECRET: &str = "nxqTr7AoCpUtdmSyRlApPOIWEj5VjLQU9cuoKqUKtn8gJf69";
/// The checker's pace: each tick one login and a read per valid key, through the
/// balancer and on each replica.
const TICK: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Old,
    New,
}

struct Step {
    name: &'static str,
    current: &'static str,
    previous: Option<&'static str>,
    /// Whether new-key tokens are valid on every replica throughout the rollout.
    new_valid: bool,
}

const STEPS: [Step; 4] = [
    Step {
        name: "verify the new key",
        current: DRILL_JWT_SECRET,
        previous: Some(NEW_SECRET),
        // Not-yet-updated replicas do not know it yet.
        new_valid: false,
    },
    Step {
        name: "sign with the new key",
        current: NEW_SECRET,
        previous: Some(DRILL_JWT_SECRET),
        new_valid: true,
    },
    Step {
        name: "rotate back",
        current: DRILL_JWT_SECRET,
        previous: Some(NEW_SECRET),
        new_valid: true,
    },
    Step {
        name: "drop the previous key",
        current: DRILL_JWT_SECRET,
        previous: None,
        // Updated replicas refuse it: that is the step's point.
        new_valid: false,
    },
];

/// What the checker saw on the replicas directly: (step, key, replica updated) → answers.
#[derive(Default)]
struct Seen {
    /// The newest token signed with each key.
    tokens: BTreeMap<Key, String>,
    logins: BTreeMap<Key, usize>,
    direct: BTreeMap<(usize, Key, bool), Direct>,
    /// Through the balancer: the checker's logins and reads.
    outcomes: Vec<Outcome>,
}

#[derive(Default, Debug, Clone, Copy)]
struct Direct {
    accepted: usize,
    refused: usize,
    /// No answer, or another status: a replica stopping or starting, which no balancer
    /// routes to.
    other: usize,
}

pub(super) async fn run(d: &Drill) -> anyhow::Result<Row> {
    let result = rotate(d).await;
    // Whatever went wrong, the later scenarios need the drill's key back.
    if d.cluster.jwt_keys() != JwtKeys::drill() {
        let mut problems = vec!["the rotation did not end on the drill's key".to_owned()];
        restore(d, &mut problems).await;
        if let Ok(mut r) = result {
            r.problems.extend(problems);
            return Ok(r);
        }
    }
    result
}

async fn rotate(d: &Drill) -> anyhow::Result<Row> {
    let spec = LoadSpec {
        // Longer than any rollout: only the scenario's stop ends the load.
        max_duration: Duration::from_secs(3600),
        ..LoadSpec::default()
    };
    let load = d.load(spec);
    let watcher = ReadyWatcher::start(d);
    let started = Instant::now();
    let seen = RefCell::new(Seen::default());
    seen.borrow_mut()
        .tokens
        .insert(Key::Old, d.workload.token.clone());
    let version = d.cluster.identity(&d.client, 0).await?.exe;
    let mut problems = Vec::new();
    let mut durations = Vec::new();
    for (index, step) in STEPS.iter().enumerate() {
        d.cluster.set_jwt_keys(JwtKeys {
            current: step.current.to_owned(),
            previous: step.previous.map(str::to_owned),
        });
        let before = pids(d).await;
        let step_started = Instant::now();
        let outcome = sampling(
            TICK,
            d.cluster.script(&[&version.to_string_lossy()]),
            || check(d, &seen, index, &before, load.started),
        )
        .await?;
        durations.push(step_started.elapsed());
        if !outcome.success {
            problems.push(format!(
                "step {} ({}) failed (exit {:?}):\n{}",
                index + 1,
                step.name,
                outcome.code,
                outcome.output
            ));
            break;
        }
        let after = pids(d).await;
        if before
            .iter()
            .zip(&after)
            .any(|(b, a)| b.is_none() || b == a)
        {
            problems.push(format!(
                "step {}: not every replica restarted (pids {before:?} then {after:?})",
                index + 1
            ));
        }
    }
    let rollout = started.elapsed();
    let readiness = watcher.stop().await?;
    let mut outcomes = load.stop().await?;
    let seen = seen.into_inner();
    outcomes.extend(seen.outcomes.iter().cloned());
    outcomes.sort_by_key(|o| o.started);
    let mut r = row("secret rotation", d, &outcomes);
    r.problems = problems;
    judge(
        &mut r,
        &outcomes,
        "none: every token used is valid on every replica at every moment, and a replica \
         leaves only after the balancer stopped routing to it",
        |_| false,
    );
    readiness.check_one_out(d.cluster.instances.len(), rollout, &mut r.problems);
    check_coverage(&seen, &mut r.problems);
    dropped_key_refused(d, &seen, &mut r.problems).await;
    let mean = durations.iter().sum::<Duration>() / durations.len().max(1) as u32;
    r.recovery = Some(mean);
    r.notes = notes(&seen);
    d.check_writes(&outcomes, &mut r.problems).await?;
    Ok(r)
}

/// Each replica's pid now, from the replica itself.
async fn pids(d: &Drill) -> Vec<Option<i32>> {
    d.cluster
        .identities(&d.client)
        .await
        .into_iter()
        .map(|i| i.ok().map(|i| i.pid))
        .collect()
}

/// Rolls every replica back to the drill's key alone, so that the later scenarios' tokens
/// work.
async fn restore(d: &Drill, problems: &mut Vec<String>) {
    d.cluster.set_jwt_keys(JwtKeys::drill());
    match d
        .cluster
        .script(&[&d.cluster.binary.to_string_lossy()])
        .await
    {
        Ok(outcome) if outcome.success => {}
        Ok(outcome) => problems.push(format!(
            "could not put the drill's key back:\n{}",
            outcome.output
        )),
        Err(e) => problems.push(format!("could not put the drill's key back: {e:#}")),
    }
}

/// One checker tick during step `step` (0-based): a login, then a read with the newest
/// token of each valid key through the balancer and on each replica directly.
async fn check(
    d: &Drill,
    seen: &RefCell<Seen>,
    step: usize,
    before: &[Option<i32>],
    run_started: Instant,
) {
    let (outcome, token) = login(d, run_started).await;
    let tokens: Vec<(Key, String)> = {
        let mut seen = seen.borrow_mut();
        seen.outcomes.push(outcome);
        if let Some((key, token)) = token.and_then(|t| Some((signed_by(&t)?, t))) {
            *seen.logins.entry(key).or_default() += 1;
            seen.tokens.insert(key, token);
        }
        let valid: &[Key] = if STEPS[step].new_valid {
            &[Key::Old, Key::New]
        } else {
            &[Key::Old]
        };
        valid
            .iter()
            .filter_map(|k| seen.tokens.get(k).map(|t| (*k, t.clone())))
            .collect()
    };
    let now = pids(d).await;
    let path = format!("/api/items/{}", d.workload.item_ids[0]);
    for (key, token) in tokens {
        let sent = Instant::now();
        let response = read(d, &d.balancer.url(&path), &token).await;
        let outcome = Outcome::once(
            Kind::Read,
            sent.duration_since(run_started),
            sent.elapsed(),
            Answer::of(&response),
        );
        seen.borrow_mut().outcomes.push(outcome);
        for (i, instance) in d.cluster.instances.iter().enumerate() {
            let Some(pid) = now[i] else { continue };
            let status = read(d, &instance.url(&path), &token)
                .await
                .map(|r| r.status().as_u16());
            let updated = before[i] != Some(pid);
            let mut seen = seen.borrow_mut();
            let cell = seen.direct.entry((step, key, updated)).or_default();
            match status {
                Ok(200) => cell.accepted += 1,
                Ok(401) => cell.refused += 1,
                _ => cell.other += 1,
            }
        }
    }
}

async fn read(d: &Drill, url: &str, token: &str) -> reqwest::Result<reqwest::Response> {
    d.client
        .get(url)
        .bearer_auth(token)
        .timeout(Duration::from_secs(10))
        .send()
        .await
}

/// A login through the balancer, as an outcome, and the token it gave.
async fn login(d: &Drill, run_started: Instant) -> (Outcome, Option<String>) {
    let sent = Instant::now();
    let response = d
        .client
        .post(d.balancer.url("/api/auth/login"))
        .json(&d.workload.credentials)
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    let answer = Answer::of(&response);
    let token = match response {
        Ok(r) if answer.ok() => r
            .json::<serde_json::Value>()
            .await
            .ok()
            .and_then(|b| b["token"].as_str().map(str::to_owned)),
        _ => None,
    };
    let outcome = Outcome::once(
        Kind::Login,
        sent.duration_since(run_started),
        sent.elapsed(),
        answer,
    );
    (outcome, token)
}

/// The key whose signature the token carries (the harness knows both secrets).
fn signed_by(token: &str) -> Option<Key> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.validate_aud = false;
    validation.validate_exp = false;
    validation.required_spec_claims.clear();
    let verifies = |secret: &str| {
        let key = DecodingKey::from_secret(secret.as_bytes());
        jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation).is_ok()
    };
    if verifies(DRILL_JWT_SECRET) {
        Some(Key::Old)
    } else if verifies(NEW_SECRET) {
        Some(Key::New)
    } else {
        None
    }
}

/// No valid token refused on a replica directly, and every case the rotation is about
/// seen: in the steps where both keys are valid, each key's tokens accepted by updated and
/// by not-yet-updated replicas; in the others, the old key's.
fn check_coverage(seen: &Seen, problems: &mut Vec<String>) {
    for ((step, key, updated), cell) in &seen.direct {
        if cell.refused > 0 {
            problems.push(format!(
                "step {}: {} x 401 for a valid {key:?}-key token on {} replicas",
                step + 1,
                cell.refused,
                updated_name(*updated)
            ));
        }
    }
    for (step, s) in STEPS.iter().enumerate() {
        let keys: &[Key] = if s.new_valid {
            &[Key::Old, Key::New]
        } else {
            &[Key::Old]
        };
        for key in keys {
            for updated in [false, true] {
                let accepted = seen
                    .direct
                    .get(&(step, *key, updated))
                    .map_or(0, |c| c.accepted);
                if accepted == 0 {
                    problems.push(format!(
                        "step {} ({}): no {key:?}-key token was accepted by {} replicas",
                        step + 1,
                        s.name,
                        updated_name(updated)
                    ));
                }
            }
        }
    }
}

fn updated_name(updated: bool) -> &'static str {
    if updated {
        "updated"
    } else {
        "not-yet-updated"
    }
}

/// Once the previous key is dropped, every replica refuses a new-key token and accepts an
/// old-key one: the last step really removed the key, and the rotation really used it.
async fn dropped_key_refused(d: &Drill, seen: &Seen, problems: &mut Vec<String>) {
    let Some(new) = seen.tokens.get(&Key::New) else {
        problems.push("no login ever returned a new-key token".to_owned());
        return;
    };
    for instance in &d.cluster.instances {
        let url = instance.url(&format!("/api/items/{}", d.workload.item_ids[0]));
        for (token, wanted) in [(new, 401), (&d.workload.token, 200)] {
            let status = read(d, &url, token).await.map(|r| r.status().as_u16());
            if status.as_ref().ok() != Some(&wanted) {
                problems.push(format!(
                    "after the rotation {} answered {status:?} to a token that should get {wanted}",
                    instance.name
                ));
            }
        }
    }
}

fn notes(seen: &Seen) -> String {
    let cells: Vec<String> = seen
        .direct
        .iter()
        .map(|((step, key, updated), c)| {
            format!(
                "{}/{key:?}/{}: {} ok, {} x 401, {} unanswered",
                step + 1,
                if *updated { "upd" } else { "old" },
                c.accepted,
                c.refused,
                c.other
            )
        })
        .collect();
    format!(
        "recovery = mean rollout time; 4 rollouts (verify new key, sign with it, rotate back, \
         drop the previous key); logins during them gave {} old-key and {} new-key tokens; \
         direct reads per step/key/replica: {}",
        seen.logins.get(&Key::Old).copied().unwrap_or(0),
        seen.logins.get(&Key::New).copied().unwrap_or(0),
        cells.join("; ")
    )
}
