//! Building and running one replica: bind, start the background tasks, serve, drain, stop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::jwt::TokenKeys;
use crate::auth::keys::cursor_keys;
use crate::auth::password::Passwords;
use crate::auth::revocation::Denylist;
use crate::bulkhead::Bulkhead;
use crate::cache::Cache;
use crate::config::Settings;
use crate::db::{Database, MigrationError};
use crate::health::Monitor;
use crate::http::serve_metrics;
use crate::lifecycle::{Lifecycle, Phase, StartupStep, StopSignal};
use crate::metrics::Metrics;
use crate::state::AppState;

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Drained, finished in-flight requests, closed the pools.
    Gracefully,
    /// A second signal arrived: the caller should exit at once.
    Forced,
}

/// A bound, not yet serving, replica.
pub struct Application {
    api_listener: TcpListener,
    metrics_listener: TcpListener,
    state: AppState,
    monitor: Monitor,
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot bind the {what} port on {addr}"))
}

impl Application {
    /// Binds both ports and builds the shared state. Pools connect lazily, so this succeeds
    /// while PostgreSQL or Redis are still down; the replica then reports `starting`.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let api_listener = bind(SocketAddr::new(settings.host, settings.port), "API").await?;
        let metrics_listener = bind(
            SocketAddr::new(settings.host, settings.metrics_port),
            "metrics",
        )
        .await?;
        let metrics = Arc::new(Metrics::new(&settings.instance_id));
        let db = Database::connect_lazy(
            &settings.database,
            settings.health.check_timeout,
            metrics.clone(),
        );
        let cache = Cache::new(&settings.redis, &settings.cache, metrics.clone())?;
        let (monitor, health) = Monitor::new(
            db.clone(),
            cache.clone(),
            metrics.clone(),
            settings.health.clone(),
        );
        let state = AppState {
            lifecycle: Arc::new(Lifecycle::new(&metrics.lifecycle_phase, &metrics.instance)),
            tokens: Arc::new(TokenKeys::new(&settings.auth)),
            passwords: Arc::new(Passwords::new(&settings.auth.password, metrics.clone())?),
            denylist: Denylist::new(),
            login_throttle: Arc::default(),
            admission: Arc::new(Bulkhead::new(
                settings.overload.max_in_flight,
                settings.overload.max_queued,
                settings.overload.queue_timeout,
            )),
            user_writes: Arc::new(crate::user_writes::UserWrites::new(
                settings.overload.max_writes_per_user,
            )),
            cursor_keys: Arc::new(cursor_keys(&settings.auth).context("deriving the cursor keys")?),
            settings: Arc::new(settings),
            db,
            cache,
            metrics,
            health,
        };
        Ok(Self {
            api_listener,
            metrics_listener,
            state,
            monitor,
        })
    }

    pub fn port(&self) -> u16 {
        self.api_listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or(0)
    }

    pub fn metrics_port(&self) -> u16 {
        self.metrics_listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or(0)
    }

    pub fn state(&self) -> AppState {
        self.state.clone()
    }

    /// Serves until a stop signal arrives, then drains and stops.
    ///
    /// First signal: phase `draining` (probes 503) while every route keeps serving for the
    /// drain delay; then stop accepting, finish in-flight requests up to the shutdown
    /// timeout, close the pools. A second signal at any point returns [`Stopped::Forced`].
    pub async fn run_until_stopped(
        self,
        mut signals: UnboundedReceiver<StopSignal>,
    ) -> anyhow::Result<Stopped> {
        let Self {
            api_listener,
            metrics_listener,
            state,
            monitor,
        } = self;
        let shutdown = CancellationToken::new();
        let metrics_shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        tasks.spawn(monitor.run(shutdown.clone()));
        tasks.spawn(crate::cache::trust::repair_periodically(
            state.cache.clone(),
            shutdown.clone(),
        ));
        let (start_up_failed, mut failed) = tokio::sync::oneshot::channel();
        tasks.spawn({
            let (state, shutdown) = (state.clone(), shutdown.clone());
            async move {
                if let Err(e) = start_up(state.clone(), shutdown.clone()).await {
                    let _ = start_up_failed.send(e);
                    return;
                }
                let denylist = state
                    .denylist
                    .clone()
                    .follow(state.db.clone(), shutdown.clone());
                tokio::join!(denylist, purge_periodically(state, shutdown));
            }
        });
        let mut api = tokio::spawn({
            let app = crate::http::app(state.clone());
            let stop = shutdown.clone();
            let state = state.clone();
            async move {
                let settings = &state.settings.overload;
                crate::http::serve_api(
                    api_listener,
                    app,
                    settings,
                    &state.metrics,
                    stop.cancelled(),
                )
                .await
            }
        });
        let metrics = tokio::spawn(serve_metrics(
            metrics_listener,
            state.clone(),
            metrics_shutdown.clone().cancelled_owned(),
        ));

        let start_up_error = tokio::select! {
            Some(signal) = signals.recv() => {
                tracing::info!(?signal, "stop signal received");
                None
            }
            Ok(error) = &mut failed => Some(error),
            served = &mut api => {
                served.context("API server task")?;
                anyhow::bail!("API server stopped on its own");
            }
        };

        let lifecycle = &state.lifecycle;
        let settings = &state.settings.lifecycle;
        // Read before draining: a replica that never became ready was never in any
        // balancer's rotation, so there is nobody to wait for.
        let was_ready = lifecycle.is_started();
        lifecycle.advance(Phase::Draining);
        if was_ready {
            tracing::info!(
                drain_ms = settings.drain_delay.as_millis() as u64,
                "draining: probes answer 503, routes still serve"
            );
            tokio::select! {
                _ = tokio::time::sleep(settings.drain_delay) => {}
                Some(_) = signals.recv() => return Ok(forced()),
            }
        } else {
            tracing::info!("never ready, so never in rotation: stopping without a drain");
        }

        lifecycle.advance(Phase::Stopping);
        shutdown.cancel();
        tokio::select! {
            finished = tokio::time::timeout(settings.shutdown_timeout, &mut api) => match finished {
                Ok(served) => served.context("API server task")?,
                Err(_) => {
                    tracing::warn!(timeout_ms = settings.shutdown_timeout.as_millis() as u64, "in-flight requests still running at the shutdown timeout");
                    api.abort();
                }
            },
            Some(_) = signals.recv() => return Ok(forced()),
        }

        tasks.close();
        if tokio::time::timeout(Duration::from_secs(5), tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("background tasks did not stop in time");
        }
        if !lifecycle.finish_writes(Duration::from_secs(5)).await {
            tracing::warn!("writes cut by the deadline still running at shutdown");
        }
        metrics_shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), metrics).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), state.db.close()).await;
        state.cache.close();
        tracing::info!("stopped");
        match start_up_error {
            Some(error) => Err(error),
            None => Ok(Stopped::Gracefully),
        }
    }
}

