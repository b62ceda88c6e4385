//! `/api/auth`: register, login, logout, me.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use uuid::Uuid;

use super::idempotency::{run_once, Keyed, Outcome, Reply, Scope};
use super::responses::{AuthErrors, BodyErrors, ServerErrors};
use crate::auth::throttle;
use crate::cache::login_failures;
use crate::db::users;
use crate::http::error::validated;
use crate::http::extract::{AuthUser, ClientIp, VerifiedToken};
use crate::http::extract::{IdempotencyKey, Json};
use crate::http::{ApiError, ApiResult, ErrorBody};
use crate::model::auth::{Credentials, TokenResponse, User};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/auth/register", post(register))
        .route("/auth/login", post(login))
        .route("/auth/logout", post(logout))
        .route("/auth/me", get(me))
}

/// Creates an account. The password is stored as an Argon2id hash.
#[utoipa::path(
    post, path = "/api/auth/register", tag = "auth",
    request_body = Credentials,
    params(IdempotencyKey),
    responses(
        (status = 201, description = "Created", body = User, headers(("Idempotent-Replayed" = String, description = "`true` when this is the stored answer to an earlier request with the same Idempotency-Key"))),
        BodyErrors, ServerErrors,
        (status = 409, description = "Email already registered", body = ErrorBody),
        (status = 422, description = "Invalid email or password (a common password, or the email as password, included)", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all)]
pub async fn register(
    State(state): State<AppState>,
    IdempotencyKey(key): IdempotencyKey,
    Json(credentials): Json<Credentials>,
) -> ApiResult<Outcome> {
    let mut errors = Vec::new();
    credentials.check(&mut errors);
    credentials.check_new_password(&mut errors);
    validated(errors)?;
    let email = credentials.normalized_email();
    // The fingerprint leaves the password out: it is kept for a day and backed up, and any
    // fast derivative of a password could be cracked offline. So the same key with another
    // password replays the first answer (docs/api.md).
    let keyed = Keyed::new(
        key,
        Scope::Registration(&email),
        "register",
        &serde_json::json!({"email": email}),
    )?;
    let hash = state.passwords.hash(credentials.password).await?;
    let db = state.db.clone();
    run_once(&state, keyed, move |tx| {
        Box::pin(async move {
            let user =
                users::insert(&db, tx, &email, &hash).await.map_err(|e| {
                    match ApiError::from(e) {
                        ApiError::Conflict(_) => {
                            ApiError::Conflict("email already registered".into())
                        }
                        other => other,
                    }
                })?;
            tracing::info!(user = %user.id, "user registered");
            Reply::json(StatusCode::CREATED, &user)
        })
    })
    .await
}

