//! The failed-login wait is cluster-wide: earned on one replica, it holds on the others and
//! on a replica started afresh (the count is in Redis). Without Redis each replica keeps
//! its own count: never an open door, never the owner locked out.

use crate::auth::login_from;
use crate::helpers::{spawn_app_with, AppOptions};
use crate::support::api_client::{unique_email, PASSWORD};
use crate::support::proxy::Mode;

/// The test client stands for a balancer on loopback.
fn behind_a_balancer() -> AppOptions {
    AppOptions::default().env("TRUSTED_PROXIES", "127.0.0.1/32")
}

const ATTACKER: &str = "203.0.113.7";
const OWNER: &str = "198.51.100.9";

#[tokio::test]
async fn a_wait_earned_on_one_replica_holds_on_another_and_after_a_restart() {
    let first = spawn_app_with(behind_a_balancer()).await;
    first.wait_ready().await;
    let email = unique_email();
    assert_eq!(first.register(&email, PASSWORD).await.status, 201);
    for _ in 0..5 {
        let answer = login_from(&first, ATTACKER, &email, "wrong password!").await;
        assert_eq!(answer.status, 401, "{}", answer.body);
    }
    // Another replica of the same cluster, and one started after the failures: neither
    // saw them, and each would answer five more guesses with a per-replica count.
    let second = spawn_app_with(behind_a_balancer().sharing_with(&first)).await;
    second.wait_ready().await;
    let refused = login_from(&second, ATTACKER, &email, "wrong password!").await;
    assert_eq!(refused.status, 429, "{}", refused.body);
    let retry_after: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry_after), "{retry_after}");
    // The right password waits too (no oracle); the owner elsewhere is let in.
    let right = login_from(&second, ATTACKER, &email, PASSWORD).await;
    assert_eq!(right.status, 429);
    assert_eq!(
        login_from(&second, OWNER, &email, PASSWORD).await.status,
        200
    );
}

#[tokio::test]
async fn a_success_on_one_replica_clears_the_count_on_the_others() {
    let first = spawn_app_with(behind_a_balancer()).await;
    first.wait_ready().await;
    let second = spawn_app_with(behind_a_balancer().sharing_with(&first)).await;
    second.wait_ready().await;
    let email = unique_email();
    assert_eq!(first.register(&email, PASSWORD).await.status, 201);
    for _ in 0..4 {
        assert_eq!(
            login_from(&first, ATTACKER, &email, "wrong!!!")
                .await
                .status,
            401
        );
    }
    assert_eq!(
        login_from(&second, ATTACKER, &email, PASSWORD).await.status,
        200
    );
    // Four more failures anywhere are answered, as after any success.
    for app in [&first, &second, &first, &second] {
        assert_eq!(
            login_from(app, ATTACKER, &email, "wrong!!!").await.status,
            401
        );
    }
}

#[tokio::test]
async fn without_redis_each_replica_counts_alone_and_the_owner_still_gets_in() {
    let app = spawn_app_with(behind_a_balancer().proxy_redis()).await;
    app.wait_ready().await;
    let email = unique_email();
    assert_eq!(app.register(&email, PASSWORD).await.status, 201);
    app.redis_proxy().set_mode(Mode::Cut);
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(
            login_from(&app, ATTACKER, &email, "wrong password!")
                .await
                .status,
        );
    }
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429], "no open door");
    assert_eq!(login_from(&app, OWNER, &email, PASSWORD).await.status, 200);
    app.redis_proxy().set_mode(Mode::Forward);
}
