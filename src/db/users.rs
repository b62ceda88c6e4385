//! Users.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgExecutor};
use uuid::Uuid;

use super::Database;
use crate::model::auth::User;

#[derive(FromRow)]
pub struct UserRow {
    pub id: Uuid,
    pub email: String,
    pub password_hash: String,
    pub created_at: DateTime<Utc>,
}

impl From<UserRow> for User {
    fn from(row: UserRow) -> Self {
        User {
            id: row.id,
            email: row.email,
            created_at: row.created_at,
        }
    }
}

/// Fails with a unique violation (a 409) when the email is taken.
pub async fn insert<'c>(
    db: &Database,
    conn: impl PgExecutor<'c>,
    email: &str,
    password_hash: &str,
) -> Result<User, sqlx::Error> {
    let query = sqlx::query_as::<_, UserRow>(
        "INSERT INTO users (id, email, password_hash) VALUES ($1, $2, $3)
         RETURNING id, email, password_hash, created_at",
    )
    .bind(Uuid::now_v7())
    .bind(email)
    .bind(password_hash)
    .fetch_one(conn);
    db.timed("user_insert", query).await.map(User::from)
}

pub async fn by_email(db: &Database, email: &str) -> Result<Option<UserRow>, sqlx::Error> {
    let query = sqlx::query_as::<_, UserRow>(
        "SELECT id, email, password_hash, created_at FROM users WHERE email = $1",
    )
    .bind(email)
    .fetch_optional(&db.pool);
    db.timed("user_by_email", query).await
}

pub async fn by_id(db: &Database, id: Uuid) -> Result<Option<User>, sqlx::Error> {
    let query = sqlx::query_as::<_, UserRow>(
        "SELECT id, email, password_hash, created_at FROM users WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&db.pool);
    Ok(db.timed("user_by_id", query).await?.map(User::from))
}
