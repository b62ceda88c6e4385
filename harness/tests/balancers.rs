//! The balancers cooperate with load shedding, behind real Traefik and real HAProxy with
//! their shipped configurations: a replica that answers 503 because it is busy stays
//! routed (the balancer's own server state stays up), and each shed request costs the
//! cluster one attempt (no balancer retry multiplies an overload). That a crashed replica
//! is still taken out at once is the drill's crash and sticky scenarios (`ha.rs`).
//! And only the API goes through them: a replica's internals (`/health/detailed` and the
//! other probes) are reachable on the internal networks alone.
//! Needs `cargo build --release` first, plus `traefik` and `haproxy` on the PATH.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Once;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use cartae_harness::balancer::{Balancer, BalancerKind};
use cartae_harness::cluster::{Cluster, Instance, Timings};
use cartae_harness::load::Workload;
use cartae_harness::process::wait_until;
use cartae_harness::scenarios::metric_sum;

/// Longer than Traefik's passive `failureWindow` (5 s): a balancer that counted the 503s
/// would have ejected the busy replica well before the end.
const SHED_FOR: Duration = Duration::from_secs(7);
/// One request every 25 ms: 40 per second, under Traefik's shipped rate limit (100/s).
const PACE: Duration = Duration::from_millis(25);

/// One cluster at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// One `/api` request at a time per replica, no queue: a replica with one request held
/// sheds every other one. The held request must not time out during the run.
fn shed_beyond_one_request() {
    static ENV: Once = Once::new();
    // Set before any runtime exists; the replicas inherit it through rolling-update.sh.
    ENV.call_once(|| {
        std::env::set_var("MAX_IN_FLIGHT_REQUESTS", "1");
        std::env::set_var("MAX_QUEUED_REQUESTS", "0");
        std::env::set_var("REQUEST_TIMEOUT_MS", "60000");
    });
}

/// A PATCH admitted, then blocked in PostgreSQL on a row lock this test holds: it keeps
/// the replica's only slot until the lock goes with the guard. (A request still sending
/// its body holds none: bodies are received before admission.)
struct HeldSlot {
    _lock: sqlx::PgConnection,
    _request: tokio::task::JoinHandle<()>,
}

async fn hold_the_only_slot(cluster: &Cluster, instance: &Instance) -> HeldSlot {
    let client = reqwest::Client::new();
    let workload = Workload::prepare(&client, &instance.url(""))
        .await
        .expect("a user and items on the replica");
    let id = workload.item_ids[0].clone();
    let mut lock = cluster
        .database
        .connect()
        .await
        .expect("a database connection");
    sqlx::query("BEGIN")
        .execute(&mut lock)
        .await
        .expect("begin");
    sqlx::query("SELECT 1 FROM items WHERE id = $1::uuid FOR UPDATE")
        .bind(&id)
        .execute(&mut lock)
        .await
        .expect("lock the item's row");
    let url = instance.url(&format!("/api/items/{id}"));
    let request = tokio::spawn(async move {
        let _ = client
            .patch(url)
            .bearer_auth(&workload.token)
            .json(&serde_json::json!({"favorite": true}))
            .send()
            .await;
    });
    HeldSlot {
        _lock: lock,
        _request: request,
    }
}

/// `/api/openapi.json`: behind admission control, but needs no token and no database.
async fn get_api(client: &reqwest::Client, url: &str) -> Option<reqwest::Response> {
    client
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()
}

/// Requests refused by a replica's admission control so far, from its own metrics.
async fn shed_count(client: &reqwest::Client, instance: &Instance) -> f64 {
    let text = client
        .get(instance.metrics_url())
        .send()
        .await
        .expect("replica metrics")
        .text()
        .await
        .unwrap_or_default();
    let shed = text
        .lines()
        .filter(|l| l.contains("resource=\"requests\""))
        .collect::<Vec<_>>()
        .join("\n");
    metric_sum(&shed, "overload_rejections_total")
}

/// One answer through the balancer.
#[derive(Debug)]
struct Answer {
    at: Duration,
    status: Option<u16>,
    instance: Option<String>,
    retry_after: bool,
}

/// Three replicas behind `kind`, their logs under `ha-logs/<test>-<kind>-<uuid>`. The
/// balancer marks every replica up with its own /ready check, straight to them.
async fn cluster_behind(kind: BalancerKind, test: &str) -> (PathBuf, Cluster, Balancer) {
    let dir = cartae_harness::repo_root().join("ha-logs").join(format!(
        "{test}-{}-{}",
        kind.name(),
        uuid::Uuid::new_v4().simple()
    ));
    let cluster = Cluster::start(Timings::default(), &dir.join("cluster"))
        .await
        .expect("the cluster starts");
    let balancer = Balancer::start(kind, &cluster, &dir.join(kind.name()))
        .await
        .expect("the balancer starts");
    (dir, cluster, balancer)
}

/// The test machine has two cores: each test alone, on its own two-thread runtime.
fn one_at_a_time(test: impl Future<Output = ()>) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(test);
}

