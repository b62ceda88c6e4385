//! `/live`, `/ready`, `/health`, `/health/detailed` and `/startup`.
//!
//! Every handler reads the latest snapshot and the lifecycle phase; none touches a
//! dependency. Field names follow the seed exactly; extra fields only add.

use std::io::Write;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{SecondsFormat, Utc};
use serde_json::{json, Value};

use crate::health::{HealthStatus, Snapshot, Verdict};
use crate::metrics::Metrics;
use crate::state::AppState;

const HEALTH_JSON: &str = "application/health+json";
/// The content type axum's `Json` answers with.
const APPLICATION_JSON: &str = "application/json";

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

/// A JSON answer written straight into its buffer.
///
/// Probes are asked every few seconds by every load balancer and monitor, forever: the
/// general path (a `serde_json::Value` tree, one map and several strings per field, then
/// serialised) cost more than the rest of the request together. These writers produce
/// byte for byte what `json!` produced (the tests compare both), and the checks, which
/// only change once per round, are serialised once per round.
struct JsonOut(Vec<u8>);

impl JsonOut {
    fn new(capacity: usize) -> Self {
        Self(Vec::with_capacity(capacity))
    }

    fn raw(&mut self, text: &str) -> &mut Self {
        self.0.extend_from_slice(text.as_bytes());
        self
    }

    fn string(&mut self, text: &str) -> &mut Self {
        if serde_json::to_writer(&mut self.0, text).is_err() {
            self.0.extend_from_slice(b"\"\"");
        }
        self
    }

    fn strings(&mut self, items: &[String]) -> &mut Self {
        self.0.push(b'[');
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                self.0.push(b',');
            }
            self.string(item);
        }
        self.0.push(b']');
        self
    }

    fn number(&mut self, n: u64) -> &mut Self {
        // Writing into a Vec cannot fail.
        let _ = write!(self.0, "{n}");
        self
    }

    fn into_response(self, code: StatusCode) -> Response {
        (
            code,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(APPLICATION_JSON),
            )],
            self.0,
        )
            .into_response()
    }
}

fn status_text(status: HealthStatus) -> &'static str {
    match status {
        HealthStatus::Healthy => "healthy",
        HealthStatus::Degraded => "degraded",
        HealthStatus::Unhealthy => "unhealthy",
    }
}

fn live_json(instance: &str, timestamp: &str) -> JsonOut {
    let mut out = JsonOut::new(96);
    out.raw("{\"alive\":true,\"instance\":")
        .string(instance)
        .raw(",\"timestamp\":")
        .string(timestamp)
        .raw("}");
    out
}

/// Depends on nothing but the process being able to serve HTTP: a database outage must
/// never make an orchestrator restart replicas.
///
/// Takes only the metrics (for the instance name): the most frequent request of all need
/// not clone the whole state (see the `FromRef` below).
async fn live(State(metrics): State<Arc<Metrics>>) -> Response {
    live_json(&metrics.instance, &now()).into_response(StatusCode::OK)
}

impl axum::extract::FromRef<AppState> for Arc<Metrics> {
    fn from_ref(state: &AppState) -> Self {
        state.metrics.clone()
    }
}

fn ready_json(
    instance: &str,
    timestamp: &str,
    snapshot: &Snapshot,
    verdict: &Verdict,
    age_ms: u64,
) -> JsonOut {
    let mut out = JsonOut::new(192);
    out.raw("{\"ready\":")
        .raw(if verdict.ready() { "true" } else { "false" })
        .raw(",\"instance\":")
        .string(instance)
        .raw(",\"timestamp\":")
        .string(timestamp)
        .raw(",\"reasons\":")
        .strings(&verdict.reasons)
        .raw(",\"checkedAt\":")
        .raw(&snapshot.rendered().checked_at)
        .raw(",\"snapshotAgeMs\":")
        .number(age_ms)
        .raw("}");
    out
}

async fn ready(State(state): State<AppState>) -> Response {
    let (snapshot, verdict) = state.verdict();
    ready_json(
        &state.metrics.instance,
        &now(),
        &snapshot,
        &verdict,
        age_ms(&snapshot),
    )
    .into_response(status_code(verdict.ready()))
}

fn age_ms(snapshot: &Snapshot) -> u64 {
    snapshot.checked_instant.elapsed().as_millis() as u64
}

