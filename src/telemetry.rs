//! Logging through `tracing`: human-readable or JSON lines on standard error.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber. A second call (tests start many servers) keeps the first.
pub fn init(config: &LogConfig) {
    // sqlx reports PostgreSQL's NOTICEs (such as "already exists, skipping") at info.
    let directives = if config.log_level.contains(['=', ',']) {
        config.log_level.clone()
    } else {
        format!("{},sqlx::postgres::notice=warn", config.log_level)
    };
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(directives))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match config.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
