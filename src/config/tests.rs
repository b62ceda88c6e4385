//! Each variable's parsing and refusals, through `Settings::from_source` on a map.

use std::collections::HashMap;

use sqlx::postgres::PgSslMode;

use super::*;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    let mut map: HashMap<String, String> = [("JWT_SECRET", "5Hq0Lw9Zc2Rk7Vt4Xy1Bn8Md3Fg6Js0P")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    map.extend(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    map
}

fn error_var(pairs: &[(&str, &str)]) -> &'static str {
    Settings::from_source(&env(pairs)).unwrap_err().var
}

#[test]
fn defaults_follow_the_seed() {
    let s = Settings::from_source(&env(&[])).unwrap();
    assert_eq!((s.port, s.metrics_port), (3001, 9090));
    assert_eq!((s.database.pool_min, s.database.pool_max), (2, 10));
    assert_eq!(
        s.health.memory,
        Thresholds {
            degraded: 85.0,
            critical: 95.0
        }
    );
    assert_eq!(
        s.health.cpu,
        Thresholds {
            degraded: 80.0,
            critical: 95.0
        }
    );
    assert_eq!(
        s.health.database_latency,
        Thresholds {
            degraded: 100.0,
            critical: 500.0
        }
    );
    assert_eq!(
        s.health.redis_latency,
        Thresholds {
            degraded: 50.0,
            critical: 200.0
        }
    );
    assert_eq!(
        s.health.ready_requires,
        ReadyRequires {
            database: true,
            redis: false
        }
    );
    assert_eq!(s.log_format, LogFormat::Json);
}

#[test]
fn secrets_come_from_their_file_and_a_bad_file_names_its_variable() {
    let path = std::env::temp_dir().join(format!("jwt-secret-{}", std::process::id()));
    std::fs::write(&path, "rjrpPtTVobHCzGx9pCv6164rAs3kdc5E4hf_h-yWkf0\n").unwrap();
    let path = path.to_str().unwrap();
    let mut only_file = env(&[("JWT_SECRET_FILE", path)]);
    only_file.remove("JWT_SECRET");
    let s = Settings::from_source(&only_file).unwrap();
    assert_eq!(
        s.auth.jwt_secret.expose(),
        "rjrpPtTVobHCzGx9pCv6164rAs3kdc5E4hf_h-yWkf0",
        "read, without its newline"
    );
    assert_eq!(
        error_var(&[("JWT_SECRET_FILE", path)]),
        "JWT_SECRET_FILE",
        "both set"
    );
    let mut missing = env(&[("POSTGRES_PASSWORD_FILE", "/nonexistent/secret")]);
    missing.remove("POSTGRES_PASSWORD");
    assert_eq!(
        Settings::from_source(&missing).unwrap_err().var,
        "POSTGRES_PASSWORD_FILE"
    );
    std::fs::remove_file(path).unwrap();
}

