//! `fanout`: N clients on one channel; one measured phase per publication rate.
//!
//! Every publication goes to all N clients, so deliveries/s = rate × N: the plain
//! fan-out cost of the server.

use crate::cli::Fanout;
use crate::phase::measure;
use crate::plan::Layout;
use crate::publish::pace::Stream;
use crate::report::RunReport;
use crate::run::Run;

pub async fn run(args: Fanout) -> Result<RunReport, String> {
    if args.rates.iter().any(|r| r.is_nan() || *r <= 0.0) {
        return Err("--rates must all be above 0".into());
    }
    let work = args.duration * args.rates.len() as u32;
    let mut run = Run::start(
        "fanout",
        &args.common,
        Layout::OneChannel,
        args.clients,
        work,
    )
    .await?;
    let mut clean = true;
    for &rate in &args.rates {
        let stream = Stream {
            channels: vec![0],
            rate,
        };
        let phase = measure(&mut run, format!("{rate}/s"), vec![stream], args.duration).await?;
        clean &= phase.is_clean();
        run.phases.push(phase);
    }
    Ok(run.finish(clean, None, Vec::new()).await)
}
