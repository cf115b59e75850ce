//! The `herald` binary: parse the config, start telemetry, run, map the outcome to an exit code.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use herald::config::{Config, LogFormat};
use tracing_subscriber::EnvFilter;

/// sysexits' EX_CONFIG-adjacent EX_USAGE: the configuration cannot work.
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let config = match Config::try_parse() {
        Ok(config) => config,
        // --help and --version print and exit 0.
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            let args: Vec<String> = std::env::args().collect();
            eprintln!("herald: {}", herald::config::describe_refusal(&e, &args));
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Err(e) = config.validate() {
        eprintln!("herald: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let filter = match EnvFilter::try_new(&config.log) {
        // The WebSocket library traces whole frames and handshakes (tokens in a refresh
        // or the upgrade URL): whatever the filter asks, it says no more than info.
        Ok(filter) => ["tungstenite", "tokio_tungstenite"]
            .into_iter()
            .filter_map(|target| format!("{target}=info").parse().ok())
            .fold(filter, EnvFilter::add_directive),
        Err(e) => {
            eprintln!("herald: HERALD_LOG is not a valid filter: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // Colour codes only for a person at a terminal, never into a file or a log shipper.
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }

    tracing::info!(config = ?config.masked(), "starting herald {}", env!("CARGO_PKG_VERSION"));
    // rustls wants the process to choose its cryptography: with no provider feature (as
    // redis's rustls build had) or with two (any dependency adding aws-lc-rs), a rediss://
    // connect panics ("Could not automatically determine the process-level
    // CryptoProvider"). Chosen here once; an error only means one was installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let runtime = match runtime(config.worker_threads) {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("herald: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(herald::app::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "herald stopped");
            ExitCode::FAILURE
        }
    }
}

/// The multi-thread runtime, with `threads` workers or (0) one per usable CPU. On one
/// pinned core the current-thread runtime was measured too and lost: fanout 5,000 x 200/s
/// p99 124 ms (94.5-132, 3 runs) against 74 ms (73.4-90.9) here (docs/performance.md).
fn runtime(threads: u16) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if threads > 0 {
        builder.worker_threads(usize::from(threads));
    }
    builder.enable_all().build()
}
