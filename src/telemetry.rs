//! Logging setup: `tracing` to stderr, JSON when stderr is not a terminal and human-readable when
//! it is, filtered by `RUST_LOG` (default [`DEFAULT_FILTER`]), with [`ALWAYS_OFF`] on top.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// JSON when stderr is not a terminal, text otherwise.
    #[default]
    Auto,
    /// One JSON object per line.
    Json,
    /// Human-readable text.
    Text,
}

/// The filter without `RUST_LOG`: `info`, except the AWS SDK's instance-metadata probes, whose
/// failure off EC2 is expected and which log it as a multi-kilobyte warning per probe (a missing
/// region still fails the request that needs it, with its own error).
pub const DEFAULT_FILTER: &str = "info,aws_config::imds=error";

/// Always off, whatever `RUST_LOG` says: lapin's warning for a message the broker returns,
/// which prints the whole message, body included (a command, with whatever its producer put
/// in it). The agent and the CLI handle a returned message themselves (the CLI's command to a
/// broker without the topology is declared for and sent again), so nothing is lost with it.
pub const ALWAYS_OFF: &str = "lapin::returned_messages=off";

/// Installs the global subscriber. Call once, from `main`.
pub fn init(format: LogFormat) {
    let mut filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    if let Ok(off) = ALWAYS_OFF.parse() {
        filter = filter.add_directive(off);
    }
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // try_init: a second call (tests) keeps the first subscriber.
    let _ = if json {
        builder.json().with_current_span(true).try_init()
    } else {
        builder.try_init()
    };
}
