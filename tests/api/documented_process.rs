//! What only the real binary can show, as the README documents it: the `healthcheck`
//! command's exit code, a signal while starting (an exit without the drain), the
//! shutdown timeout expiring, and logs that never carry a secret.
//!
//! Multi-threaded: the dependency proxies run on the test's runtime and must keep
//! forwarding while the test blocks on a child process.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{base_env, metric_value, pg_url, TestDatabase, PG_ADDR, REDIS_ADDR};
use crate::support::process::{run_to_end, Replica};
use crate::support::proxy::{Mode, TcpProxy};

const WITHIN: Duration = Duration::from_secs(20);

/// A replica's environment, its PostgreSQL reached through `pg`.
fn env_through(
    pg: &TcpProxy,
    db: &TestDatabase,
    extra: &[(&str, &str)],
) -> HashMap<String, String> {
    let mut env = base_env(
        &pg_url(&pg.addr.to_string(), &db.name),
        "redis://127.0.0.1:6379",
    );
    env.insert("LOG_LEVEL".into(), "info".into());
    for (key, value) in extra {
        env.insert((*key).into(), (*value).into());
    }
    env
}

async fn pg_proxy() -> TcpProxy {
    TcpProxy::start(PG_ADDR.parse().unwrap(), true).await
}

async fn get_json(url: &str) -> Option<(u16, serde_json::Value)> {
    let response = reqwest::get(url).await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.json().await.ok()?))
}

