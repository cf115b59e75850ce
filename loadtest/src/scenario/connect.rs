//! `connect`: how long N clients take to connect and be confirmed subscribed.
//!
//! The time runs from the first connection attempt to the last `welcome` (Herald) or
//! completed upgrade (Nchan), at --connect-concurrency attempts in flight; the report adds
//! the time until Redis shows every channel subscribed, which Herald does asynchronously.

use crate::cli::Connect;
use crate::plan::Layout;
use crate::report::RunReport;
use crate::run::Run;

pub async fn run(args: Connect) -> Result<RunReport, String> {
    let layout = Layout::Spread {
        channels: args.channels,
    };
    let run = Run::start(
        "connect",
        &args.common,
        layout,
        args.clients,
        Default::default(),
    )
    .await?;
    Ok(run.finish(true, None, Vec::new()).await)
}
