//! The command line: `serve` (default), `migrate`, `healthcheck`, `cache-bump`. Everything else lives in
//! the library.

use std::process::ExitCode;
use std::time::Duration;

use cartae_database_api::cache::stamped::bump_epoch;
use cartae_database_api::cache::Cache;
use cartae_database_api::config::{api_port_from_env, Settings};
use cartae_database_api::db::Database;
use cartae_database_api::lifecycle::{install_signal_handlers, StartupStep};
use cartae_database_api::metrics::Metrics;
use cartae_database_api::startup::{Application, Stopped};
use cartae_database_api::{http, telemetry};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cartae-database-api", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the API (the default).
    Serve,
    /// Apply the database migrations, then exit.
    Migrate,
    /// Exit 0 if the local replica's /ready answers 200, 1 otherwise (for Docker HEALTHCHECK).
    Healthcheck,
    /// Make every cached entry stale on every replica (after restoring the database to an
    /// earlier time), then exit.
    CacheBump,
}

/// Exit code for a configuration error (EX_CONFIG in sysexits.h).
const EXIT_CONFIG: u8 = 78;

/// Argon2 allocates 19 MiB per password hash. glibc raises its mmap threshold after the
/// first such block is freed, so later ones come from the heap and stay resident: two
/// sign-ups took a replica from 10 to 70 MiB. A fixed threshold keeps large blocks in
/// mmap, handed back to the OS when freed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn return_large_allocations_to_the_os() {
    // SAFETY: mallopt only changes an allocator tunable; it runs once, before any thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

fn main() -> ExitCode {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    return_large_allocations_to_the_os();
    let cli = Cli::parse();
    if let Err(e) = dotenvy::dotenv() {
        if !e.not_found() {
            eprintln!("cartae-database-api: invalid configuration: .env: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cartae-database-api: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Healthcheck => runtime.block_on(healthcheck()),
        Command::Migrate => with_settings(|s| runtime.block_on(migrate(s))),
        Command::CacheBump => with_settings(|s| runtime.block_on(cache_bump(s))),
        Command::Serve => with_settings(|s| runtime.block_on(serve(s))),
    }
}

fn with_settings(run: impl FnOnce(Settings) -> ExitCode) -> ExitCode {
    match Settings::from_env() {
        Ok(settings) => {
            telemetry::init(&settings.log_level, settings.log_format);
            let libpq = &settings.database.libpq_variables_set;
            if !libpq.is_empty() {
                tracing::warn!(
                    variables = libpq.join(","),
                    "libpq variables set in the environment: PostgreSQL connections use them wherever DATABASE_URL or POSTGRES_* leave a value unset"
                );
            }
            run(settings)
        }
        Err(e) => {
            eprintln!("cartae-database-api: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

async fn serve(settings: Settings) -> ExitCode {
    // Before binding: a SIGTERM during start-up must drain, not kill.
    let signals = match install_signal_handlers() {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("cartae-database-api: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let app = match Application::build(settings).await {
        Ok(app) => app,
        Err(e) => {
            eprintln!("cartae-database-api: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        port = app.port(),
        metrics_port = app.metrics_port(),
        "listening"
    );
    match app.run_until_stopped(signals).await {
        Ok(Stopped::Gracefully) => ExitCode::SUCCESS,
        // A second signal: exit now, skipping destructors that might wait on I/O.
        Ok(Stopped::Forced) => std::process::exit(130),
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "server failed");
            ExitCode::FAILURE
        }
    }
}

async fn migrate(settings: Settings) -> ExitCode {
    let metrics = std::sync::Arc::new(Metrics::new(&settings.instance_id));
    let db = Database::connect_lazy(&settings.database, settings.health.check_timeout, metrics);
    // Each step once, not once per poll of the lock.
    let last = std::cell::Cell::new(None);
    let report = |step: StartupStep| {
        if last.replace(Some(step)) != Some(step) {
            tracing::info!(step = step.as_str(), "migration step");
        }
    };
    match db.migrate(settings.migrations.lock_timeout, report).await {
        Ok(()) => {
            tracing::info!("migrations applied");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cartae-database-api: migrations failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Long enough for a Redis reached through Sentinel or TLS; an operator waits for it.
const CACHE_BUMP_TIMEOUT: Duration = Duration::from_secs(5);

async fn cache_bump(settings: Settings) -> ExitCode {
    let metrics = std::sync::Arc::new(Metrics::new(&settings.instance_id));
    let cache = match Cache::new(&settings.redis, &settings.cache, metrics) {
        Ok(cache) => cache,
        Err(e) => {
            eprintln!("cartae-database-api: cache-bump: {e:#}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match bump_epoch(&cache, CACHE_BUMP_TIMEOUT).await {
        Ok(()) => {
            tracing::info!("cache epoch bumped: every cached entry is stale");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cartae-database-api: cache-bump failed (run it again: a second bump is harmless): {e}");
            ExitCode::FAILURE
        }
    }
}

async fn healthcheck() -> ExitCode {
    let port = match api_port_from_env() {
        Ok(port) => port,
        Err(e) => {
            eprintln!("cartae-database-api: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match http::ready_client::is_ready(port, Duration::from_secs(3)).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("not ready");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("not ready: {e:#}");
            ExitCode::FAILURE
        }
    }
}
