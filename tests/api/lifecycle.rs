//! Draining and stopping: in-process through the same signal channel as SIGTERM, and with
//! the real binary and real signals.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cartae_database_api::lifecycle::Phase;
use cartae_database_api::startup::Stopped;

use crate::helpers::{base_env, pg_url, spawn_app_with, AppOptions, TestDatabase, PG_ADDR};
use crate::support::process::{run_to_end, Replica};

#[tokio::test]
async fn a_stop_signal_drains_probes_at_once_while_routes_keep_serving() {
    const DRAIN: Duration = Duration::from_millis(3000);
    // No check round during the test: the 503 can only come from the phase.
    let app = spawn_app_with(
        AppOptions::default()
            .env("DRAIN_DELAY_MS", &DRAIN.as_millis().to_string())
            .env("HEALTH_CHECK_INTERVAL_MS", "60000")
            .env("HEALTH_CHECK_TIMEOUT_MS", "2000"),
    )
    .await;
    let token = app.new_user().await;
    let rounds = |text: &str| crate::helpers::metric_value(text, "health_check_total", &[]);
    let rounds_before = rounds(&app.metrics().await);
    let signalled = Instant::now();
    app.signal();
    let body = app.wait_for("/ready", DRAIN, |s, _| s == 503).await;
    assert_eq!(body["reasons"], serde_json::json!(["draining"]));
    for probe in ["/health", "/health/detailed"] {
        let (status, body) = app.get_json(probe).await;
        assert_eq!(status, 503, "{probe}");
        assert_eq!(body["reasons"], serde_json::json!(["draining"]), "{probe}");
    }
    // Still serving everything else during the drain delay.
    for i in 0..5 {
        for path in ["/live", "/startup"] {
            assert_eq!(app.get_json(path).await.0, 200, "{path}");
        }
        let created = app.note(&token, &format!("during the drain {i}")).await;
        let listed = app.list_items(&token, "?limit=1").await;
        assert_eq!(listed.status, 200, "{}", listed.body);
        assert_eq!(listed.body["items"][0]["id"], created["id"]);
    }
    let metrics = app.metrics().await;
    assert_eq!(
        rounds(&metrics),
        rounds_before,
        "a check round ran: the 503 proves nothing"
    );
    assert_eq!(
        crate::helpers::metric_value(&metrics, "lifecycle_phase", &[("phase", "draining")]),
        1.0,
        "the drain delay ended before the routes were checked"
    );
    assert_eq!(
        crate::helpers::metric_value(&metrics, "instance_health", &[]),
        0.0
    );
    let outcome = tokio::time::timeout(Duration::from_secs(20), app.run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(outcome, Stopped::Gracefully);
    assert!(
        signalled.elapsed() >= DRAIN,
        "stopped before the drain delay"
    );
}

async fn process_env(db: &TestDatabase, drain_ms: u64) -> HashMap<String, String> {
    let mut env = base_env(&pg_url(PG_ADDR, &db.name), "redis://127.0.0.1:6379");
    env.insert("DRAIN_DELAY_MS".into(), drain_ms.to_string());
    env.insert("INSTANCE_ID".into(), "proc-1".into());
    env.insert("LOG_LEVEL".into(), "info".into());
    env
}

/// One route of the drain load, and what it must answer.
#[derive(Clone, Copy, PartialEq)]
enum Route {
    /// `/ready`, `/health`, `/health/detailed`: 200, then 503 with reason `draining` once
    /// the signal is sent.
    Probe(&'static str),
    /// `/live`, `/startup`: 200 throughout.
    Steady(&'static str),
    /// Authenticated `GET /api/items`: 200 throughout.
    ListItems,
    /// Authenticated `POST /api/items`: 201 throughout.
    CreateItem,
}

#[derive(Default)]
struct Tally {
    served_after_signal: u64,
    draining: u64,
    failures: Vec<String>,
}

impl Route {
    const ALL: [Route; 7] = [
        Route::Probe("/ready"),
        Route::Probe("/health"),
        Route::Probe("/health/detailed"),
        Route::Steady("/live"),
        Route::Steady("/startup"),
        Route::ListItems,
        Route::CreateItem,
    ];

    fn name(self) -> &'static str {
        match self {
            Route::Probe(path) | Route::Steady(path) => path,
            Route::ListItems => "GET /api/items",
            Route::CreateItem => "POST /api/items",
        }
    }

    async fn send(
        self,
        client: &reqwest::Client,
        base: &str,
        token: &str,
    ) -> reqwest::Result<(u16, serde_json::Value)> {
        let request = match self {
            Route::Probe(path) | Route::Steady(path) => client.get(format!("{base}{path}")),
            Route::ListItems => client
                .get(format!("{base}/api/items?limit=5"))
                .bearer_auth(token),
            Route::CreateItem => client
                .post(format!("{base}/api/items"))
                .bearer_auth(token)
                .json(&serde_json::json!({"type": "note", "title": "written during the drain"})),
        };
        let response = request.send().await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await.unwrap_or_default()))
    }

    /// Records one answer; `signalled` says whether it arrived after the signal was sent.
    fn judge(
        self,
        tally: &mut Tally,
        answer: reqwest::Result<(u16, serde_json::Value)>,
        signalled: bool,
    ) {
        let expected = if self == Route::CreateItem { 201 } else { 200 };
        match answer {
            Ok((status, _)) if status == expected => {
                tally.served_after_signal += u64::from(signalled);
            }
            Ok((503, body))
                if matches!(self, Route::Probe(_))
                    && signalled
                    && body["reasons"] == serde_json::json!(["draining"]) =>
            {
                tally.draining += 1;
            }
            other => tally.failures.push(format!(
                "{} {} the signal: {other:?}",
                self.name(),
                if signalled { "after" } else { "before" }
            )),
        }
    }
}

