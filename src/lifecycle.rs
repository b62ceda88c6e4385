//! The lifecycle of one replica: starting, ready, draining, stopping.
//!
//! The phase is what lets probes tell the truth. `/live` ignores it; `/ready` and `/health`
//! answer 503 while starting (migrations not applied or first round of checks not done) and
//! from the first SIGTERM on, while the API keeps serving for the drain delay so that the
//! load balancer notices before the port closes. That is what makes a rolling update lose
//! zero requests.

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use prometheus::{IntGauge, IntGaugeVec};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Port bound, migrations or the first round of checks not done yet.
    Starting = 0,
    /// Start-up complete; readiness now follows the dependency checks.
    Ready = 1,
    /// A shutdown signal arrived: probes say 503, every other route still serves.
    Draining = 2,
    /// No longer accepting; finishing in-flight requests, then closing pools.
    Stopping = 3,
}

impl Phase {
    pub const ALL: [Phase; 4] = [
        Phase::Starting,
        Phase::Ready,
        Phase::Draining,
        Phase::Stopping,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Ready => "ready",
            Phase::Draining => "draining",
            Phase::Stopping => "stopping",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            0 => Phase::Starting,
            1 => Phase::Ready,
            2 => Phase::Draining,
            _ => Phase::Stopping,
        }
    }
}

/// What a starting replica is waiting for, when it is the schema: the reason its probes
/// give beside `starting`, so that a replica stuck behind a long migration says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum StartupStep {
    /// Another session (a replica or the `migrate` step) holds the migration lock.
    WaitingForMigrationLock = 1,
    /// This replica holds the lock and applies the migrations.
    Migrating = 2,
    /// Migrations are the release's own step (`MIGRATE_ON_START=false`) and some of this
    /// binary's have not been applied yet.
    WaitingForMigrations = 3,
}

impl StartupStep {
    pub fn as_str(self) -> &'static str {
        match self {
            StartupStep::WaitingForMigrationLock => "waiting for migration lock",
            StartupStep::Migrating => "migrating",
            StartupStep::WaitingForMigrations => "waiting for migrations",
        }
    }

    fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(StartupStep::WaitingForMigrationLock),
            2 => Some(StartupStep::Migrating),
            3 => Some(StartupStep::WaitingForMigrations),
            _ => None,
        }
    }
}

/// Shared, lock-free view of the phase, plus the start time for `uptime`.
pub struct Lifecycle {
    phase: AtomicU8,
    /// A [`StartupStep`], or 0 for none.
    step: AtomicU8,
    started_at: Instant,
    /// `lifecycle_phase{phase}` of this instance, one gauge per phase in [`Phase::ALL`]'s
    /// order. Handed in as plain gauges so that this bottom layer knows no metrics module.
    phase_gauges: Vec<IntGauge>,
    /// Writes that run to the end whatever happens to their request (see
    /// `http::api::items`): a stopping replica waits for them before closing its pools,
    /// or a write committed after its request's deadline would lose its cache invalidation.
    pub writes: TaskTracker,
}

impl Lifecycle {
    pub fn new(phase_gauge: &IntGaugeVec, instance: &str) -> Self {
        let phase_gauges = Phase::ALL
            .iter()
            .map(|phase| phase_gauge.with_label_values(&[instance, phase.as_str()]))
            .collect();
        let lifecycle = Self {
            phase: AtomicU8::new(Phase::Starting as u8),
            step: AtomicU8::new(0),
            started_at: Instant::now(),
            phase_gauges,
            writes: TaskTracker::new(),
        };
        lifecycle.publish(Phase::Starting);
        lifecycle
    }

    /// Waits up to `within` for the writes still running; false if some were left.
    pub async fn finish_writes(&self, within: Duration) -> bool {
        self.writes.close();
        tokio::time::timeout(within, self.writes.wait())
            .await
            .is_ok()
    }

    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Acquire))
    }

    /// Moves forward only: a late "start-up complete" must never undo a drain.
    pub fn advance(&self, to: Phase) -> bool {
        let moved = self
            .phase
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                (cur < to as u8).then_some(to as u8)
            })
            .is_ok();
        if moved {
            tracing::info!(phase = to.as_str(), "lifecycle phase changed");
            self.publish(to);
        }
        moved
    }

    /// What start-up waits for now; `None` once the schema is in place.
    pub fn step(&self) -> Option<StartupStep> {
        StartupStep::from_u8(self.step.load(Ordering::Acquire))
    }

    pub fn set_step(&self, step: Option<StartupStep>) {
        self.step
            .store(step.map_or(0, |s| s as u8), Ordering::Release);
    }

    /// The start-up step while starting, as a probe's reason.
    pub fn starting_reason(&self) -> Option<&'static str> {
        (self.phase() == Phase::Starting)
            .then(|| self.step())
            .flatten()
            .map(StartupStep::as_str)
    }

    pub fn is_started(&self) -> bool {
        self.phase() != Phase::Starting
    }

    pub fn uptime_secs(&self) -> u64 {
        self.started_at.elapsed().as_secs()
    }

    fn publish(&self, current: Phase) {
        for (phase, gauge) in Phase::ALL.iter().zip(&self.phase_gauges) {
            gauge.set(i64::from(*phase == current));
        }
    }
}

/// Why the process was asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    Terminate,
    Interrupt,
}

/// Installs the SIGTERM and SIGINT handlers and forwards each signal into a channel.
///
/// Called before any port is bound: a signal that arrives while the service starts must
/// start a drain, not kill the process with the default disposition. The receiver sees
/// every signal, so the run loop can tell the first (drain) from the second (exit now).
pub fn install_signal_handlers() -> std::io::Result<mpsc::UnboundedReceiver<StopSignal>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let received = tokio::select! {
                Some(()) = term.recv() => StopSignal::Terminate,
                Some(()) = int.recv() => StopSignal::Interrupt,
                else => break,
            };
            if tx.send(received).is_err() {
                break;
            }
        }
    });
    Ok(rx)
}

/// A ticker for a background loop: first tick at once, then every `period`, and never a
/// burst of catch-up ticks after a stall.
pub fn ticker(period: std::time::Duration) -> tokio::time::Interval {
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker
}

/// Waits for the next tick; false once `shutdown` is cancelled, which is checked first, so
/// a loop cut short by a signal does no more work on its way out.
pub async fn next_tick(
    ticker: &mut tokio::time::Interval,
    shutdown: &tokio_util::sync::CancellationToken,
) -> bool {
    tokio::select! {
        biased;
        _ = shutdown.cancelled() => false,
        _ = ticker.tick() => true,
    }
}
