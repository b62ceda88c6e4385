//! (Long: one test per promise of the auth API, read as its specification.)
//!
//! Registration, login, tokens and revocation, including across replicas and through a
//! Redis outage.

use std::time::Duration;

use jsonwebtoken::{encode, EncodingKey, Header};
use reqwest::Method;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{spawn_app, spawn_app_with, AppOptions, TestApp, JWT_SECRET};
use crate::support::api_client::{unique_email, Answer, PASSWORD};
use crate::support::proxy::Mode;

/// Logs `token` out on `app`, expecting 204.
async fn logout(app: &TestApp, token: &str) {
    let answer = app
        .call(Method::POST, "/api/auth/logout", Some(token), None)
        .await;
    assert_eq!(answer.status, 204, "{}", answer.body);
}

async fn me(app: &TestApp, token: &str) -> u16 {
    app.call(Method::GET, "/api/auth/me", Some(token), None)
        .await
        .status
}

#[tokio::test]
async fn register_login_me_and_logout() {
    let app = spawn_app().await;
    app.wait_ready().await;
    let email = unique_email();
    let registered = app.register(&email.to_uppercase(), PASSWORD).await;
    assert_eq!(registered.status, 201, "{}", registered.body);
    assert_eq!(
        registered.body["email"],
        email.as_str(),
        "stored lower-cased"
    );
    assert!(
        registered.body.get("password").is_none() && registered.body.get("passwordHash").is_none()
    );

    let again = app.register(&email, "another password").await;
    assert_eq!(again.status, 409);
    again.error_paths();

    let wrong = app.login(&email, "not the password").await;
    assert_eq!(wrong.status, 401);
    let unknown = app.login(&unique_email(), PASSWORD).await;
    assert_eq!(unknown.status, 401);
    assert_eq!(
        wrong.body["error"], unknown.body["error"],
        "no user enumeration"
    );

    let login = app.login(&email, PASSWORD).await;
    assert_eq!(login.status, 200);
    let token = login.body["token"].as_str().unwrap();
    let expires_at =
        chrono::DateTime::parse_from_rfc3339(login.body["expiresAt"].as_str().unwrap()).unwrap();
    let lifetime = expires_at.timestamp() - chrono::Utc::now().timestamp();
    assert!(
        (3590..=3600).contains(&lifetime),
        "JWT_EXPIRES_IN default: {lifetime}"
    );

    let claims = app.state.tokens.verify(token).unwrap();
    assert_eq!(
        (claims.iss.as_str(), claims.aud.as_str()),
        ("cartae-api", "cartae-web")
    );

    let me_answer = app
        .call(Method::GET, "/api/auth/me", Some(token), None)
        .await;
    assert_eq!(me_answer.status, 200);
    assert_eq!(me_answer.body["email"], email.as_str());
    assert_eq!(me_answer.body["id"], registered.body["id"]);

    let logout = app
        .call(Method::POST, "/api/auth/logout", Some(token), None)
        .await;
    assert_eq!(logout.status, 204);
    let revoked = app
        .call(Method::GET, "/api/auth/me", Some(token), None)
        .await;
    assert_eq!(revoked.status, 401);
    assert_eq!(revoked.body["error"], "unauthorized: token revoked");
    assert_eq!(revoked.header("www-authenticate"), Some("Bearer"));
    // A retried logout is harmless.
    let retried = app
        .call(Method::POST, "/api/auth/logout", Some(token), None)
        .await;
    assert_eq!(retried.status, 204);
    // Another token of the same user is unaffected.
    let other = app.login(&email, PASSWORD).await.body["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(me(&app, &other).await, 200);
}

#[tokio::test]
async fn registration_input_is_validated() {
    let app = spawn_app().await;
    app.wait_ready().await;
    for (body, path) in [
        (
            json!({"email": "not-an-email", "password": PASSWORD}),
            "$.email",
        ),
        (
            json!({"email": unique_email(), "password": "short"}),
            "$.password",
        ),
        (
            json!({"email": unique_email(), "password": "x".repeat(129)}),
            "$.password",
        ),
        (
            json!({"email": "a\u{0}@b.co", "password": PASSWORD}),
            "$.email",
        ),
        (
            json!({"email": unique_email(), "password": PASSWORD, "admin": true}),
            "$.admin",
        ),
        (json!({"email": 42, "password": PASSWORD}), "$.email"),
        // The first passwords any guesser tries, and the email itself.
        (
            json!({"email": unique_email(), "password": "password"}),
            "$.password",
        ),
        (
            json!({"email": unique_email(), "password": "Qwerty123"}),
            "$.password",
        ),
        (
            json!({"email": "jean.dupont@example.com", "password": "Jean.Dupont"}),
            "$.password",
        ),
        (json!({"password": PASSWORD}), "$"),
    ] {
        let answer = app
            .call(Method::POST, "/api/auth/register", None, Some(&body))
            .await;
        assert_eq!(answer.status, 422, "{body} -> {}", answer.body);
        assert!(
            answer.error_paths().contains(&path.to_owned()),
            "{body} -> {}",
            answer.body
        );
    }
}

#[derive(serde::Serialize)]
struct RawClaims {
    sub: Uuid,
    iss: &'static str,
    aud: &'static str,
    iat: i64,
    exp: i64,
    jti: Uuid,
}

fn forge(secret: &str, iss: &'static str, aud: &'static str, exp_offset: i64) -> String {
    let now = chrono::Utc::now().timestamp();
    let claims = RawClaims {
        sub: Uuid::new_v4(),
        iss,
        aud,
        iat: now,
        exp: now + exp_offset,
        jti: Uuid::new_v4(),
    };
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn missing_expired_tampered_and_foreign_tokens_get_401_json() {
    let app = spawn_app().await;
    let token = app.new_user().await;
    let mut tampered = token.clone();
    // Flip one character of the signature.
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    let (header, rest) = token.split_once('.').unwrap();
    let (_, signature) = rest.split_once('.').unwrap();
    let swapped_payload = format!(
        "{header}.{}.{signature}",
        forge(JWT_SECRET, "cartae-api", "cartae-web", 3600)
            .split('.')
            .nth(1)
            .unwrap()
    );
    let cases = [
        (
            "expired",
            forge(JWT_SECRET, "cartae-api", "cartae-web", -120),
        ),
        (
            "wrong secret",
            forge(
                "another-secret-another-secret-0123",
                "cartae-api",
                "cartae-web",
                3600,
            ),
        ),
        (
            "wrong issuer",
            forge(JWT_SECRET, "someone-else", "cartae-web", 3600),
        ),
        (
            "wrong audience",
            forge(JWT_SECRET, "cartae-api", "somewhere-else", 3600),
        ),
        ("tampered signature", tampered),
        ("swapped payload", swapped_payload),
        ("garbage", "not.a.jwt".to_owned()),
    ];
    for (what, bad) in cases {
        let answer = app.call(Method::GET, "/api/items", Some(&bad), None).await;
        assert_eq!(answer.status, 401, "{what}: {}", answer.body);
        answer.error_paths();
    }
    let expired = app
        .call(
            Method::GET,
            "/api/auth/me",
            Some(&forge(JWT_SECRET, "cartae-api", "cartae-web", -120)),
            None,
        )
        .await;
    assert_eq!(expired.body["error"], "unauthorized: token expired");
    let missing = app.call(Method::GET, "/api/items", None, None).await;
    assert_eq!(missing.status, 401);
    let basic = crate::support::api_client::answer(
        app.client
            .get(app.url("/api/items"))
            .header("Authorization", "Basic dXNlcjpwYXNz"),
    )
    .await;
    assert_eq!(basic.status, 401);
    assert_eq!(me(&app, &token).await, 200, "the genuine token still works");
}

#[tokio::test]
async fn a_token_from_one_replica_works_on_another_and_so_does_its_revocation() {
    let a = spawn_app().await;
    let b = spawn_app_with(AppOptions::default().sharing_with(&a)).await;
    let token = a.new_user().await;
    // A replica answers the API only once started; on a busy machine b may still be.
    b.wait_ready().await;
    assert_eq!(me(&b, &token).await, 200);
    logout(&b, &token).await;
    let answered = std::time::Instant::now();
    // The replica that logged out refuses at once; the others follow within a second.
    assert_eq!(me(&b, &token).await, 401);
    let took = refused_after(&a, &token, answered).await;
    assert!(
        took <= Duration::from_secs(1),
        "refused only after {took:?}"
    );
}

#[tokio::test]
async fn revocation_holds_through_a_redis_outage() {
    let app = spawn_app_with(AppOptions::default().proxy_redis()).await;
    app.wait_ready().await;
    let token = app.new_user().await;
    let other = app.new_user().await;
    assert_eq!(me(&app, &token).await, 200);

    app.redis_proxy().set_mode(Mode::Cut);
    logout(&app, &token).await;
    assert_eq!(
        me(&app, &token).await,
        401,
        "revoked token accepted while Redis is down"
    );
    assert_eq!(
        me(&app, &other).await,
        200,
        "valid tokens must keep working (no fail-closed)"
    );
    app.redis_proxy().set_mode(Mode::Forward);
    assert_eq!(
        me(&app, &token).await,
        401,
        "revoked token accepted after Redis came back"
    );
    assert_eq!(me(&app, &other).await, 200);
}

/// Deletes every key of the app's prefix: what `FLUSHALL`, an eviction or a restart that
/// lost its last writes does to it, without touching the shared Redis's other tenants.
async fn flush_prefix(prefix: &str) {
    let redis = redis::Client::open(format!("redis://{}", crate::helpers::REDIS_ADDR)).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    if !keys.is_empty() {
        redis::cmd("DEL")
            .arg(&keys)
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_logout_survives_redis_losing_every_key() {
    let a = spawn_app().await;
    let b = spawn_app_with(AppOptions::default().sharing_with(&a)).await;
    b.wait_ready().await;
    let token = a.new_user().await;
    let other = a.new_user().await;
    // Warm the cache, so Redis holds something to lose.
    a.note(&other, "cached").await;
    logout(&a, &token).await;
    flush_prefix(&a.key_prefix).await;
    // Beyond the propagation bound: the answer below is the settled one.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for app in [&a, &b] {
        assert_eq!(
            me(app, &token).await,
            401,
            "a logout undone by a Redis flush"
        );
        assert_eq!(me(app, &other).await, 200);
    }
}

/// Polls `me` on `app` until it answers 401, then checks it keeps doing so; returns how
/// long after `since` the first 401 came.
async fn refused_after(app: &TestApp, token: &str, since: std::time::Instant) -> Duration {
    let deadline = since + Duration::from_secs(10);
    while me(app, token).await != 401 {
        assert!(
            std::time::Instant::now() < deadline,
            "the token was never refused"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = since.elapsed();
    for _ in 0..5 {
        assert_eq!(
            me(app, token).await,
            401,
            "refused once, then accepted again"
        );
    }
    took
}

#[tokio::test]
async fn a_logout_while_redis_is_down_is_refused_everywhere_within_a_second() {
    // A cannot reach Redis, B can: a partition, the case where B used to trust a Redis
    // that never heard of the logout.
    let a = spawn_app_with(AppOptions::default().proxy_redis()).await;
    let b = spawn_app_with(AppOptions::default().sharing_with(&a)).await;
    b.wait_ready().await;
    let token = a.new_user().await;
    assert_eq!(me(&b, &token).await, 200);
    a.redis_proxy().set_mode(Mode::Cut);
    logout(&a, &token).await;
    let answered = std::time::Instant::now();
    for (name, app) in [("a", &a), ("b", &b)] {
        let took = refused_after(app, &token, answered).await;
        assert!(
            took <= Duration::from_secs(1),
            "replica {name} refused the token only {took:?} after the logout"
        );
    }
}

#[tokio::test]
async fn a_revocation_whose_commit_was_slow_is_still_followed() {
    let a = spawn_app().await;
    let token = a.new_user().await;
    let claims = a.state.tokens.verify(&token).unwrap();
    // A logout transaction that stays open while the replica polls many times: a poll that
    // only read rows newer than the last it saw would skip it for good.
    let mut tx = a.state.db.pool.begin().await.unwrap();
    sqlx::query("INSERT INTO revoked_tokens (jti, user_id, expires_at) VALUES ($1, $2, $3)")
        .bind(claims.jti)
        .bind(claims.sub)
        .bind(claims.expires_at())
        .execute(&mut *tx)
        .await
        .unwrap();
    let other = a.new_user().await;
    logout(&a, &other).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(me(&a, &token).await, 200, "not revoked before the commit");
    tx.commit().await.unwrap();
    let took = refused_after(&a, &token, std::time::Instant::now()).await;
    assert!(
        took <= Duration::from_secs(1),
        "refused only after {took:?}"
    );
}

const NEW_SECRET: &str = "a49SAJHKiyawziFCBYAC6uLMCZRmYRnLlMdYUI-LWhjjAVdp";

/// A replica of `of`'s cluster with these secrets.
async fn replica_with(of: &TestApp, secret: &str, previous: Option<&str>) -> TestApp {
    let mut options = AppOptions::default()
        .sharing_with(of)
        .env("JWT_SECRET", secret);
    if let Some(previous) = previous {
        options = options.env("JWT_SECRET_PREVIOUS", previous);
    }
    let app = spawn_app_with(options).await;
    app.wait_ready().await;
    app
}

#[tokio::test]
async fn a_rotated_secret_verifies_old_tokens_and_cursors_until_it_is_dropped() {
    let old = spawn_app().await;
    let old_token = old.new_user().await;
    for title in ["one", "two"] {
        old.note(&old_token, title).await;
    }
    let old_cursor = old.list_items(&old_token, "?limit=1").await.body["nextCursor"]
        .as_str()
        .unwrap()
        .to_owned();
    let page = |cursor: &str| format!("?limit=1&cursor={cursor}");

    // Step 1: old key signs, new key already verifies.
    let step1 = replica_with(&old, JWT_SECRET, Some(NEW_SECRET)).await;
    // Step 2: new key signs, old key still verifies.
    let step2 = replica_with(&old, NEW_SECRET, Some(JWT_SECRET)).await;
    let new_token = step2.new_user().await;
    for (name, app) in [("old", &old), ("step 1", &step1), ("step 2", &step2)] {
        assert_eq!(me(app, &old_token).await, 200, "{name}: old-key token");
        let listed = app.list_items(&old_token, &page(&old_cursor)).await;
        assert_eq!(listed.status, 200, "{name}: old-key cursor {}", listed.body);
    }
    for (name, app) in [("step 1", &step1), ("step 2", &step2)] {
        assert_eq!(me(app, &new_token).await, 200, "{name}: new-key token");
    }
    // Step 3: the old key dropped; what it signed is refused.
    let after = replica_with(&old, NEW_SECRET, None).await;
    assert_eq!(me(&after, &new_token).await, 200);
    assert_eq!(me(&after, &old_token).await, 401);
    let listed = after.list_items(&new_token, &page(&old_cursor)).await;
    assert_eq!(listed.status, 400, "an old-key cursor: {}", listed.body);
}

/// A login sent through a proxy that says the client is `client`.
pub(crate) async fn login_from(app: &TestApp, client: &str, email: &str, password: &str) -> Answer {
    crate::support::api_client::answer(
        app.client
            .post(app.url("/api/auth/login"))
            .header("X-Forwarded-For", client)
            .json(&json!({"email": email, "password": password})),
    )
    .await
}

#[tokio::test]
async fn failed_logins_slow_the_guessing_address_down_and_never_lock_the_owner_out() {
    // The test client stands for a balancer on loopback.
    let app = spawn_app_with(AppOptions::default().env("TRUSTED_PROXIES", "127.0.0.1/32")).await;
    app.wait_ready().await;
    let (victim, bystander) = (unique_email(), unique_email());
    for email in [&victim, &bystander] {
        assert_eq!(app.register(email, PASSWORD).await.status, 201);
    }
    let attacker = "203.0.113.7";
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(
            login_from(&app, attacker, &victim, "wrong password!")
                .await
                .status,
        );
    }
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429]);
    let refused = login_from(&app, attacker, &victim, PASSWORD).await;
    assert_eq!(
        refused.status, 429,
        "even the right password waits: no oracle"
    );
    let retry_after: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry_after), "{retry_after}");
    refused.error_paths();

    // The owner, from anywhere else, and the attacker's address for another account.
    assert_eq!(
        login_from(&app, "198.51.100.9", &victim, PASSWORD)
            .await
            .status,
        200
    );
    assert_eq!(
        login_from(&app, attacker, &bystander, PASSWORD)
            .await
            .status,
        200
    );
    // A forged header in front of our proxy changes nothing: the proxy's entry is last.
    let forged = login_from(
        &app,
        &format!("198.51.100.9, {attacker}"),
        &victim,
        PASSWORD,
    )
    .await;
    assert_eq!(forged.status, 429);
    let text = app.metrics().await;
    assert!(crate::helpers::metric_value(&text, "login_throttled_total", &[]) >= 2.0);
}