/// Exchanges email and password for a token. Writes nothing, so retrying is always safe
/// (an `Idempotency-Key` is accepted and not needed).
#[utoipa::path(
    post, path = "/api/auth/login", tag = "auth",
    request_body = Credentials,
    responses(
        (status = 200, description = "A bearer token", body = TokenResponse),
        BodyErrors, ServerErrors,
        (status = 401, description = "Wrong email or password (a body that breaks the schema's email or password rules is a wrong password too)", body = ErrorBody),
        (status = 429, description = "Too many wrong passwords for this account from this address (an IPv6 client: its /64), or too many bodies that break the rules from it: retry after Retry-After seconds", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds until this address may try this account again"))),
    )
)]
#[tracing::instrument(skip_all)]
pub async fn login(
    State(state): State<AppState>,
    ClientIp(client): ClientIp,
    Json(credentials): Json<Credentials>,
) -> ApiResult<axum::Json<TokenResponse>> {
    let throttle = &state.login_throttle;
    // Register's rules, before anything shared is touched: a body no account could match
    // is refused unhashed, and counted against the client's network alone, never as an
    // entry per account it invents (`auth::throttle`).
    let mut problems = Vec::new();
    credentials.check(&mut problems);
    if !problems.is_empty() {
        throttle
            .refused_early(client)
            .map_err(|wait| throttled(&state, wait))?;
        return Err(wrong_password());
    }
    let email = credentials.normalized_email();
    // What the other replicas saw of this pair; without Redis, this replica's count alone.
    let pair = throttle::shared_pair(&email, client);
    let shared = login_failures::check(&state.cache, &pair).await.ok();
    if let Some(wait) = shared.map(|s| s.wait).filter(|w| !w.is_zero()) {
        return Err(throttled(&state, wait));
    }
    // Reserved before hashing, so concurrent guesses cannot all pass the check; an
    // unknown email counts too, so that both still look alike.
    let attempt = throttle
        .reserve_knowing(&email, client, shared.map(|s| s.failures))
        .await
        .map_err(|wait| throttled(&state, wait))?;
    let legacy = credentials.email_as_stored_before_nfc();
    let user_id = match verified_user(&state, &email, &legacy, credentials.password).await {
        Ok(Some(id)) => id,
        Ok(None) => {
            attempt.failed();
            // A Redis failure is already counted and logged by the cache; the local
            // count holds meanwhile.
            let _ = login_failures::fail(&state.cache, &pair, SHARED_POLICY).await;
            return Err(wrong_password());
        }
        Err(e) => {
            attempt.not_evaluated();
            return Err(e);
        }
    };
    attempt.succeeded();
    let _ = login_failures::clear(&state.cache, &pair).await;
    let issued = state.tokens.issue(user_id).map_err(anyhow::Error::from)?;
    tracing::info!(user = %user_id, "token issued");
    Ok(axum::Json(TokenResponse {
        token: issued.token,
        expires_at: issued.expires_at,
    }))
}

/// The id of the account whose password this is; `None` for a wrong password or an
/// unknown email, which take the same time. An account made before emails were stored in
/// NFC is found under its `legacy` form.
async fn verified_user(
    state: &AppState,
    email: &str,
    legacy: &str,
    password: String,
) -> ApiResult<Option<Uuid>> {
    let mut found = users::by_email(&state.db, email).await?;
    if found.is_none() && legacy != email {
        found = users::by_email(&state.db, legacy).await?;
    }
    let Some(user) = found else {
        state.passwords.verify_dummy(password).await?;
        return Ok(None);
    };
    let right = state.passwords.verify(password, user.password_hash).await?;
    Ok(right.then_some(user.id))
}

/// The shared count's waits: the per-replica throttle's own.
const SHARED_POLICY: login_failures::Policy = login_failures::Policy {
    free_failures: throttle::FREE_FAILURES,
    first_wait: throttle::FIRST_WAIT,
    max_wait: throttle::MAX_WAIT,
    forget_after: throttle::FORGET_AFTER,
};

fn wrong_password() -> ApiError {
    ApiError::Unauthorized("wrong email or password".into())
}

/// Every 429 is counted, the first of a block too. Whole seconds, rounded up: a client
/// that waits as told is let through.
fn throttled(state: &AppState, wait: std::time::Duration) -> ApiError {
    state.metrics.login_throttled.inc();
    ApiError::LoginThrottled(wait.as_secs() + u64::from(wait.subsec_nanos() > 0))
}

/// Revokes the token until it expires. Logging out an already revoked token succeeds too,
/// so a retried logout is safe (an `Idempotency-Key` is accepted and not needed).
#[utoipa::path(
    post, path = "/api/auth/logout", tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Revoked"),
        AuthErrors, ServerErrors,
    )
)]
#[tracing::instrument(skip_all, fields(user = %token.0.sub))]
pub async fn logout(
    State(state): State<AppState>,
    token: VerifiedToken,
) -> ApiResult<impl IntoResponse> {
    state.denylist.revoke(&state.db, &token.0).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The caller's account.
#[utoipa::path(
    get, path = "/api/auth/me", tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 200, body = User),
        AuthErrors, ServerErrors,
    )
)]
#[tracing::instrument(skip_all, fields(user = %user.id))]
pub async fn me(State(state): State<AppState>, user: AuthUser) -> ApiResult<axum::Json<User>> {
    users::by_id(&state.db, user.id)
        .await?
        .map(axum::Json)
        .ok_or_else(|| ApiError::Unauthorized("the token's user no longer exists".into()))
}
