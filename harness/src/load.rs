//! The load client: N workers, a bounded number of requests and time, a paced rate, and a
//! record of every request's outcome and latency.
//!
//! The mix is what replicas serve in production: item reads, item writes carrying an
//! `Idempotency-Key`, searches, and batch upserts by source. Writes may be retried with the same key, as a careful
//! client does when a replica dies mid-request, but only when the scenario asks for it
//! (`LoadSpec::retry_writes`); the first attempt's answer is always kept, so a failure
//! hidden by a retry still counts.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::history::{Action, Ending, Op, State};

mod open;
pub use open::{offer, Offer, Offered};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Read,
    Write,
    Search,
    Batch,
    Login,
}

/// One attempt's answer.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    /// None when no HTTP answer came back (connection error, timeout).
    pub status: Option<u16>,
    /// Whether the answer carried a `Retry-After` header.
    pub retry_after: bool,
    /// The replica that answered (`X-Instance-Id`), when one did.
    pub instance: Option<String>,
    pub error: Option<String>,
}

impl Answer {
    pub fn ok(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }

    /// What a request's send gave.
    pub fn of(response: &reqwest::Result<reqwest::Response>) -> Self {
        match response {
            Ok(response) => {
                let header = |name: &str| {
                    response
                        .headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                };
                Self {
                    status: Some(response.status().as_u16()),
                    retry_after: header("retry-after").is_some(),
                    instance: header("x-instance-id"),
                    error: None,
                }
            }
            Err(e) => Self {
                error: Some(e.to_string()),
                ..Self::default()
            },
        }
    }

    /// What a gateway or a dying replica gives: the answers a keyed retry is for.
    pub fn retryable(&self) -> bool {
        self.status.is_none_or(|s| (502..=504).contains(&s))
    }
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub kind: Kind,
    /// When the request started, from the start of the run.
    pub started: Duration,
    /// From the first attempt to the final answer.
    pub latency: Duration,
    /// The first attempt's answer: what a client without retries would have seen.
    pub first: Answer,
    /// The final answer (the first one when there was no retry).
    pub last: Answer,
    pub attempts: u32,
    pub idempotency_key: Option<String>,
}

impl Outcome {
    /// A request sent once, started `started` after its run began.
    pub fn once(kind: Kind, started: Duration, latency: Duration, answer: Answer) -> Self {
        Self {
            kind,
            started,
            latency,
            first: answer.clone(),
            last: answer,
            attempts: 1,
            idempotency_key: None,
        }
    }

    /// The first attempt succeeded: the drill's measure of a failure.
    pub fn first_ok(&self) -> bool {
        self.first.ok()
    }

    /// The final answer succeeded, after any retries.
    pub fn ok(&self) -> bool {
        self.last.ok()
    }

    /// When the request ended, from the start of the run.
    pub fn ended(&self) -> Duration {
        self.started + self.latency
    }
}

/// What the workers act on: a user's token and some of its items.
#[derive(Debug, Clone)]
pub struct Workload {
    /// `{email, password}` of the user.
    pub credentials: Value,
    pub token: String,
    pub item_ids: Vec<String>,
    pub search_terms: Vec<String>,
}

const SEARCH_TERMS: [&str; 4] = ["quarterly", "roadmap", "invoice", "meeting"];

impl Workload {
    /// Registers a user, logs in and creates a few items to read and search.
    pub async fn prepare(client: &reqwest::Client, base: &str) -> anyhow::Result<Self> {
        let email = format!("drill-{}@example.com", uuid::Uuid::new_v4().simple());
        let password = "drill-password-0123456789";
        let credentials = json!({"email": email, "password": password});
        let response = client
            .post(format!("{base}/api/auth/register"))
            .json(&credentials)
            .send()
            .await?;
        if response.status() != 201 {
            bail!(
                "register answered {}: {}",
                response.status(),
                response.text().await.unwrap_or_default()
            );
        }
        let token = sign_in(client, base, &credentials).await?;
        let mut item_ids = Vec::new();
        for i in 0..20 {
            let term = SEARCH_TERMS[i % SEARCH_TERMS.len()];
            let item: Value = client
                .post(format!("{base}/api/items"))
                .bearer_auth(&token)
                .json(&json!({"type": "note", "title": format!("seed {i} {term}"), "content": format!("the {term} notes"), "tags": ["drill"]}))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            item_ids.push(item["id"].as_str().context("item has no id")?.to_owned());
        }
        Ok(Self {
            credentials,
            token,
            item_ids,
            search_terms: SEARCH_TERMS.iter().map(|s| s.to_string()).collect(),
        })
    }
}

