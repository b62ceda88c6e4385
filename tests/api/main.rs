//! One test binary: every module shares `helpers` and `support`.

mod helpers;
mod support;

mod config;
mod health;
mod lifecycle;
mod metrics;
mod migrations;
mod outages;
mod probes;
