//! `channels`: N clients, each on its own channel plus one shared channel. Publications
//! spread round-robin over the own channels, and a few on the shared one.
//!
//! Measures the per-channel cost (routing, many Redis channels, one subscriber each)
//! beside a broadcast.

use crate::cli::Channels;
use crate::phase::measure;
use crate::plan::Layout;
use crate::publish::pace::Stream;
use crate::report::RunReport;
use crate::run::Run;

pub async fn run(args: Channels) -> Result<RunReport, String> {
    if args.own_rate.is_nan()
        || args.own_rate <= 0.0
        || args.shared_rate.is_nan()
        || args.shared_rate <= 0.0
    {
        return Err("--own-rate and --shared-rate must be above 0".into());
    }
    let layout = Layout::OwnPlusShared {
        clients: args.clients,
    };
    let mut run = Run::start(
        "channels",
        &args.common,
        layout,
        args.clients,
        args.duration,
    )
    .await?;
    let own = Stream {
        channels: (0..args.clients).collect(),
        rate: args.own_rate,
    };
    let shared = Stream {
        channels: vec![args.clients],
        rate: args.shared_rate,
    };
    let name = format!("own {}/s + shared {}/s", args.own_rate, args.shared_rate);
    let phase = measure(&mut run, name, vec![own, shared], args.duration).await?;
    let clean = phase.is_clean();
    run.phases.push(phase);
    Ok(run.finish(clean, None, Vec::new()).await)
}
