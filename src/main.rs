//! The `herald` binary: parse the config, start telemetry, run, map the outcome to an exit code.

use std::process::ExitCode;

use clap::Parser;
use herald::config::{Config, LogFormat};
use tracing_subscriber::EnvFilter;

/// sysexits' EX_CONFIG-adjacent EX_USAGE: the configuration cannot work.
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let config = Config::parse();
    if let Err(e) = config.validate() {
        eprintln!("herald: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let filter = match EnvFilter::try_new(&config.log) {
        Ok(filter) => filter,
        Err(e) => {
            eprintln!("herald: HERALD_LOG is not a valid filter: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }

    tracing::info!(config = ?config.masked(), "starting herald {}", env!("CARGO_PKG_VERSION"));

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

/// One thread: the current-thread runtime (no work-stealing machinery to pay for on a
/// single core). More: the multi-thread runtime with that many workers.
fn runtime(threads: u16) -> std::io::Result<tokio::runtime::Runtime> {
    let threads = match threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => usize::from(n),
    };
    if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
}