impl Workload {
    /// The item that read or update `n` acts on.
    pub fn item(&self, n: usize) -> &str {
        &self.item_ids[n % self.item_ids.len()]
    }

    /// Update `n`: an unconditional PATCH of [`Self::item`] `n` to `title`.
    pub fn update(
        &self,
        client: &reqwest::Client,
        base: &str,
        n: usize,
        title: &str,
    ) -> reqwest::RequestBuilder {
        client
            .patch(format!("{base}/api/items/{}", self.item(n)))
            .json(&json!({ "title": title }))
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(10))
    }

    /// Request `n` of `kind` as the drill user, with the load client's 10 s timeout. A
    /// write carries `key` as its `Idempotency-Key` and in its title; a batch upserts
    /// what `batches` gives for worker `owner`.
    pub fn request(
        &self,
        client: &reqwest::Client,
        base: &str,
        kind: Kind,
        n: usize,
        key: Option<&str>,
        (batches, owner): (Batches, usize),
    ) -> reqwest::RequestBuilder {
        let key = key.unwrap_or_default();
        let request = match kind {
            Kind::Read => client.get(format!(
                "{base}/api/items/{}",
                self.item_ids[n % self.item_ids.len()]
            )),
            Kind::Search => client
                .get(format!("{base}/api/search"))
                .query(&[("q", self.search_terms[n % self.search_terms.len()].as_str())]),
            Kind::Write => client
                .post(format!("{base}/api/items"))
                .header("Idempotency-Key", key)
                .json(&json!({"type": "note", "title": format!("drill-{key}"), "tags": ["drill"]})),
            Kind::Batch => client
                .post(format!("{base}/api/items/batch"))
                .json(&batches.body(owner, n)),
            Kind::Login => client
                .post(format!("{base}/api/auth/login"))
                .json(&self.credentials),
        };
        request
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(10))
    }
}

/// Logs in with `{email, password}` and returns the bearer token.
pub async fn sign_in(
    client: &reqwest::Client,
    base: &str,
    credentials: &Value,
) -> anyhow::Result<String> {
    let login: Value = client
        .post(format!("{base}/api/auth/login"))
        .json(credentials)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(login["token"]
        .as_str()
        .context("login gave no token")?
        .to_owned())
}

#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub workers: usize,
    /// Requests per second, all workers together. Traefik's shipped rate limit (100/s
    /// average per client IP) applies to the drill's single IP, so stay under it.
    pub rate: f64,
    pub max_requests: usize,
    pub max_duration: Duration,
    /// Shares of reads, writes, searches and batches.
    pub mix: [u32; 4],
    /// What a batch upserts.
    pub batches: Batches,
    /// Send the sticky cookie back (one client pinned to a replica), or not (fresh clients).
    pub sticky: bool,
    /// Retry a write with its key on no answer or a 502 to 504. Off unless a scenario
    /// says why a retry is legitimate (a replica killed mid-request).
    pub retry_writes: bool,
    /// With `retry_writes`, how many times a write is sent at most, 200 ms apart: a few
    /// outlast a killed replica; a database failover needs its whole window.
    pub write_attempts: u32,
    /// Record the history of the items read (see [`crate::history`]): every other write
    /// then updates one of them, unconditionally, to a title of its own, without a key.
    pub history: bool,
}

impl Default for LoadSpec {
    fn default() -> Self {
        Self {
            workers: 6,
            rate: 60.0,
            max_requests: 100_000,
            max_duration: Duration::from_secs(120),
            mix: [6, 2, 2, 0],
            batches: Batches::Own { size: 100 },
            sticky: false,
            retry_writes: false,
            write_attempts: 5,
            history: false,
        }
    }
}

