//! `/live`, `/ready`, `/health`, `/health/detailed` and `/startup`.
//!
//! Every handler reads the latest snapshot and the lifecycle phase; none touches a
//! dependency. Field names follow the seed exactly; extra fields only add.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{SecondsFormat, Utc};
use serde_json::{json, Value};

use super::{HealthStatus, Snapshot, Verdict};
use crate::state::AppState;

const HEALTH_JSON: &str = "application/health+json";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/live", get(live))
        .route("/ready", get(ready))
        .route("/health", get(health))
        .route("/health/detailed", get(health_detailed))
        .route("/startup", get(startup))
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn status_code(ok: bool) -> StatusCode {
    if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// Depends on nothing but the process being able to serve HTTP: a database outage must
/// never make an orchestrator restart replicas.
async fn live(State(state): State<AppState>) -> Json<Value> {
    Json(json!({
        "alive": true,
        "instance": state.metrics.instance,
        "timestamp": now(),
    }))
}

async fn ready(State(state): State<AppState>) -> Response {
    let (snapshot, verdict) = state.verdict();
    let body = json!({
        "ready": verdict.ready(),
        "instance": state.metrics.instance,
        "timestamp": now(),
        "reasons": verdict.reasons,
        "checkedAt": snapshot.checked_at.to_rfc3339_opts(SecondsFormat::Millis, true),
        "snapshotAgeMs": snapshot.checked_instant.elapsed().as_millis() as u64,
    });
    (status_code(verdict.ready()), Json(body)).into_response()
}

/// For a Kubernetes startupProbe: 200 once migrations are applied and the first round of
/// checks is done, and from then on, so a later outage is left to the readiness probe.
async fn startup(State(state): State<AppState>) -> Response {
    let started = state.lifecycle.is_started();
    let body = json!({
        "started": started,
        "instance": state.metrics.instance,
        "timestamp": now(),
        "phase": state.lifecycle.phase().as_str(),
    });
    (status_code(started), Json(body)).into_response()
}

/// The seed's body, plus the snapshot's age and, when unhealthy, the reasons.
fn health_body(state: &AppState, snapshot: &Snapshot, verdict: &Verdict) -> Value {
    let mut body = json!({
        "status": verdict.status,
        "instance": state.metrics.instance,
        "timestamp": now(),
        "checks": snapshot.checks,
        "uptime": state.lifecycle.uptime_secs(),
        "version": env!("CARGO_PKG_VERSION"),
        "checkedAt": snapshot.checked_at.to_rfc3339_opts(SecondsFormat::Millis, true),
        "snapshotAgeMs": snapshot.checked_instant.elapsed().as_millis() as u64,
    });
    if !verdict.reasons.is_empty() {
        body["reasons"] = json!(verdict.reasons);
    }
    body
}

/// The IETF health-check draft (draft-inadarei-api-health-check) rendering.
fn ietf_body(state: &AppState, snapshot: &Snapshot, verdict: &Verdict) -> Value {
    let checks = &snapshot.checks;
    let time = snapshot
        .checked_at
        .to_rfc3339_opts(SecondsFormat::Millis, true);
    let dependency = |check: &super::DependencyCheck, component_type: &str| {
        let mut entry = json!({
            "componentType": component_type,
            "observedValue": check.latency,
            "observedUnit": "ms",
            "status": check.status.ietf(),
            "time": time,
        });
        if let Some(message) = &check.message {
            entry["output"] = json!(message);
        }
        json!([entry])
    };
    let resource = |value: f64, status: super::CheckStatus| {
        json!([{
            "componentType": "system",
            "observedValue": value,
            "observedUnit": "percent",
            "status": status.ietf(),
            "time": time,
        }])
    };
    let mut body = json!({
        "status": verdict.status.ietf(),
        "version": env!("CARGO_PKG_VERSION").split('.').next().unwrap_or("0"),
        "releaseId": env!("CARGO_PKG_VERSION"),
        "serviceId": state.metrics.instance,
        "description": "cartae-database-api",
        "checks": {
            "postgres:responseTime": dependency(&checks.database, "datastore"),
            "redis:responseTime": dependency(&checks.redis, "datastore"),
            "memory:utilization": resource(checks.memory.details.usage_percent, checks.memory.status),
            "cpu:utilization": resource(checks.cpu.details.normalized_load, checks.cpu.status),
            "uptime": [{
                "componentType": "system",
                "observedValue": state.lifecycle.uptime_secs(),
                "observedUnit": "s",
                "status": "pass",
                "time": time,
            }],
        },
    });
    if !verdict.reasons.is_empty() {
        body["output"] = json!(verdict.reasons.join("; "));
    }
    body
}

fn wants_ietf(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains(HEALTH_JSON))
}

/// 200 for healthy and degraded (a slow replica still serves), 503 for unhealthy.
async fn health(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let (snapshot, verdict) = state.verdict();
    let code = status_code(verdict.status != HealthStatus::Unhealthy);
    if wants_ietf(&headers) {
        let mut response = (code, Json(ietf_body(&state, &snapshot, &verdict))).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(HEALTH_JSON));
        return response;
    }
    (code, Json(health_body(&state, &snapshot, &verdict))).into_response()
}

async fn health_detailed(State(state): State<AppState>) -> Response {
    let (snapshot, verdict) = state.verdict();
    let mut body = health_body(&state, &snapshot, &verdict);
    let memory = &snapshot.checks.memory.details;
    let redis = state.cache.status();
    body["system"] = json!({
        "hostname": sysinfo::System::host_name(),
        "pid": std::process::id(),
        "cpuCount": snapshot.checks.cpu.details.cpus,
        "totalMemoryMB": memory.host_total_mb,
        "freeMemoryMB": memory.host_available_mb,
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
        "phase": state.lifecycle.phase().as_str(),
    });
    body["versions"] = json!({
        "service": env!("CARGO_PKG_VERSION"),
        "postgres": state.db.server_version(),
    });
    body["pools"] = json!({
        "database": state.db.stats(),
        "redis": {
            "size": redis.size,
            "available": redis.available,
            "waiting": redis.waiting,
            "max": redis.max_size,
        },
    });
    let code = status_code(verdict.status != HealthStatus::Unhealthy);
    (code, Json(body)).into_response()
}
