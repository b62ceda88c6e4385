//! cartae-database-api: a database API made to run as identical replicas behind any load
//! balancer.
//!
//! Layout:
//! - [`config`]: typed settings from the environment, validated at start.
//! - [`lifecycle`]: phases (starting, ready, draining, stopping) and signal handling.
//! - [`startup`]: `Application::build` binds the ports; `run_until_stopped` serves and drains.
//! - [`http`]: everything HTTP: the router and middleware stack, the data API (one module
//!   per resource under [`http::api`], the OpenAPI document, idempotent POSTs), the probe
//!   endpoints, the metrics port, the extractors (`AuthUser` among them) and the one error
//!   type that maps domain errors to status codes.
//! - [`state`]: the `AppState` every handler receives: handles only.
//! - [`health`]: background checks, the snapshot, and the verdict probes answer with.
//! - [`auth`]: Argon2 passwords, JWTs, the denylist.
//! - [`db`], [`cache`]: PostgreSQL and Redis access.
//! - [`metrics`]: the Prometheus registry and the request-counting layer.
//! - [`model`]: request and response types, and the rules input must follow.
//! - [`error`]: the domain's errors (`FieldError`); no HTTP.
//! - [`bulkhead`]: bounded concurrency with a short queue, for overload control.
//!
//! Imports only point down this list (`startup` at the top, then `http`, `state`, the
//! domain modules, and `model`, `error`, `config`, `lifecycle`, `bulkhead` at the bottom);
//! `infra/ci/check-layers.py` fails CI otherwise.

pub mod auth;
pub mod bulkhead;
pub mod cache;
pub mod config;
pub mod db;
pub mod error;
pub mod health;
pub mod http;
pub mod lifecycle;
pub mod metrics;
pub mod model;
pub mod startup;
pub mod state;
pub mod telemetry;
pub mod user_writes;
