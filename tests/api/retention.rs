//! Expired idempotency keys and revocations are purged; fresh ones are kept.

use std::time::Duration;

use cartae_database_api::db::retention::{purge, Purged};
use serde_json::json;

use crate::helpers::spawn_app;

#[tokio::test]
async fn expired_keys_and_revocations_are_purged_and_fresh_ones_kept() {
    let app = spawn_app().await;
    app.wait_ready().await;
    let token = app.new_user().await;
    let body = json!({"type": "note", "title": "keyed"});
    for key in ["old-key", "fresh-key"] {
        let created = app.post_keyed(Some(&token), "/api/items", key, &body).await;
        assert_eq!(created.status, 201);
    }
    let db = &app.state.db;
    sqlx::query("UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE key = 'old-key'")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO revoked_tokens (jti, user_id, expires_at) VALUES
           (gen_random_uuid(), gen_random_uuid(), now() - interval '2 minutes'),
           (gen_random_uuid(), gen_random_uuid(), now() + interval '1 hour')",
    )
    .execute(&db.pool)
    .await
    .unwrap();

    let purged = purge(db, Duration::from_secs(24 * 3600)).await.unwrap();
    assert_eq!(
        purged,
        Purged {
            idempotency_keys: 1,
            revoked_tokens: 1
        }
    );
    let keys: Vec<String> = sqlx::query_scalar("SELECT key FROM idempotency_keys")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert!(
        keys.contains(&"fresh-key".to_owned()) && !keys.contains(&"old-key".to_owned()),
        "{keys:?}"
    );

    // Past its lifetime a key no longer replays: the retry is a new request.
    let again = app
        .post_keyed(Some(&token), "/api/items", "old-key", &body)
        .await;
    assert_eq!(again.status, 201);
    assert_eq!(again.header("idempotent-replayed"), None);
    let replay = app
        .post_keyed(Some(&token), "/api/items", "fresh-key", &body)
        .await;
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
}