#[tokio::test]
async fn without_trusted_proxies_a_forwarded_header_is_ignored() {
    let app = spawn_app().await;
    app.wait_ready().await;
    let email = unique_email();
    assert_eq!(app.register(&email, PASSWORD).await.status, 201);
    for i in 0..6 {
        // Each attempt claims another address: none is believed.
        let answer = login_from(&app, &format!("203.0.113.{i}"), &email, "wrong password!").await;
        assert_eq!(answer.status, if i < 5 { 401 } else { 429 });
    }
    assert_eq!(
        login_from(&app, "198.51.100.9", &email, PASSWORD)
            .await
            .status,
        429
    );
}

#[tokio::test]
async fn the_fifth_wrong_password_is_answered_and_only_the_sixth_attempt_waits() {
    let app = spawn_app().await;
    app.wait_ready().await;
    let email = unique_email();
    assert_eq!(app.register(&email, PASSWORD).await.status, 201);
    let mut statuses = Vec::new();
    for _ in 0..7 {
        statuses.push(app.login(&email, "wrong password!").await.status);
    }
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429, 429]);
    let text = app.metrics().await;
    assert_eq!(
        crate::helpers::metric_value(&text, "login_throttled_total", &[]),
        2.0,
        "every 429 is counted, the first of a block too"
    );
}

