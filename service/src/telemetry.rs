//! Process-wide tracing setup: where log lines go and which ones are kept.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Level used when `RUST_LOG` is unset or invalid.
const DEFAULT_FILTER: &str = "info";

/// Installs the global tracing subscriber: text or JSON lines on stderr, filtered by `RUST_LOG`
/// (default `info`), coloured only when stderr is a terminal. Calling it again (as tests do) leaves the first subscriber in place.
pub fn init(log: &LogConfig) {
    let (filter, bad_filter) = match EnvFilter::try_from_default_env() {
        Ok(filter) => (filter, None),
        Err(error) => (EnvFilter::new(DEFAULT_FILTER), Some(error)),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour codes only for a person at a terminal, never in files or log collectors.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let installed = match log.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    // An unset RUST_LOG is the normal case; only a set but unparsable one deserves a warning.
    if installed.is_ok()
        && let Some(error) = bad_filter
        && std::env::var_os(EnvFilter::DEFAULT_ENV).is_some()
    {
        tracing::warn!(%error, "ignoring invalid RUST_LOG, logging at {DEFAULT_FILTER}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_twice_is_harmless() {
        init(&LogConfig::default());
        init(&LogConfig {
            format: LogFormat::Json,
        });
        tracing::info!("still logging");
    }
}
