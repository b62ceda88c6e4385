//! Bad configuration: one line naming the variable, then a non-zero exit.

use std::collections::HashMap;

use crate::helpers::{base_env, pg_url, PG_ADDR};
use crate::support::process::run_to_end;

fn env_with(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    let mut env = base_env(&pg_url(PG_ADDR, "postgres"), "redis://127.0.0.1:6379");
    for (k, v) in pairs {
        env.insert(k.to_string(), v.to_string());
    }
    env
}

#[test]
fn a_bad_value_prints_one_line_naming_the_variable_and_exits_non_zero() {
    for (var, value) in [
        ("PORT", "eighty"),
        ("POSTGRES_POOL_MAX", "-3"),
        ("LOG_FORMAT", "xml"),
        ("READY_REQUIRES", "database,kafka"),
        ("DB_LATENCY_DEGRADED_MS", "0"),
        // The value the examples used to ship, and a guessable one: anyone could forge.
        (
            "JWT_SECRET",
            "change-me-to-a-random-secret-of-at-least-32-characters",
        ),
        ("JWT_SECRET", "test-secret-test-secret-test-secret-0123"),
        ("JWT_SECRET_PREVIOUS", "0123456789abcdef0123456789abcdef"),
        // Unreadable, and set beside JWT_SECRET besides.
        ("JWT_SECRET_FILE", "/nonexistent/jwt-secret"),
    ] {
        let (status, output) = run_to_end(&["serve"], &env_with(&[(var, value)]));
        assert_eq!(status.code(), Some(78), "{var}={value}: {output}");
        let lines: Vec<&str> = output.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "{var}={value}: expected one line, got: {output}"
        );
        assert!(
            lines[0].contains(var),
            "{var}={value}: line does not name the variable: {output}"
        );
    }
}

#[test]
fn a_missing_secret_is_a_configuration_error() {
    let mut env = env_with(&[]);
    env.remove("JWT_SECRET");
    let (status, output) = run_to_end(&[], &env);
    assert_eq!(status.code(), Some(78));
    assert!(output.contains("JWT_SECRET"), "{output}");
}

#[tokio::test]
async fn secrets_can_come_from_files_so_the_environment_holds_only_paths() {
    let path = std::env::temp_dir().join(format!("jwt-secret-{}", uuid::Uuid::new_v4()));
    std::fs::write(&path, format!("{}\n", crate::helpers::JWT_SECRET)).unwrap();
    let app = crate::helpers::spawn_app_with(
        crate::helpers::AppOptions::default()
            .env("JWT_SECRET", "")
            .env("JWT_SECRET_FILE", path.to_str().unwrap()),
    )
    .await;
    // Tokens are signed and verified with the file's secret.
    let token = app.new_user().await;
    let me = app
        .call(reqwest::Method::GET, "/api/auth/me", Some(&token), None)
        .await;
    assert_eq!(me.status, 200, "{}", me.body);
    std::fs::remove_file(path).unwrap();
}