/// The sources a batch upserts (connector `drill-batch`).
#[derive(Debug, Clone, Copy)]
pub enum Batches {
    /// The same `size` sources for every worker: ascending on even requests, descending on
    /// odd ones, so that concurrent batches name the same rows in opposite orders.
    Shared { size: usize },
    /// `size` sources of the worker's own: no two workers touch the same row, and the
    /// rows are updated again and again rather than piling up.
    Own { size: usize },
}

impl Batches {
    /// The JSON body of request `n` of worker `worker`.
    fn body(self, worker: usize, n: usize) -> Value {
        let source = |name: String| json!({"type": "note", "title": format!("batch {n}"), "tags": ["drill"], "source": {"connector": "drill-batch", "sourceId": name}});
        let items: Vec<Value> = match self {
            Batches::Shared { size } if n.is_multiple_of(2) => (0..size)
                .map(|i| source(format!("shared-{i:05}")))
                .collect(),
            Batches::Shared { size } => (0..size)
                .rev()
                .map(|i| source(format!("shared-{i:05}")))
                .collect(),
            Batches::Own { size } => (0..size)
                .map(|i| source(format!("worker-{worker}-{i:05}")))
                .collect(),
        };
        json!({ "items": items })
    }
}

pub struct LoadRun {
    /// Outcomes' `started` offsets count from here.
    pub started: Instant,
    stop: Arc<AtomicBool>,
    /// Set when a worker stopped on `max_requests` or `max_duration` rather than `stop`.
    limited: Arc<AtomicBool>,
    /// Requests answered with a 2xx on their first attempt so far, to wait on progress.
    successes: Arc<AtomicUsize>,
    workers: usize,
    history: Recorded,
    task: tokio::task::JoinHandle<anyhow::Result<Vec<Outcome>>>,
}

impl LoadRun {
    pub fn start(
        client: reqwest::Client,
        base: String,
        workload: Workload,
        spec: LoadSpec,
    ) -> Self {
        Self::start_spread(vec![client], base, workload, spec)
    }

    /// As [`Self::start`], worker `w` sending with `clients[w % clients.len()]` (see
    /// [`spread_clients`]).
    pub fn start_spread(
        clients: Vec<reqwest::Client>,
        base: String,
        workload: Workload,
        spec: LoadSpec,
    ) -> Self {
        let started = Instant::now();
        let shared = Shared {
            stop: Arc::new(AtomicBool::new(false)),
            limited: Arc::new(AtomicBool::new(false)),
            successes: Arc::new(AtomicUsize::new(0)),
            issued: Arc::new(AtomicUsize::new(0)),
            history: Recorded::default(),
            started,
        };
        let (stop, limited, successes) = (
            shared.stop.clone(),
            shared.limited.clone(),
            shared.successes.clone(),
        );
        let (workers, history) = (spec.workers, shared.history.clone());
        let task = tokio::spawn(run(clients, base, workload, spec, shared));
        Self {
            started,
            stop,
            limited,
            successes,
            workers,
            history,
            task,
        }
    }

    /// The item operations the run records (none unless `LoadSpec::history`): take
    /// them once it has stopped.
    pub fn history(&self) -> Recorded {
        self.history.clone()
    }

    /// How many workers send requests: at most this many are in flight.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Requests whose first attempt succeeded so far.
    pub fn successes(&self) -> usize {
        self.successes.load(Ordering::SeqCst)
    }

    /// Stops the workers after their current request and returns every outcome. An error
    /// when a worker panicked, or when the run had already ended on its own limits: the
    /// scenario then did not run under load until the end.
    pub async fn stop(self) -> anyhow::Result<Vec<Outcome>> {
        self.stop.store(true, Ordering::SeqCst);
        let outcomes = self.task.await.context("the load task panicked")??;
        if self.limited.load(Ordering::SeqCst) {
            bail!("the load ended on its request or time limit before the scenario stopped it");
        }
        Ok(outcomes)
    }

