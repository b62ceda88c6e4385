//! Structured logs: JSON in production, human-readable when asked.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber once. `LOG_LEVEL` takes a level (`info`) or a full filter
/// (`info,sqlx=warn`); sqlx's per-statement logs are kept at warn unless asked for.
pub fn init(level: &str, format: LogFormat) {
    let filter = if level.contains('=') {
        EnvFilter::new(level)
    } else {
        EnvFilter::new(format!("{level},sqlx=warn,tower_http=warn"))
    };
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .try_init(),
        LogFormat::Pretty => registry.with(tracing_subscriber::fmt::layer()).try_init(),
    };
    // A second initialisation (tests) keeps the first subscriber.
    let _ = result;
}
