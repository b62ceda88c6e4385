//! cartae-database-api: a database API made to run as identical replicas behind any load
//! balancer.
//!
//! Layout:
//! - [`config`]: typed settings from the environment, validated at start.
//! - [`lifecycle`]: phases (starting, ready, draining, stopping) and signal handling.
//! - [`startup`]: `Application::build` binds the ports; `run_until_stopped` serves and drains.
//! - [`health`]: background checks, the snapshot, and the probe endpoints.
//! - [`metrics`]: the Prometheus registry, the request middleware, the metrics port.
//! - [`api`]: the router, the middleware stack and the one error type; one module per
//!   resource (auth, items, search), the OpenAPI document, and idempotent POSTs.
//! - [`auth`]: Argon2 passwords, JWTs, the denylist, the `AuthUser` extractor.
//! - [`model`]: request and response types, and the rules input must follow.
//! - [`db`], [`cache`]: PostgreSQL and Redis access.
//! - [`state`]: the `AppState` every handler receives.

pub mod api;
pub mod auth;
pub mod cache;
pub mod config;
pub mod db;
pub mod health;
pub mod lifecycle;
pub mod metrics;
pub mod model;
pub mod startup;
pub mod state;
pub mod telemetry;