#[tokio::test]
async fn sigterm_under_steady_load_drains_probes_and_fails_no_other_request() {
    const DRAIN_MS: u64 = 3000;
    let db = TestDatabase::create().await.unwrap();
    let mut env = process_env(&db, DRAIN_MS).await;
    // No check round during the drain: a probe that turns 503 does so because of the
    // phase, not because a round happened to run.
    env.insert("HEALTH_CHECK_INTERVAL_MS".into(), "60000".into());
    env.insert("HEALTH_CHECK_TIMEOUT_MS".into(), "2000".into());
    let mut replica = Replica::start(env).await;
    let client = reqwest::Client::new();
    replica.wait_ready(&client, Duration::from_secs(20)).await;
    let base = replica.url("");
    let token = crate::support::api_client::sign_up(&client, &base).await;
    let rounds = || async {
        let text = client
            .get(format!("http://127.0.0.1:{}/metrics", replica.metrics_port))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        crate::helpers::metric_value(&text, "health_check_total", &[])
    };

    // Load on every route, as a load balancer would send it until its next probe sees 503.
    let (stop, signalled) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let workers: Vec<_> = Route::ALL
        .into_iter()
        .map(|route| {
            let (client, base, token) = (client.clone(), base.clone(), token.clone());
            let (stop, signalled) = (stop.clone(), signalled.clone());
            tokio::spawn(async move {
                let mut tally = Tally::default();
                while !stop.load(Ordering::SeqCst) {
                    let answer = route.send(&client, &base, &token).await;
                    route.judge(&mut tally, answer, signalled.load(Ordering::SeqCst));
                }
                (route, tally)
            })
        })
        .collect();
    let rounds_before = rounds().await;
    signalled.store(true, Ordering::SeqCst);
    replica.signal("TERM");
    let signalled_at = Instant::now();
    // Keep the load on well inside the drain delay: after it the port closes, by design.
    tokio::time::sleep(Duration::from_millis(DRAIN_MS * 2 / 3)).await;
    let rounds_during = rounds().await - rounds_before;
    stop.store(true, Ordering::SeqCst);
    let mut tallies = Vec::new();
    for worker in workers {
        tallies.push(worker.await.unwrap());
    }
    let failures: Vec<&String> = tallies.iter().flat_map(|(_, t)| &t.failures).collect();
    assert!(
        failures.is_empty(),
        "{} failed; the first ones:\n{:#?}",
        failures.len(),
        &failures[..failures.len().min(20)]
    );
    for (route, tally) in &tallies {
        assert!(
            tally.served_after_signal + tally.draining >= 5,
            "{}: too little load after the signal to judge it",
            route.name()
        );
        if matches!(route, Route::Probe(_)) {
            assert!(
                tally.draining > 0,
                "{} never answered 503 draining",
                route.name()
            );
        }
    }
    assert_eq!(
        rounds_during, 0.0,
        "a check round ran during the drain: the 503s prove nothing"
    );

    let status = replica.wait_exit(Duration::from_secs(20)).expect("exited");
    assert_eq!(status.code(), Some(0), "logs:\n{}", replica.logs());
    assert!(signalled_at.elapsed() >= Duration::from_millis(DRAIN_MS));
    assert!(replica.logs().contains("draining"));
}

