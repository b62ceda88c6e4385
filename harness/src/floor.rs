//! The floors of the benchmarks: the smallest axum servers that do a path's unavoidable
//! work and nothing else, on the same axum, hyper and tokio as the service (one
//! workspace, one lockfile), with the same runtime construction. Whatever the service
//! spends beyond a floor is its own overhead.
//!
//! - `live`: answers `GET /live` with the same bytes as the service's `/live`.
//! - `hit`: an authenticated cache hit. `GET /api/items/{id}` verifies the HS256 bearer
//!   token (signature, algorithm, issuer, audience, expiry, as the service does), runs
//!   one Redis `GET` on a multiplexed connection and returns the bytes.
//! - `hit-pool`: the same through a deadpool-redis pool, as the service reached Redis
//!   until it moved to one multiplexed connection: each checkout first recycles the
//!   connection (`UNWATCH` and `PING`, one round trip).
//!   The two measure what the pool costs a cache hit.
//! - `miss`: an authenticated read from PostgreSQL. It verifies the token, runs one
//!   `SELECT` by primary key on a pooled connection that is not pinged first, and
//!   serialises the row.
//!
//! No middleware, no metrics, no logging.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgPoolOptions;
use sqlx::types::Json;
use sqlx::PgPool;
use uuid::Uuid;

/// The service's token rules (`src/auth/jwt.rs`).
const ISSUER: &str = "cartae-api";
const AUDIENCE: &str = "cartae-web";

/// Runs a floor from its command line: `live <port> <body>`, `hit|hit-pool <port>
/// <redis-url> <key-prefix> <jwt-secret>` (the entry of item `id` is `<key-prefix><id>`)
/// or `miss <port> <database-url> <jwt-secret>`. A bare `<port> <body>` is `live`.
pub fn main(args: &[String]) -> anyhow::Result<()> {
    let arg = |i: usize| {
        args.get(i)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("usage: live|hit|miss <port> …"))
    };
    match args.first().map(String::as_str) {
        Some(kind @ ("hit" | "hit-pool")) => {
            let pooled = kind == "hit-pool";
            serve_hit(arg(1)?.parse()?, arg(2)?, arg(3)?, &arg(4)?, pooled)
        }
        Some("miss") => serve_miss(arg(1)?.parse()?, arg(2)?, &arg(3)?),
        Some("live") => serve(arg(1)?.parse()?, arg(2).unwrap_or_default()),
        _ => serve(arg(0)?.parse()?, arg(1).unwrap_or_default()),
    }
}

/// Builds the runtime the way the service's `main` does (multi-threaded, all drivers) and
/// serves `app` on 127.0.0.1:`port`, forever.
fn run(
    port: u16,
    app: impl std::future::Future<Output = anyhow::Result<Router>>,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let app = app.await?;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        axum::serve(listener, app).await?;
        Ok(())
    })
}

/// Serves `body` as `application/json` on `GET /live`.
pub fn serve(port: u16, body: String) -> anyhow::Result<()> {
    let body: &'static str = Box::leak(body.into_boxed_str());
    run(port, async move {
        Ok(Router::new().route(
            "/live",
            get(move || async move { ([(header::CONTENT_TYPE, "application/json")], body) }),
        ))
    })
}

/// The part of the claims a data request needs.
#[derive(Deserialize)]
struct Claims {
    sub: Uuid,
}

struct Tokens {
    key: DecodingKey,
    validation: Validation,
}

impl Tokens {
    fn new(secret: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        Self {
            key: DecodingKey::from_secret(secret.as_bytes()),
            validation,
        }
    }

    /// The user of a valid bearer token.
    fn user(&self, headers: &HeaderMap) -> Option<Uuid> {
        let token = headers
            .get(header::AUTHORIZATION)?
            .to_str()
            .ok()?
            .strip_prefix("Bearer ")?;
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).ok()?;
        Some(data.claims.sub)
    }
}

