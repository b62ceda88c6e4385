//! Following the PostgreSQL primary across hosts (libpq's multi-host URL), on a private
//! primary and streaming standby: the standby listed first, a crash of the primary with no
//! writable host left, then a promotion the running service must follow without a restart.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::{spawn_app_with, AppOptions, TestApp};
use crate::support::pg_pair::{connect, PgPair, DATABASE};
use crate::support::proxy::{Mode, TcpProxy};

/// A failover on a busy 2-core machine: a promotion, then a discovery round.
const FOLLOW_WITHIN: Duration = Duration::from_secs(20);

/// Writes until one is created, asserting that every refusal meanwhile was a retryable
/// 503 with `Retry-After`, never a 500. Returns how many were refused.
async fn write_until_created(app: &TestApp, token: &str, title: &str) -> usize {
    let deadline = Instant::now() + FOLLOW_WITHIN;
    let mut refused = 0;
    loop {
        let answer = app
            .create_item(token, &json!({"type": "note", "title": title}))
            .await;
        match answer.status {
            201 => return refused,
            503 => {
                assert!(answer.header("retry-after").is_some(), "{}", answer.body);
                refused += 1;
            }
            other => panic!(
                "a write during a failover answered {other}: {}",
                answer.body
            ),
        }
        assert!(
            Instant::now() < deadline,
            "no write succeeded within {FOLLOW_WITHIN:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_service_follows_the_primary_through_a_failover_without_a_restart() {
    let mut pair = PgPair::start().await.expect("primary and standby start");
    // The standby first: the service must find and write to the primary all the same.
    let url = PgPair::url(
        &[&pair.standby, &pair.primary],
        "&target_session_attrs=read-write",
    );
    let options = AppOptions {
        database: Some(DATABASE.to_owned()),
        ..AppOptions::default()
    };
    let app = spawn_app_with(options.env("DATABASE_URL", &url)).await;
    let token = app.new_user().await;
    app.note(&token, "before the failover").await;
    {
        // A replica that does not migrate reaches the standby first with a read; its first
        // write must go to the primary all the same, refused by no 503.
        let options = AppOptions {
            database: Some(DATABASE.to_owned()),
            ..AppOptions::default()
        };
        let reader_first = spawn_app_with(
            options
                .env("DATABASE_URL", &url)
                .env("MIGRATE_ON_START", "false"),
        )
        .await;
        reader_first.new_user().await;
        reader_first.signal();
    }
    let (_, detailed) = app.get_json("/health/detailed").await;
    let topology = &detailed["topology"]["postgres"];
    assert_eq!(
        topology["primary"],
        pair.primary.addr().to_string(),
        "{detailed}"
    );
    assert_eq!(topology["targetSessionAttrs"], "read-write");
    assert_eq!(
        topology["hosts"][0]["host"],
        pair.standby.addr().to_string()
    );
    assert_eq!(topology["hosts"][0]["role"], "standby", "{detailed}");
    // The standby's replication, as the primary sees it, once a check round has read it.
    app.wait_for("/health/detailed", FOLLOW_WITHIN, |_, body| {
        body["topology"]["postgres"]["replication"][0]["state"] == "streaming"
    })
    .await;

    // The primary dies and nothing is promoted yet: no host takes writes.
    pair.primary.crash();
    let why = format!(
        "no writable primary among {}, {}",
        pair.standby.addr(),
        pair.primary.addr()
    );
    let ready = app
        .wait_for("/ready", FOLLOW_WITHIN, |status, body| {
            status == 503 && body.to_string().contains(&why)
        })
        .await;
    assert!(
        ready["reasons"][0]
            .as_str()
            .unwrap()
            .starts_with("database:"),
        "{ready}"
    );
    let (status, health) = app.get_json("/health").await;
    assert_eq!(status, 503, "{health}");
    assert!(
        health["checks"]["database"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(&why)),
        "{health}"
    );
    let refused = app
        .create_item(&token, &json!({"type": "note", "title": "no primary"}))
        .await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(refused.header("retry-after").is_some());
    let (_, detailed) = app.get_json("/health/detailed").await;
    assert!(
        detailed["topology"]["postgres"]["primary"].is_null(),
        "{detailed}"
    );

    // The failover manager promotes the standby: the running service follows it.
    pair.promote_standby().await.expect("standby promoted");
    write_until_created(&app, &token, "after the failover").await;
    app.wait_ready().await;
    let (_, detailed) = app.get_json("/health/detailed").await;
    assert_eq!(
        detailed["topology"]["postgres"]["primary"],
        pair.standby.addr().to_string(),
        "{detailed}"
    );
    let mut conn = connect(&pair.standby).await.unwrap();
    let titles: Vec<String> = sqlx::query_scalar("SELECT title FROM items ORDER BY title")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(titles, ["after the failover", "before the failover"]);

    // The primary turns read-only under the service's open connections: a write refused
    // with 25006 is a retryable 503, and the service stops writing there until it may.
    // Backends reload their configuration a moment after pg_reload_conf(): writes may
    // succeed until then, and once refused must be 503, never 500.
    set_read_only(&mut conn, true).await;
    let deadline = Instant::now() + FOLLOW_WITHIN;
    loop {
        let answer = app
            .create_item(&token, &json!({"type": "note", "title": "read only"}))
            .await;
        match answer.status {
            201 => assert!(Instant::now() < deadline, "writes never refused"),
            503 => {
                assert!(answer.header("retry-after").is_some());
                break;
            }
            other => panic!(
                "a write to a read-only primary answered {other}: {}",
                answer.body
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.wait_for("/ready", FOLLOW_WITHIN, |status, body| {
        status == 503 && body.to_string().contains("no writable primary")
    })
    .await;
    set_read_only(&mut conn, false).await;
    write_until_created(&app, &token, "writable again").await;
    app.wait_ready().await;
}

async fn set_read_only(conn: &mut sqlx::PgConnection, on: bool) {
    let value = if on { "on" } else { "off" };
    sqlx::query(&format!(
        "ALTER SYSTEM SET default_transaction_read_only = {value}"
    ))
    .execute(&mut *conn)
    .await
    .unwrap();
    sqlx::query("SELECT pg_reload_conf()")
        .execute(&mut *conn)
        .await
        .unwrap();
}

/// A token's check on `app`: 200 accepted, 401 refused, 503 unknown (no database).
async fn me(app: &TestApp, token: &str) -> u16 {
    app.call(reqwest::Method::GET, "/api/auth/me", Some(token), None)
        .await
        .status
}

/// Issue 25, item 3. A replica's denylist horizon is a transaction id of the old primary's
/// history; a promoted standby that never received the old primary's last transactions
/// hands out lower ids. A logout committed on the new primary before the replica's first
/// poll there must not be skipped.
#[tokio::test]
async fn a_logout_right_after_a_failover_is_refused_by_a_replica_that_kept_running() {
    let mut pair = PgPair::start().await.expect("primary and standby start");
    // Replica B reaches the servers through proxies the test controls.
    let to_primary = TcpProxy::start(pair.primary.addr(), false).await;
    let to_standby = TcpProxy::start(pair.standby.addr(), false).await;
    let hosts = |a: String, b: String| {
        format!("postgres://postgres@{a},{b}/{DATABASE}?sslmode=disable&target_session_attrs=read-write")
    };
    let options = || AppOptions {
        database: Some(DATABASE.to_owned()),
        ..AppOptions::default()
    };
    let a = spawn_app_with(options().env(
        "DATABASE_URL",
        &hosts(
            pair.primary.addr().to_string(),
            pair.standby.addr().to_string(),
        ),
    ))
    .await;
    let token = a.new_user().await;
    let b = spawn_app_with(options().sharing_with(&a).env(
        "DATABASE_URL",
        &hosts(to_primary.addr.to_string(), to_standby.addr.to_string()),
    ))
    .await;
    b.wait_ready().await;
    assert_eq!(me(&b, &token).await, 200);

    // The standby stops receiving WAL: what the primary does from now on never reaches it.
    let mut standby = connect(&pair.standby).await.unwrap();
    for sql in [
        "ALTER SYSTEM SET primary_conninfo = ''",
        "SELECT pg_reload_conf()",
    ] {
        sqlx::query(sql).execute(&mut standby).await.unwrap();
    }
    let cut = cartae_harness::process::wait_until(FOLLOW_WITHIN, || async {
        let receivers: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_wal_receiver")
            .fetch_one(&mut connect(&pair.standby).await.unwrap())
            .await
            .unwrap();
        receivers == 0
    })
    .await;
    assert!(cut, "the standby kept receiving WAL");
    // Transactions the standby will never know of push the primary's ids ahead, and B's
    // horizon with them.
    let mut primary = connect(&pair.primary).await.unwrap();
    for _ in 0..300 {
        sqlx::query("SELECT txid_current()")
            .execute(&mut primary)
            .await
            .unwrap();
    }
    drop(primary);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(b.state.denylist.is_fresh(), "B polled the old primary");

    // The failover, while B cannot reach the new primary yet; A logs out there.
    to_standby.set_mode(Mode::Cut);
    pair.primary.crash();
    pair.promote_standby().await.expect("standby promoted");
    let deadline = Instant::now() + FOLLOW_WITHIN;
    let logged_out = loop {
        let logout = a
            .call(
                reqwest::Method::POST,
                "/api/auth/logout",
                Some(&token),
                None,
            )
            .await;
        if logout.status == 204 {
            break Instant::now();
        }
        assert_eq!(logout.status, 503, "{}", logout.body);
        assert!(Instant::now() < deadline, "the logout never committed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // B reaches the new primary again. The promise: refused everywhere within 1 s of the
    // logout's answer. Until then B may still answer from its copy of the old primary's
    // list; from then on its copy is fresh only if it has polled the new primary.
    to_standby.set_mode(Mode::Forward);
    tokio::time::sleep(
        (logged_out + Duration::from_secs(1)).saturating_duration_since(Instant::now()),
    )
    .await;
    let fresh = cartae_harness::process::wait_until(FOLLOW_WITHIN, || {
        std::future::ready(b.state.denylist.is_fresh())
    })
    .await;
    assert!(fresh, "B never followed the new primary");
    // Its request pool follows the primary on its own round: 503 until then.
    let deadline = Instant::now() + FOLLOW_WITHIN;
    while me(&b, &token).await == 503 {
        assert!(Instant::now() < deadline, "B never served again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        assert_eq!(
            me(&b, &token).await,
            401,
            "B accepted a token revoked on the new primary"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