#[tokio::test]
async fn a_second_signal_exits_at_once() {
    let db = TestDatabase::create().await.unwrap();
    let mut replica = Replica::start(process_env(&db, 30_000).await).await;
    let client = reqwest::Client::new();
    replica.wait_ready(&client, Duration::from_secs(20)).await;
    replica.signal("TERM");
    let draining = cartae_harness::process::wait_until(Duration::from_secs(20), || async {
        let answer = client.get(replica.url("/ready")).send().await;
        answer.is_ok_and(|r| r.status() == 503)
    })
    .await;
    assert!(draining, "the first signal did not start a drain");
    assert!(
        replica.wait_exit(Duration::ZERO).is_none(),
        "first signal only drains"
    );
    replica.signal("INT");
    // 130, and well inside the 30 s drain: a graceful exit would be 0, after the drain.
    let status = replica
        .wait_exit(Duration::from_secs(15))
        .expect("exited after the second signal");
    assert_eq!(status.code(), Some(130));
}

#[tokio::test]
async fn a_sigterm_during_start_up_drains_instead_of_killing() {
    let db = TestDatabase::create().await.unwrap();
    // `start` returns as soon as the replica logs the ports it bound, long before its
    // migrations finish: a SIGTERM then must start a drain, not kill the process.
    let mut replica = Replica::start(process_env(&db, 0).await).await;
    replica.signal("TERM");
    let status = replica.wait_exit(Duration::from_secs(10)).expect("exited");
    assert_eq!(
        status.code(),
        Some(0),
        "killed by the signal instead of draining; logs:\n{}",
        replica.logs()
    );
}

#[tokio::test]
async fn healthcheck_subcommand_follows_ready() {
    let db = TestDatabase::create().await.unwrap();
    let replica = Replica::start(process_env(&db, 0).await).await;
    let client = reqwest::Client::new();
    replica.wait_ready(&client, Duration::from_secs(20)).await;
    let port = |p: u16| HashMap::from([("PORT".to_owned(), p.to_string())]);
    let (status, output) = run_to_end(&["healthcheck"], &port(replica.port));
    assert!(status.success(), "{output}");
    // Nothing listens on port 1.
    let (status, output) = run_to_end(&["healthcheck"], &port(1));
    assert_eq!(status.code(), Some(1), "{output}");
    assert!(output.contains("not ready"), "{output}");
}

#[tokio::test]
async fn probes_are_logged_at_debug_only_and_requests_carry_their_id() {
    let db = TestDatabase::create().await.unwrap();
    let replica = Replica::start(process_env(&db, 0).await).await;
    let client = reqwest::Client::new();
    replica.wait_ready(&client, Duration::from_secs(20)).await;
    for path in ["/live", "/ready", "/health", "/startup"] {
        client.get(replica.url(path)).send().await.unwrap();
    }
    client
        .get(replica.url("/not-a-probe"))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    // The log line is written after the response: wait for it.
    let logged = cartae_harness::process::wait_until(Duration::from_secs(10), || {
        std::future::ready(replica.logs().contains("/not-a-probe"))
    })
    .await;
    assert!(logged, "the request was never logged:\n{}", replica.logs());
    let logs = replica.logs();
    let request_lines: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "request served")
        .collect();
    assert_eq!(
        request_lines.len(),
        1,
        "only the non-probe request is logged at info:\n{logs}"
    );
    assert_eq!(request_lines[0]["span"]["path"], "/not-a-probe", "{logs}");
    assert_eq!(
        request_lines[0]["span"]["request_id"], "trace-me-42",
        "{logs}"
    );
    assert_eq!(request_lines[0]["status"], 404);
}

#[tokio::test]
async fn a_post_whose_body_is_still_arriving_when_the_drain_starts_completes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let app = spawn_app_with(AppOptions::default().env("DRAIN_DELAY_MS", "600")).await;
    app.wait_ready().await;
    let token = app.new_user().await;
    let body = serde_json::json!({"type": "note", "title": "written during the drain"}).to_string();
    let port = app.address.rsplit(':').next().unwrap().to_owned();
    let mut stream = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}"))
        .await
        .unwrap();
    let head = format!(
        "POST /api/items HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let (first, rest) = body.as_bytes().split_at(10);
    stream.write_all(first).await.unwrap();

    app.signal();
    // Trickle the body across the drain delay; its last bytes only once the replica stops.
    let (middle, last) = rest.split_at(rest.len() - 4);
    let mut chunks = middle.chunks(2);
    let deadline = Instant::now() + Duration::from_secs(20);
    while app.state.lifecycle.phase() != Phase::Stopping {
        assert!(Instant::now() < deadline, "the replica never began to stop");
        if let Some(chunk) = chunks.next() {
            stream.write_all(chunk).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for chunk in chunks.chain([last]) {
        stream.write_all(chunk).await.unwrap();
    }
    let mut response = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        stream.read_to_string(&mut response),
    )
    .await
    .expect("answered before the shutdown timeout")
    .unwrap();
    assert!(response.starts_with("HTTP/1.1 201"), "{response}");
    assert!(response.contains("written during the drain"));
    let outcome = tokio::time::timeout(Duration::from_secs(10), app.run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(outcome, Stopped::Gracefully);
}
