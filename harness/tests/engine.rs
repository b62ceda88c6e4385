//! The deployment users run, on a real Docker engine: the image built from the shipped
//! Dockerfile, and the shipped compose stack up, scaled, rolled, killed and cut.
//!
//! Needs an engine (`DOCKER_HOST`) with the images of infra/scripts/local-images.sh;
//! scripts/test-all.sh starts both, then runs these with `--features engine`, one test at
//! a time. Without that feature this file compiles to nothing.

#![cfg(feature = "engine")]

use std::time::{Duration, Instant};

use cartae_harness::database::{pg_url, TestDatabase, PG_ADDR};
use cartae_harness::engine::docker::{docker, inspect, wait_health};
use cartae_harness::engine::image::{self, Built};
use cartae_harness::process::{free_port, wait_until};
use cartae_harness::proxy::{Mode, TcpProxy};
use cartae_harness::scenarios::engine::EngineDrill;
use cartae_harness::scenarios::run::{selected, DrillRun};
use serde_json::Value;
use tokio::sync::OnceCell;

/// The image under test, built once per run from the repository as it is.
const IMAGE: &str = "cartae-database-api:engine-test";

static BUILT: OnceCell<Built> = OnceCell::const_new();

async fn built() -> &'static Built {
    BUILT
        .get_or_init(|| async {
            image::build(IMAGE, None)
                .await
                .expect("the image builds from the shipped Dockerfile")
        })
        .await
}

/// A value anywhere in a JSON document, by key.
fn find<'a>(value: &'a Value, key: &str) -> Option<&'a Value> {
    match value {
        Value::Object(map) => map
            .get(key)
            .or_else(|| map.values().find_map(|v| find(v, key))),
        Value::Array(items) => items.iter().find_map(|v| find(v, key)),
        _ => None,
    }
}

/// The running process's effective uid and whether its root filesystem is read-only, read
/// from the host's /proc: what the container really runs as, not what it was asked.
fn process_facts(pid: &str) -> (Option<u32>, bool) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|u| u.parse().ok());
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
    let root_read_only = mounts.lines().any(|l| {
        let fields: Vec<&str> = l.split_whitespace().collect();
        fields.get(4) == Some(&"/")
            && fields
                .get(5)
                .is_some_and(|o| o.split(',').any(|f| f == "ro"))
    });
    (uid, root_read_only)
}

