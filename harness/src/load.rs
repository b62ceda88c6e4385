//! The load client: N workers, a bounded number of requests and time, a paced rate, and a
//! record of every request's outcome and latency.
//!
//! The mix is what replicas serve in production: item reads, item writes carrying an
//! `Idempotency-Key` (retried by the client with the same key, as a careful client does
//! when a replica dies mid-request), and searches.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Read,
    Write,
    Search,
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub kind: Kind,
    /// When the request started, from the start of the run.
    pub started: Duration,
    /// From the first attempt to the final answer.
    pub latency: Duration,
    pub status: Option<u16>,
    pub attempts: u32,
    pub instance: Option<String>,
    pub idempotency_key: Option<String>,
    pub error: Option<String>,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// What the workers act on: a user's token and some of its items.
#[derive(Debug, Clone)]
pub struct Workload {
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
            token,
            item_ids,
            search_terms: SEARCH_TERMS.iter().map(|s| s.to_string()).collect(),
        })
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
    /// Out of 10: reads, writes, searches.
    pub mix: [u32; 3],
    /// Send the sticky cookie back (one client pinned to a replica), or not (fresh clients).
    pub sticky: bool,
}

impl Default for LoadSpec {
    fn default() -> Self {
        Self {
            workers: 6,
            rate: 60.0,
            max_requests: 100_000,
            max_duration: Duration::from_secs(120),
            mix: [6, 2, 2],
            sticky: false,
        }
    }
}

pub struct LoadRun {
    /// Outcomes' `started` offsets count from here.
    pub started: Instant,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<Outcome>>,
}

impl LoadRun {
    pub fn start(
        client: reqwest::Client,
        base: String,
        workload: Workload,
        spec: LoadSpec,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let task = tokio::spawn(run(client, base, workload, spec, stop.clone(), started));
        Self {
            started,
            stop,
            task,
        }
    }

    /// Stops the workers after their current request and returns every outcome.
    pub async fn stop(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap_or_default()
    }

    /// Waits until the request or time bound ends the run.
    pub async fn finish(self) -> Vec<Outcome> {
        self.task.await.unwrap_or_default()
    }
}

async fn run(
    client: reqwest::Client,
    base: String,
    workload: Workload,
    spec: LoadSpec,
    stop: Arc<AtomicBool>,
    started: Instant,
) -> Vec<Outcome> {
    let issued = Arc::new(AtomicUsize::new(0));
    let per_worker = Duration::from_secs_f64(spec.workers as f64 / spec.rate.max(0.1));
    let workers = (0..spec.workers).map(|worker| {
        let (client, base, workload, spec, stop, issued) = (
            client.clone(),
            base.clone(),
            workload.clone(),
            spec.clone(),
            stop.clone(),
            issued.clone(),
        );
        tokio::spawn(async move {
            let mut outcomes = Vec::new();
            let mut cookie: Option<String> = None;
            let mut ticker = tokio::time::interval(per_worker);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n = worker;
            loop {
                ticker.tick().await;
                if stop.load(Ordering::SeqCst)
                    || started.elapsed() > spec.max_duration
                    || issued.fetch_add(1, Ordering::SeqCst) >= spec.max_requests
                {
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
                    started,
                    &mut cookie,
                    spec.sticky,
                )
                .await;
                outcomes.push(outcome);
            }
            outcomes
        })
    });
    let mut all = Vec::new();
    for worker in futures::future::join_all(workers).await {
        all.extend(worker.unwrap_or_default());
    }
    all.sort_by_key(|o| o.started);
    all
}

fn pick(mix: &[u32; 3], n: usize) -> Kind {
    let total: u32 = mix.iter().sum::<u32>().max(1);
    let slot = (n as u32).wrapping_mul(7) % total;
    if slot < mix[0] {
        Kind::Read
    } else if slot < mix[0] + mix[1] {
        Kind::Write
    } else {
        Kind::Search
    }
}

#[allow(clippy::too_many_arguments)]
async fn one_request(
    client: &reqwest::Client,
    base: &str,
    workload: &Workload,
    kind: Kind,
    n: usize,
    run_started: Instant,
    cookie: &mut Option<String>,
    sticky: bool,
) -> Outcome {
    let started = Instant::now();
    let key = (kind == Kind::Write).then(|| uuid::Uuid::new_v4().to_string());
    // Writes are retried with the same key when no answer or a gateway error came back:
    // the key makes the retry safe. Reads rely on the load balancer's own retry.
    let max_attempts = if kind == Kind::Write { 5 } else { 1 };
    let mut attempts = 0;
    let (status, instance, error) = loop {
        attempts += 1;
        let mut request = match kind {
            Kind::Read => client.get(format!("{base}/api/items/{}", workload.item_ids[n % workload.item_ids.len()])),
            Kind::Search => client
                .get(format!("{base}/api/search"))
                .query(&[("q", workload.search_terms[n % workload.search_terms.len()].as_str())]),
            Kind::Write => client
                .post(format!("{base}/api/items"))
                .header("Idempotency-Key", key.as_deref().unwrap_or_default())
                .json(&json!({"type": "note", "title": format!("drill-{}", key.as_deref().unwrap_or_default()), "tags": ["drill"]})),
        };
        request = request
            .bearer_auth(&workload.token)
            .timeout(Duration::from_secs(10));
        if let (true, Some(c)) = (sticky, cookie.as_ref()) {
            request = request.header("Cookie", c.clone());
        }
        match request.send().await {
            Ok(response) => {
                if sticky {
                    if let Some(set) = response
                        .headers()
                        .get("set-cookie")
                        .and_then(|v| v.to_str().ok())
                    {
                        if let Some(pair) = set
                            .split(';')
                            .next()
                            .filter(|p| p.starts_with("cartae_server="))
                        {
                            *cookie = Some(pair.to_owned());
                        }
                    }
                }
                let status = response.status().as_u16();
                let instance = response
                    .headers()
                    .get("x-instance-id")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let retryable = matches!(status, 502..=504);
                if !retryable || attempts >= max_attempts {
                    break (Some(status), instance, None);
                }
            }
            Err(e) if attempts >= max_attempts => break (None, None, Some(e.to_string())),
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    Outcome {
        kind,
        started: started.duration_since(run_started),
        latency: started.elapsed(),
        status,
        attempts,
        instance,
        idempotency_key: key,
        error,
    }
}

/// Latency percentiles over outcomes, in milliseconds.
pub fn percentiles(outcomes: &[Outcome]) -> (f64, f64, f64) {
    let mut ms: Vec<f64> = outcomes
        .iter()
        .map(|o| o.latency.as_secs_f64() * 1000.0)
        .collect();
    if ms.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    ms.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| ms[((ms.len() as f64 - 1.0) * q).round() as usize];
    (at(0.50), at(0.95), at(0.99))
}