enum Redis {
    /// One connection shared by every request: no checkout.
    Multiplexed(redis::aio::MultiplexedConnection),
    Pool(deadpool_redis::Pool),
}

struct HitFloor {
    tokens: Tokens,
    redis: Redis,
    prefix: String,
}

fn serve_hit(
    port: u16,
    redis_url: String,
    prefix: String,
    secret: &str,
    pooled: bool,
) -> anyhow::Result<()> {
    let tokens = Tokens::new(secret);
    run(port, async move {
        let redis = if pooled {
            let config = deadpool_redis::Config::from_url(redis_url);
            Redis::Pool(config.create_pool(Some(deadpool_redis::Runtime::Tokio1))?)
        } else {
            Redis::Multiplexed(
                redis::Client::open(redis_url)?
                    .get_multiplexed_async_connection()
                    .await?,
            )
        };
        let floor = Arc::new(HitFloor {
            tokens,
            redis,
            prefix,
        });
        Ok(Router::new()
            .route("/api/items/{id}", get(hit))
            .with_state(floor))
    })
}

async fn hit(
    State(floor): State<Arc<HitFloor>>,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
) -> Response {
    if floor.tokens.user(&headers).is_none() {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let key = format!("{}{id}", floor.prefix);
    let get = redis::cmd("GET").arg(key).clone();
    let found = match &floor.redis {
        Redis::Multiplexed(conn) => get.query_async::<Option<Vec<u8>>>(&mut conn.clone()).await,
        Redis::Pool(pool) => match pool.get().await {
            Ok(mut conn) => get.query_async(&mut conn).await,
            Err(e) => return unavailable(e),
        },
    };
    match found {
        Ok(Some(bytes)) => ([(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Ok(None) => StatusCode::NOT_FOUND.into_response(),
        Err(e) => unavailable(e),
    }
}

/// A 503 that says why, so that a bench run that cannot use a floor reports the cause.
fn unavailable(error: impl std::fmt::Display) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, error.to_string()).into_response()
}

struct MissFloor {
    tokens: Tokens,
    pool: PgPool,
}

fn serve_miss(port: u16, database_url: String, secret: &str) -> anyhow::Result<()> {
    let tokens = Tokens::new(secret);
    run(port, async move {
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .test_before_acquire(false)
            .connect(&database_url)
            .await?;
        let floor = Arc::new(MissFloor { tokens, pool });
        Ok(Router::new()
            .route("/api/items/{id}", get(miss))
            .with_state(floor))
    })
}

/// The service's item columns, decoded to the same types.
#[derive(sqlx::FromRow, Serialize)]
#[serde(rename_all = "camelCase")]
struct ItemRow {
    id: Uuid,
    #[serde(rename = "type")]
    kind: String,
    title: String,
    content: String,
    tags: Vec<String>,
    metadata: Json<serde_json::Map<String, serde_json::Value>>,
    source_connector: Option<String>,
    source_id: Option<String>,
    source_url: Option<String>,
    archived: bool,
    favorite: bool,
    created_at: chrono::DateTime<chrono::Utc>,
    updated_at: chrono::DateTime<chrono::Utc>,
    version: i32,
}

async fn miss(
    State(floor): State<Arc<MissFloor>>,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
) -> Response {
    let Some(user) = floor.tokens.user(&headers) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let row = sqlx::query_as::<_, ItemRow>(
        "SELECT id, type AS kind, title, content, tags, metadata, source_connector, source_id, \
         source_url, archived, favorite, created_at, updated_at, version \
         FROM items WHERE id = $1 AND user_id = $2",
    )
    .bind(id)
    .bind(user)
    .fetch_optional(&floor.pool)
    .await;
    match row {
        Ok(Some(row)) => axum::Json(row).into_response(),
        Ok(None) => StatusCode::NOT_FOUND.into_response(),
        Err(e) => unavailable(e),
    }
}