/// The image alone, run as the README runs it: a non-root user, a read-only root, a memory
/// limit it reports, and a HEALTHCHECK that follows PostgreSQL (through a proxy the test
/// cuts) from starting to healthy, to unhealthy, to healthy again, at its shipped timings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_runs_as_shipped() {
    let built = built().await;
    let database = TestDatabase::create().await.expect("a database");
    let proxy = TcpProxy::start(PG_ADDR.parse().expect("address"), false).await;
    let (port, metrics_port) = (free_port(), free_port());
    let name = format!("cartae-engine-image-{}", uuid::Uuid::new_v4().simple());
    let database_url = pg_url(&proxy.addr.to_string(), &database.name);
    let prefix = format!("CACHE_KEY_PREFIX=engine-{}:", uuid::Uuid::new_v4().simple());
    let env = [
        format!("PORT={port}"),
        format!("METRICS_PORT={metrics_port}"),
        format!("DATABASE_URL={database_url}"),
        "REDIS_URL=redis://127.0.0.1:6379".to_owned(),
        prefix,
        format!(
            "JWT_SECRET={}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        ),
        "HOST=127.0.0.1".to_owned(),
    ];
    let mut args = vec![
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        "host",
        "--read-only",
        "--memory",
        "512m",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
    ];
    for e in &env {
        args.extend(["-e", e.as_str()]);
    }
    args.push(IMAGE);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("client");
    let started = Instant::now();
    docker(&args).await.expect("docker run");
    let ready_url = format!("http://127.0.0.1:{port}/ready");
    let ready = wait_until(Duration::from_secs(30), || async {
        client
            .get(&ready_url)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    let to_ready = started.elapsed();

    let mut problems = Vec::new();
    if !ready {
        problems.push("/ready was not 200 within 30 s of docker run".to_owned());
    }
    let pid = inspect(&name, "{{.State.Pid}}").await.expect("pid");
    let (uid, read_only) = process_facts(&pid);
    if uid != Some(65532) {
        problems.push(format!("the process runs as uid {uid:?}, not 65532"));
    }
    if !read_only {
        problems.push("the root filesystem is not mounted read-only".to_owned());
    }
    if docker(&["exec", &name, "/bin/sh", "-c", "true"])
        .await
        .is_ok()
    {
        problems.push("the image has a shell".to_owned());
    }
    let detailed: Value = client
        .get(format!("http://127.0.0.1:{port}/health/detailed"))
        .send()
        .await
        .expect("/health/detailed")
        .json()
        .await
        .expect("JSON");
    let limit = find(&detailed, "limitMb").and_then(Value::as_f64);
    let source = find(&detailed, "limitSource").and_then(Value::as_str);
    if limit != Some(512.0) || source != Some("cgroup") {
        problems.push(format!(
            "/health/detailed reports a memory limit of {limit:?} MB from {source:?}, not 512 from the cgroup"
        ));
    }

    // The HEALTHCHECK at its shipped timings (10 s interval, 3 retries).
    let healthy = wait_health(&name, "healthy", Duration::from_secs(60)).await;
    match &healthy {
        Ok(seen) if seen.first().map(String::as_str) == Some("starting") => {}
        Ok(seen) => problems.push(format!("health went {seen:?}, not starting → healthy")),
        Err(e) => problems.push(e.to_string()),
    }
    let cut = Instant::now();
    proxy.set_mode(Mode::Cut);
    let unhealthy = wait_health(&name, "unhealthy", Duration::from_secs(90)).await;
    let to_unhealthy = cut.elapsed();
    if let Err(e) = &unhealthy {
        problems.push(format!("PostgreSQL cut: {e}"));
    }
    proxy.set_mode(Mode::Forward);
    let restored = Instant::now();
    if let Err(e) = wait_health(&name, "healthy", Duration::from_secs(60)).await {
        problems.push(format!("PostgreSQL back: {e}"));
    }
    let to_healthy = restored.elapsed();
    if !problems.is_empty() {
        let logs = docker(&["logs", "--tail", "50", &name])
            .await
            .unwrap_or_default();
        eprintln!("{logs}");
    }
    let _ = docker(&["rm", "-f", &name]).await;

    println!(
        "| Image | Size | Build | docker run → /ready 200 | PostgreSQL cut → unhealthy | back → healthy |\n\
         | --- | ---: | ---: | ---: | ---: | ---: |\n\
         | {} | {:.1} MB | {:.0} s | {:.2} s | {:.0} s | {:.0} s |",
        built.tag,
        built.size_bytes as f64 / 1e6,
        built.took.as_secs_f64(),
        to_ready.as_secs_f64(),
        to_unhealthy.as_secs_f64(),
        to_healthy.as_secs_f64()
    );
    assert!(problems.is_empty(), "{problems:#?}");
}

/// The Docker socket proxy lets Traefik read what its provider needs, and nothing else:
/// a POST, a container's archive or export are refused.
async fn socket_proxy_problems(drill: &EngineDrill) -> Vec<String> {
    let pg = drill.stack.container("pg-1").await.unwrap_or_default();
    let ask = |method: &str, path: &str| {
        format!(
            "exec 3<>/dev/tcp/docker-socket-proxy/2375; \
             printf '{method} {path} HTTP/1.0\\r\\nHost: docker\\r\\n\\r\\n' >&3; head -n 1 <&3"
        )
    };
    let cases = [
        ("GET", "/v1.41/containers/json".to_owned(), "200"),
        ("GET", "/version".to_owned(), "200"),
        ("POST", "/v1.41/containers/create".to_owned(), "403"),
        ("GET", format!("/containers/{pg}/archive?path=/"), "403"),
        ("GET", format!("/v1.41/containers/{pg}/export"), "403"),
        ("GET", "/v1.41/images/json".to_owned(), "403"),
    ];
    let mut problems = Vec::new();
    for (method, path, wanted) in cases {
        let line = docker(&[
            "run",
            "--rm",
            "--network",
            "cartae-docker-api-network",
            "cartae-local/debian:bookworm",
            "bash",
            "-c",
            &ask(method, &path),
        ])
        .await
        .unwrap_or_else(|e| e.to_string());
        if !line.contains(&format!(" {wanted} ")) {
            problems.push(format!(
                "socket proxy: {method} {path} gave {line:?}, not {wanted}"
            ));
        }
    }
    problems
}

/// The engine drill's scenarios, in the order they run.
const SCENARIOS: [&str; 9] = [
    "scale",
    "crash",
    "rolling update",
    "failed rollout",
    "frozen",
    "partition",
    "oom",
    "postgres",
    "redis",
];

/// The stack, up for real, and the drill on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_stack_holds_its_promises() {
    let built = built().await;
    // The release the rolling update goes to: the same sources, another image.
    let next = "cartae-database-api:engine-next";
    image::build(next, Some("next"))
        .await
        .expect("the next image builds");
    let broken = "cartae-database-api:engine-broken";
    docker_build_broken(broken).await;

    let run = DrillRun::begin("engine-stack").await;
    let (drill, up) = EngineDrill::start(&built.tag, &run.dir)
        .await
        .expect("the stack comes up");
    let mut problems = socket_proxy_problems(&drill).await;
    match drill.sync_standby().await {
        Ok(Some(_)) => {}
        other => problems.push(format!("no synchronous standby: {other:?}")),
    }
    println!(
        "stack up: 3 replicas routed by Traefik {:.0} s after `up -d`",
        up.as_secs_f64()
    );

    let mut rows = Vec::new();
    for scenario in SCENARIOS.iter().filter(|s| selected("ENGINE_SCENARIOS", s)) {
        let result = match *scenario {
            "scale" => drill.scale().await,
            "crash" => drill.crash().await,
            "rolling update" => drill.rolling_update(next, &built.tag).await,
            "failed rollout" => drill.failed_rollout(broken, &built.tag).await,
            "frozen" => drill.frozen().await,
            "partition" => drill.partition().await,
            "oom" => drill.out_of_memory().await,
            "postgres" => drill.postgres_primary_killed().await,
            "redis" => drill.redis_master_killed().await,
            other => Err(anyhow::anyhow!("unknown scenario {other}")),
        };
        match result {
            Ok(row) => rows.push(row),
            Err(e) => problems.push(format!("{scenario}: {e:#}")),
        }
    }
    drill.stack.save_logs().await;
    // Down while its env file still exists (the folder goes when all passed).
    if let Err(e) = drill.stack.remove().await {
        problems.push(format!("docker compose down: {e:#}"));
    }
    run.finish(&rows, &problems, ());
}

/// An image whose `serve` exits at once: the release that never becomes ready.
async fn docker_build_broken(tag: &str) {
    let dir = std::env::temp_dir().join(format!("cartae-broken-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(
        dir.join("Dockerfile"),
        format!("FROM {IMAGE}\nENTRYPOINT [\"/usr/local/bin/cartae-database-api\", \"--no-such-flag\"]\n"),
    )
    .expect("Dockerfile");
    docker(&["build", "-q", "-t", tag, &dir.to_string_lossy()])
        .await
        .expect("the broken image builds");
    let _ = std::fs::remove_dir_all(&dir);
}