async fn metric(replica: &Replica, name: &str, labels: &[(&str, &str)]) -> f64 {
    let url = format!("http://127.0.0.1:{}/metrics", replica.metrics_port);
    let text = match reqwest::get(&url).await {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    metric_value(&text, name, labels)
}

/// Polls `path` until its answer satisfies `check`; panics with the logs otherwise.
async fn wait_for(replica: &Replica, path: &str, check: impl Fn(u16, &serde_json::Value) -> bool) {
    let reached = cartae_harness::process::wait_until(WITHIN, || async {
        get_json(&replica.url(path))
            .await
            .is_some_and(|(status, body)| check(status, &body))
    })
    .await;
    assert!(
        reached,
        "{path} never as expected; logs:\n{}",
        replica.logs()
    );
}

fn healthcheck(replica: &Replica) -> (Option<i32>, String) {
    let env = HashMap::from([("PORT".to_owned(), replica.port.to_string())]);
    let (status, output) = run_to_end(&["healthcheck"], &env);
    (status.code(), output)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_exits_1_while_ready_answers_503_and_0_once_it_answers_200() {
    let db = TestDatabase::create().await.unwrap();
    let pg = pg_proxy().await;
    pg.set_mode(Mode::Cut);
    let replica = Replica::start(env_through(&pg, &db, &[])).await;
    // Serving HTTP, so the command reaches it, and answering 503.
    wait_for(&replica, "/ready", |s, _| s == 503).await;
    let (code, output) = healthcheck(&replica);
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("not ready"), "{output}");

    pg.set_mode(Mode::Forward);
    wait_for(&replica, "/ready", |s, _| s == 200).await;
    let (code, output) = healthcheck(&replica);
    assert_eq!(code, Some(0), "{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_while_starting_stops_at_once_without_the_drain() {
    let db = TestDatabase::create().await.unwrap();
    let pg = pg_proxy().await;
    pg.set_mode(Mode::Cut);
    let mut replica = Replica::start(env_through(&pg, &db, &[("DRAIN_DELAY_MS", "60000")])).await;
    wait_for(&replica, "/startup", |s, b| {
        s == 503 && b["phase"] == "starting"
    })
    .await;
    let signalled = Instant::now();
    replica.signal("TERM");
    // Never ready, so never in a balancer's rotation: nothing to drain, and the start-up
    // loop (retrying an unreachable PostgreSQL) gives way at once.
    let status = replica.wait_exit(WITHIN).expect("exited on the signal");
    let logs = replica.logs();
    assert_eq!(status.code(), Some(0), "logs:\n{logs}");
    assert!(
        signalled.elapsed() < Duration::from_secs(10),
        "took {:?}; logs:\n{logs}",
        signalled.elapsed()
    );
    assert!(logs.contains("without a drain"), "{logs}");
    assert!(!logs.contains("did not stop in time"), "{logs}");
}

/// A login whose body never finishes arriving: in flight until the server gives up on it.
async fn stuck_request(replica: &Replica) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", replica.port))
        .await
        .unwrap();
    let head = "POST /api/auth/login HTTP/1.1\r\nHost: localhost\r\n\
                Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"email\":";
    stream.write_all(head.as_bytes()).await.unwrap();
    let in_flight = cartae_harness::process::wait_until(WITHIN, || async {
        metric(replica, "active_connections", &[]).await >= 1.0
    })
    .await;
    assert!(in_flight, "the request never reached the service");
    stream
}

/// A ready replica, sent SIGTERM while a request is stuck in flight. The database and the
/// proxy are returned to be kept alive.
async fn stopping_with_a_stuck_request(
    shutdown_timeout_ms: &str,
) -> (TestDatabase, TcpProxy, Replica, TcpStream) {
    let db = TestDatabase::create().await.unwrap();
    let pg = pg_proxy().await;
    let extra = [
        ("DRAIN_DELAY_MS", "200"),
        ("SHUTDOWN_TIMEOUT_MS", shutdown_timeout_ms),
    ];
    let replica = Replica::start(env_through(&pg, &db, &extra)).await;
    wait_for(&replica, "/ready", |s, _| s == 200).await;
    let stream = stuck_request(&replica).await;
    replica.signal("TERM");
    (db, pg, replica, stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_while_stopping_exits_130_without_waiting_for_in_flight_requests() {
    let (_db, _pg, mut replica, _stream) = stopping_with_a_stuck_request("600000").await;
    let stopping = cartae_harness::process::wait_until(WITHIN, || async {
        metric(&replica, "lifecycle_phase", &[("phase", "stopping")]).await == 1.0
    })
    .await;
    assert!(
        stopping,
        "never reached stopping; logs:\n{}",
        replica.logs()
    );
    assert!(
        replica.wait_exit(Duration::ZERO).is_none(),
        "still waiting for the request"
    );
    replica.signal("INT");
    // Far below the 10-minute shutdown timeout it would otherwise wait.
    let status = replica
        .wait_exit(WITHIN)
        .expect("exited on the second signal");
    assert_eq!(status.code(), Some(130), "logs:\n{}", replica.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_shutdown_timeout_abandons_in_flight_requests_and_exits_0() {
    let (_db, _pg, mut replica, mut stream) = stopping_with_a_stuck_request("1000").await;
    let signalled = Instant::now();
    // The request would wait forever: only the timeout can end the stop.
    let status = replica
        .wait_exit(WITHIN)
        .expect("exited at the shutdown timeout");
    assert_eq!(status.code(), Some(0), "logs:\n{}", replica.logs());
    assert!(
        signalled.elapsed() >= Duration::from_millis(1100),
        "exited before drain delay plus shutdown timeout: {:?}",
        signalled.elapsed()
    );
    assert!(
        replica
            .logs()
            .contains("in-flight requests still running at the shutdown timeout"),
        "logs:\n{}",
        replica.logs()
    );
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(WITHIN, stream.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the abandoned connection was left open");
}

/// Sends `body` (if any, with an `Idempotency-Key`) with `token` (if any) to `path`;
/// asserts the status and returns the JSON body.
async fn expect(
    replica: &Replica,
    (method, path): (reqwest::Method, &str),
    token: Option<&str>,
    body: Option<serde_json::Value>,
    status: u16,
) -> serde_json::Value {
    let mut request = reqwest::Client::new().request(method, replica.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.header("Idempotency-Key", "k-1").json(&body);
    }
    let response = request.send().await.expect("request sent");
    assert_eq!(response.status().as_u16(), status, "{path}");
    response.json().await.unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_appear_in_the_logs() {
    let db = TestDatabase::create().await.unwrap();
    let pg = pg_proxy().await;
    let redis = TcpProxy::start(REDIS_ADDR.parse().unwrap(), false).await;
    let secret = |what: &str| format!("{what}{}", uuid::Uuid::new_v4().simple());
    let (pg_password, redis_password) = (secret("pgpass"), secret("redispass"));
    let (jwt_secret, user_password) = (secret("jwtsecret"), secret("userpass"));
    let database_url = format!(
        "postgres://postgres:{pg_password}@{}/{}?sslmode=disable",
        pg.addr, db.name
    );
    // Redis accepts any password for its password-less default user when it is named.
    let redis_url = format!("redis://default:{redis_password}@{}", redis.addr);
    let mut env = base_env(&database_url, &redis_url);
    env.insert("JWT_SECRET".into(), jwt_secret.clone());
    // As verbose as the service can be, every dependency's logs included.
    env.insert(
        "LOG_LEVEL".into(),
        "trace,sqlx=trace,tower_http=trace".into(),
    );
    let mut replica = Replica::start(env).await;
    wait_for(&replica, "/ready", |s, _| s == 200).await;

    use reqwest::Method;
    let email = format!("user-{}@example.com", uuid::Uuid::new_v4().simple());
    let credentials =
        |password: &str| Some(serde_json::json!({"email": email, "password": password}));
    let (register, login) = (
        (Method::POST, "/api/auth/register"),
        (Method::POST, "/api/auth/login"),
    );
    expect(&replica, register, None, credentials(&user_password), 201).await;
    let wrong = secret("wrongpass");
    expect(&replica, login.clone(), None, credentials(&wrong), 401).await;
    let mut tokens = Vec::new();
    for _ in 0..2 {
        let body = expect(
            &replica,
            login.clone(),
            None,
            credentials(&user_password),
            200,
        )
        .await;
        tokens.push(body["token"].as_str().unwrap().to_owned());
    }
    let (token, kept) = (tokens[0].as_str(), tokens[1].as_str());
    let note = Some(serde_json::json!({"type": "note", "title": "logged?"}));
    let (me, items) = ((Method::GET, "/api/auth/me"), (Method::GET, "/api/items"));
    expect(
        &replica,
        (Method::POST, "/api/items"),
        Some(token),
        note,
        201,
    )
    .await;
    expect(&replica, me.clone(), Some(&format!("{token}x")), None, 401).await;
    let logout = (Method::POST, "/api/auth/logout");
    expect(&replica, logout, Some(token), None, 204).await;
    expect(&replica, me, Some(token), None, 401).await;

    // Outages, so that connection errors are logged with their causes.
    pg.set_mode(Mode::Cut);
    wait_for(&replica, "/ready", |s, _| s == 503).await;
    expect(&replica, items.clone(), Some(kept), None, 503).await;
    pg.set_mode(Mode::Forward);
    wait_for(&replica, "/ready", |s, _| s == 200).await;
    redis.set_mode(Mode::Cut);
    wait_for(&replica, "/health", |_, b| {
        b["checks"]["redis"]["status"] == "failed"
    })
    .await;
    expect(&replica, items, Some(kept), None, 200).await;
    redis.set_mode(Mode::Forward);
    wait_for(&replica, "/health", |_, b| {
        b["checks"]["redis"]["status"] == "ok"
    })
    .await;
    replica.signal("TERM");
    replica.wait_exit(WITHIN).expect("exited");

    let logs = replica.logs();
    // The logs did see every path above: the check below is not vacuous.
    for seen in [
        "request served",
        "database",
        "redis failed",
        "token issued",
        "stopped",
    ] {
        assert!(logs.contains(seen), "no {seen:?} in the logs");
    }
    let signature = token.rsplit('.').next().unwrap();
    for (what, secret) in [
        ("JWT_SECRET", jwt_secret.as_str()),
        ("the PostgreSQL password", &pg_password),
        ("the Redis password", &redis_password),
        ("a bearer token", token),
        ("a token's signature", signature),
        ("a user's password", &user_password),
        ("a wrong password", &wrong),
    ] {
        let lines: Vec<&str> = logs.lines().filter(|l| l.contains(secret)).collect();
        assert!(lines.is_empty(), "{what} logged:\n{}", lines.join("\n"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_answering_503_are_logged_at_debug_only() {
    let db = TestDatabase::create().await.unwrap();
    let pg = pg_proxy().await;
    pg.set_mode(Mode::Cut);
    let mut replica = Replica::start(env_through(&pg, &db, &[])).await;
    for path in ["/ready", "/health", "/startup"] {
        wait_for(&replica, path, |s, _| s == 503).await;
    }
    // A request that is not a probe is logged, so the log is being written.
    let stats = (reqwest::Method::GET, "/api/stats");
    expect(&replica, stats, None, None, 503).await;
    replica.signal("TERM");
    replica.wait_exit(WITHIN).expect("exited");
    // Load balancers probe every few seconds: an outage must not flood the logs. So the
    // only request logged is the one that is not a probe.
    let logs = replica.logs();
    let requests: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["status"].is_number())
        .collect();
    assert_eq!(requests.len(), 1, "{logs}");
    assert_eq!(requests[0]["span"]["path"], "/api/stats", "{logs}");
}