#[test]
fn bad_values_name_their_variable() {
    assert_eq!(error_var(&[("PORT", "http")]), "PORT");
    assert_eq!(error_var(&[("BODY_TIMEOUT_MS", "5")]), "BODY_TIMEOUT_MS");
    assert_eq!(
        error_var(&[("HEADER_READ_TIMEOUT_MS", "soon")]),
        "HEADER_READ_TIMEOUT_MS"
    );
    assert_eq!(error_var(&[("MAX_CONNECTIONS", "0")]), "MAX_CONNECTIONS");
    assert_eq!(
        error_var(&[("MAX_WRITES_PER_USER", "0")]),
        "MAX_WRITES_PER_USER"
    );
    assert_eq!(error_var(&[("PORT", "70000")]), "PORT");
    assert_eq!(error_var(&[("METRICS_PORT", "3001")]), "METRICS_PORT");
    assert_eq!(
        error_var(&[("POSTGRES_POOL_MIN", "20")]),
        "POSTGRES_POOL_MIN"
    );
    assert_eq!(
        error_var(&[("POSTGRES_POOL_MAX", "0")]),
        "POSTGRES_POOL_MAX"
    );
    assert_eq!(error_var(&[("DATABASE_URL", "mysql://x")]), "DATABASE_URL");
    assert_eq!(error_var(&[("REDIS_URL", "http://x")]), "REDIS_URL");
    assert_eq!(error_var(&[("REDIS_DB", "16")]), "REDIS_DB");
    assert_eq!(
        error_var(&[("REDIS_SENTINELS", "h1:26379")]),
        "REDIS_SENTINEL_MASTER"
    );
    assert_eq!(
        error_var(&[("REDIS_SENTINEL_MASTER", "cache")]),
        "REDIS_SENTINEL_MASTER"
    );
    assert_eq!(
        error_var(&[("REDIS_SENTINEL_PASSWORD", "pw")]),
        "REDIS_SENTINEL_PASSWORD"
    );
    assert_eq!(
        error_var(&[
            ("REDIS_SENTINELS", "h1:26379"),
            ("REDIS_SENTINEL_MASTER", "cache"),
            ("REDIS_URL", "rediss://cache:6380")
        ]),
        "REDIS_URL"
    );
    assert_eq!(error_var(&[("LOG_FORMAT", "xml")]), "LOG_FORMAT");
    assert_eq!(error_var(&[("LOG_LEVEL", "loud[")]), "LOG_LEVEL");
    assert_eq!(
        error_var(&[("MEMORY_DEGRADED_PERCENT", "99")]),
        "MEMORY_DEGRADED_PERCENT"
    );
    assert_eq!(
        error_var(&[("CPU_CRITICAL_PERCENT", "-1")]),
        "CPU_CRITICAL_PERCENT"
    );
    assert_eq!(
        error_var(&[("READY_REQUIRES", "database,kafka")]),
        "READY_REQUIRES"
    );
    assert_eq!(
        error_var(&[("HEALTH_CHECK_TIMEOUT_MS", "9000")]),
        "HEALTH_CHECK_TIMEOUT_MS"
    );
    assert_eq!(error_var(&[("JWT_SECRET", "short")]), "JWT_SECRET");
    assert_eq!(
        error_var(&[(
            "JWT_SECRET",
            "change-me-to-a-random-secret-of-at-least-32-characters"
        )]),
        "JWT_SECRET"
    );
    assert_eq!(
        error_var(&[("JWT_SECRET_PREVIOUS", "change-me-please-to-something-else")]),
        "JWT_SECRET_PREVIOUS"
    );
    assert_eq!(
        error_var(&[("JWT_SECRET_PREVIOUS", "5Hq0Lw9Zc2Rk7Vt4Xy1Bn8Md3Fg6Js0P")]),
        "JWT_SECRET_PREVIOUS"
    );
    assert_eq!(error_var(&[("HOST", "localhost:80")]), "HOST");
    assert_eq!(
        error_var(&[("TRUSTED_PROXIES", "10.0.0.0/8,traefik")]),
        "TRUSTED_PROXIES"
    );
    assert_eq!(
        error_var(&[("IDEMPOTENCY_KEY_TTL_HOURS", "0")]),
        "IDEMPOTENCY_KEY_TTL_HOURS"
    );
    assert_eq!(
        error_var(&[("PASSWORD_HASH_MEMORY_KIB", "8")]),
        "PASSWORD_HASH_MEMORY_KIB"
    );
    assert_eq!(
        error_var(&[("PASSWORD_HASH_ITERATIONS", "0")]),
        "PASSWORD_HASH_ITERATIONS"
    );
}

/// A CA made for the test, and a file that is not PEM, in a directory of their own.
fn pem_files() -> (cartae_harness::tier::server::ServerDir, String, String) {
    let dir = cartae_harness::tier::server::ServerDir::new("config-test").unwrap();
    let certificates = cartae_harness::tier::tls::Certificates::generate(dir.path()).unwrap();
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
    (dir, path(&certificates.ca), path(&not_pem))
}

#[test]
fn postgres_tls_follows_libpq_and_refuses_what_would_not_work() {
    let (_dir, ca, not_pem) = pem_files();
    let url = |query: &str| format!("postgres://u@db/cartae?{query}");
    let mode = |pairs: &[(&str, &str)]| {
        Settings::from_source(&env(pairs))
            .unwrap()
            .database
            .connect
            .get_ssl_mode()
    };
    // A CA makes `require` verify the chain, as libpq does.
    let require_with_ca = url(&format!("sslmode=require&sslrootcert={ca}"));
    assert!(matches!(
        mode(&[("DATABASE_URL", &require_with_ca)]),
        PgSslMode::VerifyCa
    ));
    assert!(matches!(
        mode(&[
            ("POSTGRES_SSLMODE", "verify-full"),
            ("POSTGRES_SSLROOTCERT", &ca)
        ]),
        PgSslMode::VerifyFull
    ));
    assert!(matches!(mode(&[]), PgSslMode::Prefer));

    let bad_url = |query: String| error_var(&[("DATABASE_URL", &url(&query))]);
    assert_eq!(bad_url("sslmode=allow".into()), "DATABASE_URL");
    assert_eq!(bad_url("sslmode=maybe".into()), "DATABASE_URL");
    assert_eq!(
        bad_url(format!("sslmode=prefer&sslrootcert={ca}")),
        "DATABASE_URL"
    );
    assert_eq!(
        bad_url(format!("sslmode=require&sslrootcert={not_pem}")),
        "DATABASE_URL"
    );
    assert_eq!(
        bad_url("sslmode=require&sslrootcert=/nowhere".into()),
        "DATABASE_URL"
    );
    assert_eq!(
        bad_url(format!("sslmode=require&sslcert={ca}")),
        "DATABASE_URL"
    );
    assert_eq!(
        error_var(&[
            ("POSTGRES_SSLMODE", "verify-ca"),
            ("POSTGRES_SSLROOTCERT", &not_pem)
        ]),
        "POSTGRES_SSLROOTCERT"
    );
    assert_eq!(error_var(&[("POSTGRES_SSLMODE", "on")]), "POSTGRES_SSLMODE");
    // The split variables beside a URL would be silently ignored: refused instead.
    assert_eq!(
        error_var(&[("DATABASE_URL", &url("")), ("POSTGRES_SSLMODE", "require")]),
        "POSTGRES_SSLMODE"
    );
}

