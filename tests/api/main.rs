//! One test binary: every module shares `helpers` and `support`.

mod helpers;
mod support;

mod auth;
mod cache;
mod cache_bump;
mod config;
mod contract;
mod documented_data;
mod documented_probes;
mod documented_process;
mod fuzz;
mod health;
mod items;
mod lifecycle;
mod lost_answer;
mod metrics;
mod migrations;
mod openapi;
mod outages;
mod overload;
mod pagination;
mod pool_budget;
mod primary;
mod probes;
mod retention;
mod search;
mod sentinel;
mod shared_throttle;
mod slow_clients;
mod tls;
mod upserts;