/// For a Kubernetes startupProbe: 200 once migrations are applied and the first round of
/// checks is done, and from then on, so a later outage is left to the readiness probe.
///
/// While starting, `reasons` says what start-up waits for, as `/ready` does: the schema (a
/// migration, its lock), or a dependency that refuses the connection for good (a
/// certificate, a password).
async fn startup(State(state): State<AppState>) -> Response {
    let started = state.lifecycle.is_started();
    let mut body = json!({
        "started": started,
        "instance": state.metrics.instance,
        "timestamp": now(),
        "phase": state.lifecycle.phase().as_str(),
    });
    if !started {
        body["reasons"] = json!(state.verdict().1.reasons);
    }
    (status_code(started), Json(body)).into_response()
}

/// What a `/health` answer says beyond the snapshot: who answers, when, and the verdict.
struct HealthFacts<'a> {
    instance: &'a str,
    timestamp: &'a str,
    uptime: u64,
    age_ms: u64,
}

impl<'a> HealthFacts<'a> {
    fn of(state: &'a AppState, timestamp: &'a str, snapshot: &Snapshot) -> Self {
        Self {
            instance: &state.metrics.instance,
            timestamp,
            uptime: state.lifecycle.uptime_secs(),
            age_ms: age_ms(snapshot),
        }
    }
}

/// The seed's body, plus the snapshot's age and, when unhealthy, the reasons; as a tree,
/// for `/health/detailed` which adds to it.
fn health_body(facts: &HealthFacts, snapshot: &Snapshot, verdict: &Verdict) -> Value {
    let mut body = json!({
        "status": verdict.status,
        "instance": facts.instance,
        "timestamp": facts.timestamp,
        "checks": snapshot.checks,
        "uptime": facts.uptime,
        "version": env!("CARGO_PKG_VERSION"),
        "checkedAt": snapshot.checked_at.to_rfc3339_opts(SecondsFormat::Millis, true),
        "snapshotAgeMs": facts.age_ms,
    });
    if !verdict.reasons.is_empty() {
        body["reasons"] = json!(verdict.reasons);
    }
    body
}

/// [`health_body`], written straight to bytes with the round's checks serialised once.
fn health_json(facts: &HealthFacts, snapshot: &Snapshot, verdict: &Verdict) -> JsonOut {
    let rendered = snapshot.rendered();
    let mut out = JsonOut::new(rendered.checks.len() + 256);
    out.raw("{\"status\":\"")
        .raw(status_text(verdict.status))
        .raw("\",\"instance\":")
        .string(facts.instance)
        .raw(",\"timestamp\":")
        .string(facts.timestamp)
        .raw(",\"checks\":")
        .raw(&rendered.checks)
        .raw(",\"uptime\":")
        .number(facts.uptime)
        .raw(",\"version\":")
        .string(env!("CARGO_PKG_VERSION"))
        .raw(",\"checkedAt\":")
        .raw(&rendered.checked_at)
        .raw(",\"snapshotAgeMs\":")
        .number(facts.age_ms);
    if !verdict.reasons.is_empty() {
        out.raw(",\"reasons\":").strings(&verdict.reasons);
    }
    out.raw("}");
    out
}

