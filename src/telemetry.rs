//! Logging: human-readable lines by default, JSON with `API_LOG_FORMAT=json`, level from
//! `API_LOG_LEVEL` (checked with the other settings at start, see
//! [`LogLevel`](crate::settings::LogLevel): nothing here can fail on it).

use tracing_subscriber::fmt::writer::MakeWriterExt as _;

use crate::settings::{LogFormat, LogSettings};

/// Installs the global subscriber; logs go to stderr so that commands can print JSON on stdout.
/// Safe to call twice (tests): the second call does nothing.
pub fn init(settings: &LogSettings) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(settings.level.filter())
        .with_writer(std::io::stderr.with_max_level(tracing::Level::TRACE))
        .with_target(false)
        // Colour codes only for a person at a terminal, never in `docker logs | grep`.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match settings.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
