//! TLS to PostgreSQL and Redis, against real servers that speak nothing else: a private
//! PostgreSQL cluster with `hostssl` lines only and a `redis-server` with its plain port
//! closed, both with a certificate from a CA made for the run.

use std::time::Duration;

use cartae_harness::tls::{Certificates, ServerDir, TlsPostgres, TlsRedis};
use serde_json::Value;

use crate::helpers::{metric_value, spawn_app_with, AppOptions, TestApp};

/// One run's CA, and a PostgreSQL and a Redis that present a certificate it signed.
struct TlsServers {
    certificates: Certificates,
    postgres: TlsPostgres,
    redis: TlsRedis,
    _dir: ServerDir,
}

impl TlsServers {
    fn start() -> Self {
        let dir = ServerDir::new("tls-certs").unwrap();
        let certificates = Certificates::generate(dir.path()).unwrap();
        Self {
            postgres: TlsPostgres::start(&certificates).unwrap(),
            redis: TlsRedis::start(&certificates).unwrap(),
            certificates,
            _dir: dir,
        }
    }

    fn path(path: &std::path::Path) -> String {
        path.to_string_lossy().into_owned()
    }

    /// An app on a database of its own, with `pg_params` in `DATABASE_URL` and `env`.
    async fn app(&self, pg_params: &str, env: &[(&str, &str)]) -> TestApp {
        let database = self.postgres.create_database().await.unwrap();
        let mut options = AppOptions {
            database: Some(database.clone()),
            ..AppOptions::default()
        }
        .env("DATABASE_URL", &self.postgres.url(&database, pg_params))
        .env("REDIS_URL", &self.redis.url())
        .env("READY_REQUIRES", "database,redis");
        for (key, value) in env {
            options = options.env(key, value);
        }
        spawn_app_with(options).await
    }
}

fn reasons(body: &Value) -> String {
    body["reasons"].to_string()
}

#[tokio::test]
async fn a_replica_serves_over_tls_to_both_dependencies() {
    let servers = TlsServers::start();
    let ca = TlsServers::path(&servers.certificates.ca);
    let app = servers
        .app(
            &format!("sslmode=verify-full&sslrootcert={ca}"),
            &[("REDIS_CA_CERT", &ca)],
        )
        .await;
    app.wait_ready().await;
    let (status, health) = app.get_json("/health").await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["checks"]["database"]["status"], "ok", "{health}");
    assert_eq!(health["checks"]["redis"]["status"], "ok", "{health}");

    // The data API end to end: PostgreSQL writes, then reads served by Redis.
    let token = app.new_user().await;
    let item = app.note(&token, "over TLS").await;
    let id = item["id"].as_str().unwrap();
    app.get_item(&token, id).await;
    let hits = metric_value(&app.metrics().await, "cache_hits_total", &[]);
    assert_eq!(app.get_item(&token, id).await.body["title"], "over TLS");
    let text = app.metrics().await;
    assert!(
        metric_value(&text, "cache_hits_total", &[]) > hits,
        "not served from Redis"
    );
    assert_eq!(metric_value(&text, "cache_errors_total", &[]), 0.0);

    // The server itself says the session is encrypted (pg_hba.conf would refuse it otherwise).
    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&app.state.db.pool)
        .await
        .unwrap();
    assert!(ssl);
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_and_named() {
    let servers = TlsServers::start();
    let other_ca = TlsServers::path(&servers.certificates.other_ca);
    let app = servers
        .app(
            &format!("sslmode=verify-full&sslrootcert={other_ca}"),
            &[("REDIS_CA_CERT", &other_ca)],
        )
        .await;
    let body = app
        .wait_for("/startup", Duration::from_secs(20), |status, body| {
            status == 503 && reasons(body).matches("does not verify").count() == 2
        })
        .await;
    let why = reasons(&body);
    assert!(
        why.contains("database: PostgreSQL's TLS certificate does not verify"),
        "{why}"
    );
    assert!(
        why.contains("redis: Redis's TLS certificate does not verify"),
        "{why}"
    );
    assert!(why.contains("UnknownIssuer"), "the cause is kept: {why}");
    let (status, ready) = app.get_json("/ready").await;
    assert_eq!(status, 503);
    assert!(reasons(&ready).contains("does not verify"), "{ready}");
    let text = app.metrics().await;
    for dependency in ["database", "redis"] {
        let counted = metric_value(
            &text,
            "dependency_permanent_errors_total",
            &[("dependency", dependency), ("kind", "tls")],
        );
        assert!(counted >= 1.0, "{dependency} not counted:\n{text}");
    }
}

#[tokio::test]
async fn sslmode_disable_against_a_tls_only_server_says_so() {
    let servers = TlsServers::start();
    let ca = TlsServers::path(&servers.certificates.ca);
    let app = servers
        .app("sslmode=disable", &[("REDIS_CA_CERT", &ca)])
        .await;
    let body = app
        .wait_for("/ready", Duration::from_secs(20), |status, body| {
            status == 503 && reasons(body).contains("pg_hba.conf")
        })
        .await;
    let why = reasons(&body);
    assert!(why.contains("requires TLS (sslmode)"), "{why}");
    assert!(
        why.contains("no encryption"),
        "the server's own words are kept: {why}"
    );
    assert!(!why.contains("redis"), "Redis over TLS is fine: {why}");
    let text = app.metrics().await;
    assert!(
        metric_value(
            &text,
            "dependency_permanent_errors_total",
            &[("dependency", "database"), ("kind", "access_denied")]
        ) >= 1.0
    );
}