#[tokio::test]
async fn logins_refused_before_hashing_cost_the_throttle_one_entry_per_address() {
    let app = spawn_app().await;
    app.wait_ready().await;
    let mut statuses = Vec::new();
    for i in 0..12 {
        // Each a different account, each refused by the rules register applies.
        let (email, password) = match i % 3 {
            0 => (format!("{}{i}@example.com", "a".repeat(100_000)), PASSWORD),
            1 => (format!("nul\0{i}@example.com"), PASSWORD),
            _ => (format!("long{i}@example.com"), &*"p".repeat(129)),
        };
        statuses.push(app.login(&email, password).await.status);
    }
    assert_eq!(
        statuses,
        [401, 401, 401, 401, 401, 429, 429, 429, 429, 429, 429, 429],
        "counted against the address, whatever the account"
    );
    assert_eq!(app.state.login_throttle.tracked(), 1);

    // A real account from the same address is not held back by them.
    let email = unique_email();
    assert_eq!(app.register(&email, PASSWORD).await.status, 201);
    assert_eq!(app.login(&email, PASSWORD).await.status, 200);
}

#[tokio::test]
async fn concurrent_wrong_guesses_evaluate_no_more_than_the_free_failures() {
    // Room for every guess to be hashed at once: only the throttle may stop them.
    let app = spawn_app_with(
        AppOptions::default()
            .env("PASSWORD_HASH_CONCURRENCY", "16")
            .env("PASSWORD_HASH_QUEUE", "16"),
    )
    .await;
    app.wait_ready().await;
    let email = unique_email();
    assert_eq!(app.register(&email, PASSWORD).await.status, 201);
    let guesses =
        futures::future::join_all((0..16).map(|_| app.login(&email, "wrong password!"))).await;
    let statuses: Vec<u16> = guesses.iter().map(|a| a.status).collect();
    // The wait doubles with each failure counted: 30 s means exactly five were.
    let next = app.login(&email, PASSWORD).await;
    assert_eq!(next.status, 429);
    let retry_after: u64 = next.header("retry-after").unwrap().parse().unwrap();
    assert!(
        (1..=30).contains(&retry_after),
        "{retry_after} s after {statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|&&s| s == 401).count(),
        5,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| [401, 429].contains(s)),
        "{statuses:?}"
    );
}