async fn shedding_replica_stays_routed(kind: BalancerKind) {
    let (dir, cluster, balancer) = cluster_behind(kind, "balancers").await;
    let client = reqwest::Client::new();
    let busy = &cluster.instances[0];
    let url = balancer.url("/api/openapi.json");

    let held = hold_the_only_slot(&cluster, busy).await;
    let shedding = wait_until(Duration::from_secs(5), || async {
        get_api(&client, &busy.url("/api/openapi.json"))
            .await
            .is_some_and(|r| r.status() == 503)
    })
    .await;
    assert!(shedding, "{} never started to shed", busy.name);
    let shed_before = shed_count(&client, busy).await;

    let (mut answers, mut down_at) = (Vec::new(), Vec::new());
    let start = Instant::now();
    while start.elapsed() < SHED_FOR {
        let response = get_api(&client, &url).await;
        let header = |r: &reqwest::Response, name: &str| {
            r.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        answers.push(Answer {
            at: start.elapsed(),
            status: response.as_ref().map(|r| r.status().as_u16()),
            instance: response.as_ref().and_then(|r| header(r, "x-instance-id")),
            retry_after: response
                .as_ref()
                .is_some_and(|r| header(r, "retry-after").is_some()),
        });
        if balancer.server_up(&client, busy).await != Some(true) {
            down_at.push(start.elapsed());
        }
        tokio::time::sleep(PACE).await;
    }
    let shed = shed_count(&client, busy).await - shed_before;
    drop(held);

    let from_busy = |a: &&Answer| a.instance.as_deref() == Some(busy.name.as_str());
    let refused: Vec<&Answer> = answers.iter().filter(|a| a.status != Some(200)).collect();
    let unexpected: Vec<&&Answer> = refused
        .iter()
        .filter(|a| !(a.status == Some(503) && a.retry_after && from_busy(a)))
        .collect();
    let late = SHED_FOR - Duration::from_secs(1);
    let shed_late = refused.iter().filter(|a| a.at > late).count();
    let report = format!(
        "behind {}: {} requests, {} refused by {} ({} in the last second), {shed} shed by its \
         admission control; balancer had it down at {:?}; unexpected answers: {:?}",
        kind.name(),
        answers.len(),
        refused.len(),
        busy.name,
        shed_late,
        down_at.first(),
        unexpected.iter().take(5).collect::<Vec<_>>()
    );
    println!("{report}");
    assert!(down_at.is_empty(), "busy replica ejected: {report}");
    assert!(unexpected.is_empty(), "{report}");
    // Each shed request reached the busy replica once and its 503 went back to the
    // client (with Retry-After): no balancer retry turned one request into several.
    assert_eq!(shed as usize, refused.len(), "retried sheds: {report}");
    // Still routed at the end, past the passive check's window, and about its third of the
    // requests: round robin never skipped it.
    assert!(
        shed_late > 0,
        "no longer routed to the busy replica: {report}"
    );
    assert!(
        refused.len() * 4 >= answers.len(),
        "the busy replica got less than a quarter of the requests: {report}"
    );

    let serves_again = wait_until(Duration::from_secs(5), || async {
        get_api(&client, &url).await.is_some_and(|r| {
            r.status() == 200
                && r.headers()
                    .get("x-instance-id")
                    .and_then(|v| v.to_str().ok())
                    == Some(busy.name.as_str())
        })
    })
    .await;
    assert!(
        serves_again,
        "{} did not serve again once released",
        busy.name
    );
    drop(balancer);
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}

fn run(kind: BalancerKind) {
    shed_beyond_one_request();
    one_at_a_time(shedding_replica_stays_routed(kind));
}

#[test]
fn a_shedding_replica_stays_routed_behind_traefik() {
    run(BalancerKind::Traefik);
}

#[test]
fn a_shedding_replica_stays_routed_behind_haproxy() {
    run(BalancerKind::Haproxy);
}

/// Paths a client must not get an answer from through a balancer, `..` and encoded tricks
/// included. The probes and metrics are for the balancers' own checks, the orchestrator
/// and monitoring, which reach each replica directly.
const INTERNAL_PATHS: [&str; 11] = [
    "/health/detailed",
    "/health",
    "/live",
    "/ready",
    "/startup",
    "/metrics",
    "//health/detailed",
    "/api/../health/detailed",
    "/api/./../health/detailed",
    "/api/%2e%2e/health/detailed",
    "/api/%2E%2E/health",
];

/// One request as written on the wire (an HTTP client would resolve the `..` itself), and
/// the status and body of its answer.
async fn raw_get(port: u16, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to the balancer");
    let request = format!("GET {path} HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send a request");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .expect("an answer within 5 s")
        .expect("read the answer");
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// A replica's own facts, which only `/health/detailed` and `/health` carry.
fn shows_internals(answer: &str) -> bool {
    ["\"pid\"", "\"hostname\"", "\"checks\"", "\"instance\""]
        .iter()
        .any(|field| answer.contains(field))
}

async fn internals_stay_internal(kind: BalancerKind) {
    let (dir, cluster, balancer) = cluster_behind(kind, "internals").await;
    let replica = &cluster.instances[0];
    // The test can fail: the same request straight to a replica shows its internals.
    let (status, answer) = raw_get(replica.port, "/health/detailed").await;
    assert!(
        status == 200 && shows_internals(&answer),
        "a replica's own /health/detailed: {answer}"
    );
    let (status, _) = raw_get(balancer.port, "/api/openapi.json").await;
    assert_eq!(status, 200, "the API is routed behind {}", kind.name());
    let mut leaks = Vec::new();
    for path in INTERNAL_PATHS {
        let (status, answer) = raw_get(balancer.port, path).await;
        if (200..300).contains(&status) || shows_internals(&answer) {
            leaks.push(format!("{path}: {status}\n{answer}"));
        }
    }
    drop(balancer);
    drop(cluster);
    assert!(
        leaks.is_empty(),
        "behind {}, internals answered:\n{}",
        kind.name(),
        leaks.join("\n")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn only_the_api_is_reachable_behind_traefik() {
    one_at_a_time(internals_stay_internal(BalancerKind::Traefik));
}

#[test]
fn only_the_api_is_reachable_behind_haproxy() {
    one_at_a_time(internals_stay_internal(BalancerKind::Haproxy));
}