/// The IETF health-check draft (draft-inadarei-api-health-check) rendering.
fn ietf_body(state: &AppState, snapshot: &Snapshot, verdict: &Verdict) -> Value {
    let checks = &snapshot.checks;
    let time = snapshot
        .checked_at
        .to_rfc3339_opts(SecondsFormat::Millis, true);
    let dependency = |check: &crate::health::DependencyCheck, component_type: &str| {
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
    let resource = |value: f64, status: crate::health::CheckStatus| {
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
    let timestamp = now();
    health_json(
        &HealthFacts::of(&state, &timestamp, &snapshot),
        &snapshot,
        &verdict,
    )
    .into_response(code)
}

/// Megabytes as gigabytes, to two decimals.
fn gigabytes(mb: f64) -> f64 {
    (mb / 1024.0 * 100.0).round() / 100.0
}

async fn health_detailed(State(state): State<AppState>) -> Response {
    let (snapshot, verdict) = state.verdict();
    let timestamp = now();
    let mut body = health_body(
        &HealthFacts::of(&state, &timestamp, &snapshot),
        &snapshot,
        &verdict,
    );
    let memory = &snapshot.checks.memory.details;
    let redis_open = u32::from(state.cache.connected());
    body["system"] = json!({
        "hostname": sysinfo::System::host_name(),
        "pid": std::process::id(),
        "cpuCount": snapshot.checks.cpu.details.cpus,
        // The seed's names (its troubleshooting guide reads `.system.freeMemoryGB`), and
        // finer ones beside them.
        "totalMemoryGB": gigabytes(memory.host_total_mb),
        "freeMemoryGB": gigabytes(memory.host_available_mb),
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
    // Beside the seed's fields: which PostgreSQL host is primary, and the standbys' lag.
    body["topology"] = json!({ "postgres": state.db.topology().describe() });
    body["pools"] = json!({
        "database": state.db.stats(),
        // One multiplexed connection, shared, never checked out: open (1) or not yet (0).
        "redis": {
            "size": redis_open,
            "available": redis_open,
            "waiting": 0,
            "max": 1,
        },
    });
    let code = status_code(verdict.status != HealthStatus::Unhealthy);
    (code, Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::health::{
        CheckStatus, Checks, CpuDetails, DependencyCheck, MemoryDetails, ResourceCheck,
    };

    fn snapshot(database: CheckStatus, message: Option<&str>) -> Snapshot {
        Snapshot {
            checks: Checks {
                database: DependencyCheck {
                    status: database,
                    latency: message.is_none().then_some(0.8125),
                    message: message.map(str::to_owned),
                },
                redis: DependencyCheck {
                    status: CheckStatus::Ok,
                    latency: Some(0.1),
                    message: None,
                },
                memory: ResourceCheck {
                    status: CheckStatus::Ok,
                    details: MemoryDetails {
                        rss_mb: 14.2,
                        limit_mb: 1024.0,
                        limit_source: "cgroup",
                        usage_percent: 1.386_718_75,
                        host_total_mb: 24105.6,
                        host_available_mb: f64::NAN,
                    },
                    message: None,
                },
                cpu: ResourceCheck {
                    status: CheckStatus::Degraded,
                    details: CpuDetails {
                        load_average: [0.2, 1e-7, 31.0],
                        normalized_load: 1.0 / 3.0,
                        cpus: 2,
                    },
                    message: Some("busy".to_owned()),
                },
            },
            checked_at: Utc::now(),
            checked_instant: Instant::now(),
            round: 3,
            rendered: Default::default(),
        }
    }

    fn verdicts() -> Vec<Verdict> {
        vec![
            Verdict {
                status: HealthStatus::Healthy,
                reasons: vec![],
            },
            Verdict {
                status: HealthStatus::Degraded,
                reasons: vec![],
            },
            Verdict {
                status: HealthStatus::Unhealthy,
                reasons: vec![
                    "draining".to_owned(),
                    "database: \"quoted\" \\ \u{e9}t\u{e9}\n\u{1}".to_owned(),
                ],
            },
        ]
    }

    /// The direct writers must answer exactly what the `json!` trees answered.
    #[test]
    fn direct_json_is_byte_for_byte_the_tree_json() {
        let instance = "api-\"1\"\u{e9}";
        let timestamp = now();
        let live_tree = json!({"alive": true, "instance": instance, "timestamp": timestamp});
        assert_eq!(
            live_json(instance, &timestamp).0,
            serde_json::to_vec(&live_tree).unwrap()
        );
        for message in [None, Some("no answer within 2000 ms: \"x\"")] {
            let snapshot = snapshot(
                if message.is_some() {
                    CheckStatus::Failed
                } else {
                    CheckStatus::Ok
                },
                message,
            );
            for verdict in verdicts() {
                let facts = HealthFacts {
                    instance,
                    timestamp: &timestamp,
                    uptime: 3600,
                    age_ms: 1204,
                };
                let tree = health_body(&facts, &snapshot, &verdict);
                assert_eq!(
                    String::from_utf8(health_json(&facts, &snapshot, &verdict).0).unwrap(),
                    serde_json::to_string(&tree).unwrap()
                );
                let ready_tree = json!({
                    "ready": verdict.ready(),
                    "instance": instance,
                    "timestamp": timestamp,
                    "reasons": verdict.reasons,
                    "checkedAt": snapshot.checked_at.to_rfc3339_opts(SecondsFormat::Millis, true),
                    "snapshotAgeMs": 1204u64,
                });
                assert_eq!(
                    String::from_utf8(
                        ready_json(instance, &timestamp, &snapshot, &verdict, 1204).0
                    )
                    .unwrap(),
                    serde_json::to_string(&ready_tree).unwrap()
                );
            }
        }
    }
}