#[tokio::test]
async fn one_ipv6_network_shares_one_budget() {
    let app = spawn_app_with(AppOptions::default().env("TRUSTED_PROXIES", "127.0.0.1/32")).await;
    app.wait_ready().await;
    let email = unique_email();
    assert_eq!(app.register(&email, PASSWORD).await.status, 201);
    for i in 1..=5 {
        // A new address of the same /64 for each guess.
        let client = format!("2001:db8:1:2::{i:x}");
        let answer = login_from(&app, &client, &email, "wrong password!").await;
        assert_eq!(answer.status, 401);
    }
    let other_host = login_from(&app, "2001:db8:1:2:ffff::1", &email, PASSWORD).await;
    assert_eq!(other_host.status, 429, "the same /64");
    let other_network = login_from(&app, "2001:db8:1:3::1", &email, PASSWORD).await;
    assert_eq!(other_network.status, 200, "another /64");
}

#[tokio::test]
async fn an_email_is_one_account_whatever_its_unicode_form() {
    let app = spawn_app().await;
    app.wait_ready().await;
    let id = Uuid::new_v4().simple();
    let composed = format!("jos\u{e9}-{id}@example.com");
    let decomposed = format!("jose\u{301}-{id}@example.com");
    assert_eq!(app.register(&composed, PASSWORD).await.status, 201);
    assert_eq!(app.register(&decomposed, PASSWORD).await.status, 409);
    assert_eq!(app.login(&decomposed, PASSWORD).await.status, 200);

    // An account stored decomposed before emails were normalised still logs in.
    let legacy = format!("rene\u{301}-{id}@example.com");
    let hash = app.state.passwords.hash(PASSWORD.to_owned()).await.unwrap();
    sqlx::query("INSERT INTO users (id, email, password_hash) VALUES ($1, $2, $3)")
        .bind(Uuid::now_v7())
        .bind(&legacy)
        .bind(&hash)
        .execute(&app.state.db.pool)
        .await
        .unwrap();
    assert_eq!(app.login(&legacy, PASSWORD).await.status, 200);
}