    /// Waits until the request or time bound ends the run. An error when a worker panicked.
    pub async fn finish(self) -> anyhow::Result<Vec<Outcome>> {
        self.task.await.context("the load task panicked")?
    }
}

/// The item operations of a run, shared by its workers.
#[derive(Clone, Default)]
pub struct Recorded(Arc<Mutex<Vec<Op>>>);

impl Recorded {
    pub fn push(&self, op: Op) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(op);
    }

    /// Every operation recorded so far, in the order they ended.
    pub fn take(&self) -> Vec<Op> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// What the workers of one run share.
#[derive(Clone)]
struct Shared {
    stop: Arc<AtomicBool>,
    limited: Arc<AtomicBool>,
    successes: Arc<AtomicUsize>,
    issued: Arc<AtomicUsize>,
    /// Item operations, when the spec records them.
    history: Recorded,
    started: Instant,
}

impl Shared {
    /// Whether a worker should stop before its next request, noting a stop on the limits.
    fn done(&self, spec: &LoadSpec) -> bool {
        if self.stop.load(Ordering::SeqCst) {
            return true;
        }
        let limited = self.started.elapsed() > spec.max_duration
            || self.issued.fetch_add(1, Ordering::SeqCst) >= spec.max_requests;
        if limited {
            self.limited.store(true, Ordering::SeqCst);
        }
        limited
    }
}

async fn run(
    clients: Vec<reqwest::Client>,
    base: String,
    workload: Workload,
    spec: LoadSpec,
    shared: Shared,
) -> anyhow::Result<Vec<Outcome>> {
    let per_worker = Duration::from_secs_f64(spec.workers as f64 / spec.rate.max(0.1));
    let workers = (0..spec.workers).map(|worker| {
        let (client, base, workload, spec, shared) = (
            clients[worker % clients.len().max(1)].clone(),
            base.clone(),
            workload.clone(),
            spec.clone(),
            shared.clone(),
        );
        tokio::spawn(async move {
            let mut outcomes = Vec::new();
            let mut cookie: Option<String> = None;
            let mut ticker = tokio::time::interval(per_worker);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n = worker;
            loop {
                ticker.tick().await;
                if shared.done(&spec) {
                    break;
                }
                let kind = pick(&spec.mix, n);
                n += spec.workers;
                let outcome = one_request(
                    &client,
                    &base,
                    &workload,
                    kind,
                    n,
                    &shared,
                    &mut cookie,
                    &spec,
                )
                .await;
                if outcome.first_ok() {
                    shared.successes.fetch_add(1, Ordering::SeqCst);
                }
                outcomes.push(outcome);
            }
            outcomes
        })
    });
    let mut all = Vec::new();
    for worker in futures::future::join_all(workers).await {
        all.extend(worker.context("a load worker panicked")?);
    }
    all.sort_by_key(|o| o.started);
    Ok(all)
}

/// The kind of request `n` under `mix`.
pub(crate) fn pick(mix: &[u32; 4], n: usize) -> Kind {
    let total: u32 = mix.iter().sum::<u32>().max(1);
    let mut slot = (n as u32).wrapping_mul(7) % total;
    for (kind, share) in [Kind::Read, Kind::Write, Kind::Search].into_iter().zip(mix) {
        if slot < *share {
            return kind;
        }
        slot -= share;
    }
    Kind::Batch
}