#[test]
fn redis_tls_needs_rediss_and_readable_pem() {
    let (_dir, ca, not_pem) = pem_files();
    let tls_url = "rediss://cache:6380/0";
    let s = Settings::from_source(&env(&[("REDIS_URL", tls_url), ("REDIS_CA_CERT", &ca)])).unwrap();
    assert!(s.redis.tls.certificates().is_some());
    assert!(Settings::from_source(&env(&[("REDIS_URL", tls_url)]))
        .unwrap()
        .redis
        .tls
        .certificates()
        .is_none());
    assert_eq!(
        error_var(&[("REDIS_URL", "redis://cache"), ("REDIS_CA_CERT", &ca)]),
        "REDIS_CA_CERT"
    );
    assert_eq!(error_var(&[("REDIS_CA_CERT", &ca)]), "REDIS_CA_CERT");
    assert_eq!(
        error_var(&[("REDIS_URL", tls_url), ("REDIS_CA_CERT", &not_pem)]),
        "REDIS_CA_CERT"
    );
    assert_eq!(
        error_var(&[("REDIS_URL", tls_url), ("REDIS_CLIENT_CERT", &ca)]),
        "REDIS_CLIENT_KEY"
    );
    assert_eq!(
        error_var(&[
            ("REDIS_URL", tls_url),
            ("REDIS_CLIENT_CERT", &ca),
            ("REDIS_CLIENT_KEY", &ca)
        ]),
        "REDIS_CLIENT_KEY"
    );
    assert_eq!(
        error_var(&[("REDIS_URL", "rediss://cache:6380/#insecure")]),
        "REDIS_URL"
    );
}

#[test]
fn several_hosts_follow_the_primary_in_both_forms() {
    let hosts = |s: &Settings| {
        s.database
            .hosts
            .iter()
            .map(|h| format!("{}:{}", h.get_host(), h.get_port()))
            .collect::<Vec<_>>()
    };
    let s = Settings::from_source(&env(&[(
        "DATABASE_URL",
        "postgres://u:p@h1:5432,h2:5433/cartae?sslmode=disable",
    )]))
    .unwrap();
    assert_eq!(hosts(&s), ["h1:5432", "h2:5433"]);
    assert_eq!(s.database.target_session_attrs, SessionAttrs::ReadWrite);
    assert_eq!(s.database.hosts[1].get_database(), Some("cartae"));
    assert!(matches!(
        s.database.hosts[1].get_ssl_mode(),
        PgSslMode::Disable
    ));
    let s = Settings::from_source(&env(&[(
        "DATABASE_URL",
        "postgres://u@h1,h2/cartae?target_session_attrs=any",
    )]))
    .unwrap();
    assert_eq!(s.database.target_session_attrs, SessionAttrs::Any);
    let s = Settings::from_source(&env(&[
        ("POSTGRES_HOST", "h1,h2:5433"),
        ("POSTGRES_PORT", "6543"),
    ]))
    .unwrap();
    assert_eq!(hosts(&s), ["h1:6543", "h2:5433"]);
    assert_eq!(s.database.target_session_attrs, SessionAttrs::ReadWrite);
    let s = Settings::from_source(&env(&[("DATABASE_URL", "postgres://u@h1/cartae")])).unwrap();
    assert_eq!(s.database.target_session_attrs, SessionAttrs::Any);
    let bad = "postgres://u@h1,h2/cartae?target_session_attrs=standby";
    assert_eq!(error_var(&[("DATABASE_URL", bad)]), "DATABASE_URL");
    assert_eq!(error_var(&[("POSTGRES_HOST", "h1,h2:x")]), "POSTGRES_HOST");
}

#[test]
fn split_variables_build_connection_settings() {
    let s = Settings::from_source(&env(&[
        ("POSTGRES_HOST", "db"),
        ("POSTGRES_PORT", "6543"),
        ("POSTGRES_DB", "cartae"),
        ("REDIS_HOST", "cache"),
        ("REDIS_PASSWORD", "p@ss word"),
        ("REDIS_DB", "3"),
        ("READY_REQUIRES", "database, redis"),
    ]))
    .unwrap();
    assert_eq!(s.database.connect.get_host(), "db");
    assert_eq!(s.database.connect.get_port(), 6543);
    assert_eq!(s.redis.url.expose(), "redis://:p%40ss%20word@cache:6379/3");
    assert!(format!("{s:?}").contains("[redacted]"));
    assert!(!format!("{s:?}").contains("p%40ss"));
    assert_eq!(
        s.health.ready_requires,
        ReadyRequires {
            database: true,
            redis: true
        }
    );
}