fn forced() -> Stopped {
    tracing::warn!("second stop signal: exiting now");
    Stopped::Forced
}

/// How often expired idempotency keys and revocations are purged. Every replica purges;
/// the deletes are idempotent, and a few cheap indexed statements per interval cost little.
const PURGE_INTERVAL: Duration = Duration::from_secs(600);

/// Purges once start-up is complete (the tables exist), then every [`PURGE_INTERVAL`]: a
/// replica replaced more often than that (frequent releases) still purges.
async fn purge_periodically(state: AppState, shutdown: CancellationToken) {
    let mut ticker = crate::lifecycle::ticker(PURGE_INTERVAL);
    // A start-up cut short by a signal does not purge on its way out (see `next_tick`).
    while crate::lifecycle::next_tick(&mut ticker, &shutdown).await {
        match crate::db::retention::purge(&state.db, state.settings.idempotency_key_ttl).await {
            Ok(purged) => tracing::debug!(?purged, "expired rows purged"),
            Err(e) => {
                tracing::warn!(error = %e, "purge of expired rows failed; retried next interval")
            }
        }
    }
}

/// Puts the schema in place, then waits for a fresh round of checks before declaring
/// start-up complete. Every step gives way to a shutdown: a replica that never became
/// ready has nothing to finish. An error is fatal: the process must exit.
async fn start_up(state: AppState, shutdown: CancellationToken) -> anyhow::Result<()> {
    let steps = async {
        prepare_schema(&state).await?;
        state.db.load_server_version().await;
        check_pool_budget(&state).await;
        state.health.refresh().await;
        anyhow::Ok(())
    };
    tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        done = steps => done?,
    }
    if state.lifecycle.advance(Phase::Ready) {
        tracing::info!("start-up complete");
    }
    Ok(())
}

/// Warns when every replica's connections together may not fit in PostgreSQL's; a failure
/// to read the server's limits only skips the check.
async fn check_pool_budget(state: &AppState) {
    let settings = &state.settings.database;
    match state
        .db
        .pool_budget(settings.pool_max, settings.replicas_max)
        .await
    {
        Ok(budget) if budget.fits() => tracing::info!(%budget, "pool budget fits"),
        Ok(budget) => tracing::warn!(
            %budget,
            pool_max_that_fits = budget.pool_max_that_fits(),
            "pool budget exceeds PostgreSQL's connections: lower POSTGRES_POOL_MAX, REPLICAS_MAX \
             or the replica count, or raise max_connections"
        ),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read PostgreSQL's connection limits: pool budget not checked")
        }
    }
}

/// Migrates (`MIGRATE_ON_START`) or waits for the release's migration step, retrying while
/// PostgreSQL is unreachable; then logs, once, the migrations a newer release applied.
async fn prepare_schema(state: &AppState) -> anyhow::Result<()> {
    let settings = &state.settings.migrations;
    let mut backoff = Backoff::default();
    if settings.on_start {
        let report = |step| state.lifecycle.set_step(Some(step));
        while let Err(e) = state.db.migrate(settings.lock_timeout, report).await {
            if !e.is_transient() {
                // Display only: sqlx's message already includes its source.
                anyhow::bail!("migrations failed: {e}");
            }
            // A permanent connection error (a certificate, a password) is logged at ERROR
            // and counted; retrying stays useful, since the operator may fix the server.
            if !matches!(&e, MigrationError::Unreachable(cause) if state.db.record_if_permanent(cause))
            {
                tracing::warn!(error = %e, "migrations not applied yet");
            }
            // Neither waiting for the lock nor migrating any more: not a reason to show.
            state.lifecycle.set_step(None);
            backoff.wait().await;
        }
    }
    let versions = loop {
        match state.db.schema_versions().await {
            Ok(versions) if versions.pending.is_empty() => break versions,
            Ok(versions) => {
                state
                    .lifecycle
                    .set_step(Some(StartupStep::WaitingForMigrations));
                tracing::info!(pending = ?versions.pending, "waiting for the migration step");
            }
            Err(e) if state.db.record_if_permanent(&e) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read the schema's migrations yet"),
        }
        backoff.wait().await;
    };
    state.lifecycle.set_step(None);
    if !versions.unknown.is_empty() {
        tracing::warn!(
            unknown = ?versions.unknown,
            "the schema has migrations this release does not know, from a newer release; ignoring them"
        );
    }
    Ok(())
}

/// Exponential, from 250 ms up to 5 s.
struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Self(Duration::from_millis(250))
    }
}

impl Backoff {
    async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
    }
}