#[allow(clippy::too_many_arguments)]
async fn one_request(
    client: &reqwest::Client,
    base: &str,
    workload: &Workload,
    kind: Kind,
    n: usize,
    shared: &Shared,
    cookie: &mut Option<String>,
    spec: &LoadSpec,
) -> Outcome {
    let run_started = shared.started;
    let started = Instant::now();
    let recorded = spec.history && matches!(kind, Kind::Read | Kind::Write);
    // An update carries no key: it is checked by the history, not by the keyed creates.
    let update = (recorded && kind == Kind::Write && n % 2 == 1)
        .then(|| format!("drill-update-{}", uuid::Uuid::new_v4().simple()));
    let key = (kind == Kind::Write && update.is_none()).then(|| uuid::Uuid::new_v4().to_string());
    let mut body: Option<Value>;
    // The key makes a write's retry safe; reads rely on the load balancer's own retry.
    let max_attempts = if kind == Kind::Write && spec.retry_writes {
        spec.write_attempts.max(1)
    } else {
        1
    };
    let mut attempts = 0;
    let mut first: Option<Answer> = None;
    let last = loop {
        attempts += 1;
        let mut request = match &update {
            Some(title) => workload.update(client, base, n, title),
            None => workload.request(
                client,
                base,
                kind,
                n,
                key.as_deref(),
                (spec.batches, n % spec.workers),
            ),
        };
        if let (true, Some(c)) = (spec.sticky, cookie.as_ref()) {
            request = request.header("Cookie", c.clone());
        }
        let response = request.send().await;
        if let (true, Ok(response)) = (spec.sticky, &response) {
            remember_cookie(response, cookie);
        }
        let answer = Answer::of(&response);
        body = match response {
            Ok(response) if recorded && (kind == Kind::Read || update.is_some()) => {
                response.json().await.ok()
            }
            _ => None,
        };
        let again = answer.retryable() && attempts < max_attempts;
        first.get_or_insert_with(|| answer.clone());
        if !again {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let outcome = Outcome {
        kind,
        started: started.duration_since(run_started),
        latency: started.elapsed(),
        first: first.unwrap_or_else(|| last.clone()),
        last,
        attempts,
        idempotency_key: key,
    };
    let action = match update {
        Some(title) => Action::Update { title },
        None => Action::Read,
    };
    if recorded && (kind == Kind::Read || action != Action::Read) {
        let op = item_op(workload.item(n), action, &outcome, body.as_ref());
        shared.history.push(op);
    }
    outcome
}

/// The history's record of a read or update of `item` that gave `outcome` and `body`.
pub(crate) fn item_op(item: &str, action: Action, outcome: &Outcome, body: Option<&Value>) -> Op {
    let status = outcome.last.status;
    let ending = match action {
        Action::Read => Ending::of_read(status),
        _ => Ending::of_write(status),
    };
    Op {
        item: item.to_owned(),
        action,
        started: outcome.started,
        ended: outcome.ended(),
        ending,
        seen: State::of_answer(status, body).filter(|_| ending == Ending::Ok),
    }
}

/// Clients sending from `count` loopback addresses (127.0.0.2 and up, at most 253), one
/// each: many clients, as in production, so that a per-client-IP limit in front of the
/// cluster (Traefik's shipped rate limit, 100/s per IP) is not what a load measures.
pub fn spread_clients(count: usize) -> anyhow::Result<Vec<reqwest::Client>> {
    if !(1..=253).contains(&count) {
        bail!("{count} client addresses: 127.0.0.2 to 127.0.0.254 hold 253");
    }
    (0..count)
        .map(|i| {
            let address = std::net::Ipv4Addr::new(127, 0, 0, 2 + i as u8);
            Ok(reqwest::Client::builder()
                .local_address(std::net::IpAddr::V4(address))
                .pool_max_idle_per_host(64)
                .build()?)
        })
        .collect()
}

/// Keeps the balancer's sticky cookie, as a browser would.
fn remember_cookie(response: &reqwest::Response, cookie: &mut Option<String>) {
    let pair = response
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|set| set.split(';').next())
        .filter(|p| p.starts_with("cartae_server="));
    if let Some(pair) = pair {
        *cookie = Some(pair.to_owned());
    }
}

/// Latency percentiles over outcomes, in milliseconds.
pub fn percentiles(outcomes: &[Outcome]) -> (f64, f64, f64) {
    let ms: Vec<f64> = outcomes
        .iter()
        .map(|o| o.latency.as_secs_f64() * 1000.0)
        .collect();
    (
        quantile(&ms, 0.50),
        quantile(&ms, 0.95),
        quantile(&ms, 0.99),
    )
}

/// The `q` quantile of some milliseconds (0 when there are none).
pub fn quantile(ms: &[f64], q: f64) -> f64 {
    let mut sorted = ms.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    sorted
        .get(((sorted.len() as f64 - 1.0) * q).round() as usize)
        .copied()
        .unwrap_or(0.0)
}
