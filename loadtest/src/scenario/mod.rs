//! One file per scenario: what it publishes, what it waits for, what it reports.
//!
//! Exit status: 0 = measured and clean; 3 = measured, but the server lost, duplicated or
//! misrouted deliveries, dropped connections, or did not recover (the report says which);
//! 1 = could not measure (bad flags, server unreachable, a worker died).

mod api_publish;
mod channels;
mod connect;
mod fanout;
mod idle;
mod outage;
mod resume;
mod saturate;

use std::process::ExitCode;

use tokio::task::LocalSet;

use crate::cli::Scenario;
use crate::report::RunReport;

/// Exit status of a run that measured something a healthy server must not do.
const EXIT_UNCLEAN: u8 = 3;

pub fn main(scenario: Scenario) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("herald-loadtest: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let local = LocalSet::new();
    let (json, outcome) = match scenario {
        Scenario::Fanout(args) => (
            args.common.json,
            local.block_on(&runtime, fanout::run(args)),
        ),
        Scenario::Saturate(args) => (
            args.common.json,
            local.block_on(&runtime, saturate::run(args)),
        ),
        Scenario::Channels(args) => (
            args.common.json,
            local.block_on(&runtime, channels::run(args)),
        ),
        Scenario::Idle(args) => (args.common.json, local.block_on(&runtime, idle::run(args))),
        Scenario::Connect(args) => (
            args.common.json,
            local.block_on(&runtime, connect::run(args)),
        ),
        Scenario::Outage(args) => (
            args.common.json,
            local.block_on(&runtime, outage::run(args)),
        ),
        Scenario::Resume(args) => (
            args.common.json,
            local.block_on(&runtime, resume::run(args)),
        ),
        Scenario::ApiPublish(args) => (
            args.common.json,
            local.block_on(&runtime, api_publish::run(args)),
        ),
        Scenario::Worker | Scenario::Summary(_) | Scenario::Table(_) => {
            unreachable!("dispatched in main")
        }
    };
    match outcome {
        Ok(report) => finish(&report, json),
        Err(e) => {
            eprintln!("herald-loadtest: {e}");
            ExitCode::FAILURE
        }
    }
}

fn finish(report: &RunReport, json: bool) -> ExitCode {
    report.print(json);
    if report.clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_UNCLEAN)
    }
}
