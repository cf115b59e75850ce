//! `outage`: N clients over C channels; Redis is shut down (SHUTDOWN NOSAVE) and started
//! again with --redis-start-cmd; measures, from the moment Redis answers again, the time
//! until every channel is subscribed on Redis again (PUBSUB NUMSUB) and until a
//! publication reaches every client.
//!
//! Reaching is checked by epochs: the workers start a new epoch, then one publication per
//! channel is sent, repeated every 500 ms, until every live client has seen one on each of
//! its channels. Clients must stay connected throughout; any that dropped are reported.

use std::os::fd::AsFd;
use std::process::Stdio;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::cli::{Outage, PeerKind};
use crate::plan::Layout;
use crate::publish;
use crate::redis_ops;
use crate::report::RunReport;
use crate::run::{redis_names, single_redis_only, Run};
use crate::usage::Window;

/// How long a probe round may take to reach everyone before the next round is sent.
const ROUND: Duration = Duration::from_millis(500);
/// Deadline for the start command to return (it should daemonize).
const START_CMD_WITHIN: Duration = Duration::from_secs(10);

#[derive(Debug, Serialize)]
struct Recovery {
    /// From SHUTDOWN until Redis answered PING again.
    down_s: f64,
    /// From Redis answering until every channel had a subscriber again.
    resubscribed_after_s: Option<f64>,
    /// From Redis answering until a publication had reached every live client.
    all_reached_after_s: Option<f64>,
    probe_rounds: u32,
    /// Probe publications some client missed (sequence gaps).
    probes_missed: u64,
    live_at_end: u32,
}

pub async fn run(args: Outage) -> Result<RunReport, String> {
    if args.common.peer != PeerKind::Herald {
        return Err("outage restarts the Redis behind Herald: --peer herald only".into());
    }
    single_redis_only(
        &args.common,
        "outage",
        "shuts that Redis down (SHUTDOWN NOSAVE) and starts it again with --redis-start-cmd",
    )?;
    let layout = Layout::Spread {
        channels: args.channels,
    };
    let work = args.down_for + args.recover_timeout;
    let mut run = Run::start("outage", &args.common, layout, args.clients, work).await?;
    let channels: Vec<u32> = (0..layout.channel_count())
        .filter(|&c| run.audience[c as usize] > 0)
        .collect();
    let names = redis_names(&args.common, &run.audience);
    let url = args.common.redis.clone();

    let epoch = run.fleet.mark().await?;
    run.publish_once(&channels).await?;
    if !run
        .fleet
        .reached_all(epoch, Instant::now() + Duration::from_secs(10))
        .await?
    {
        return Err("before the outage, a publication did not reach every client".into());
    }
    let baseline = run.fleet.report().await?;
    let window = Window::open(args.common.server_pid, baseline.cpu_ticks);

    eprintln!("outage: SHUTDOWN NOSAVE on {url}");
    run.reconnect_publisher();
    redis_ops::shutdown(&url, Duration::from_secs(10)).await?;
    let down_at = Instant::now();
    tokio::time::sleep(args.down_for).await;
    start_redis(&args.redis_start_cmd, &mut run.warnings).await?;
    let up = redis_ops::wait_up(&url, args.recover_timeout).await?;
    eprintln!("outage: redis answers again; waiting for resubscription and delivery");
    let deadline = up + args.recover_timeout;
    let epoch = run.fleet.mark().await?;

    let mut con = publish::connect(&url).await?;
    let mut resubscribed = None;
    while Instant::now() < deadline {
        if redis_ops::unsubscribed(&mut con, &names).await? == 0 {
            resubscribed = Some(Instant::now());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (mut reached, mut rounds) = (None, 0);
    while resubscribed.is_some() && Instant::now() < deadline {
        run.publish_once(&channels).await?;
        rounds += 1;
        if run
            .fleet
            .reached_all(epoch, (Instant::now() + ROUND).min(deadline))
            .await?
        {
            reached = Some(Instant::now());
            break;
        }
    }
    let report = run.fleet.report().await?;
    let usage = window.close(&report.cpu_ticks);
    run.warnings.extend(usage.warnings("outage"));
    let since_up = |at: Option<Instant>| at.map(|at| at.duration_since(up).as_secs_f64());
    let recovery = Recovery {
        down_s: up.duration_since(down_at).as_secs_f64(),
        resubscribed_after_s: since_up(resubscribed),
        all_reached_after_s: since_up(reached),
        probe_rounds: rounds,
        probes_missed: report.tally.gaps,
        live_at_end: report.live,
    };
    let show = |s: Option<f64>| s.map_or("never (timed out)".to_owned(), |s| format!("{:.3} s", s));
    let mut text = vec![
        format!("result       redis down {:.2} s; after it answered again:", recovery.down_s),
        format!("             every channel resubscribed after {}", show(recovery.resubscribed_after_s)),
        format!(
            "             every client reached after {} ({} probe round(s), {} probe deliveries missed)",
            show(recovery.all_reached_after_s),
            rounds,
            recovery.probes_missed
        ),
        format!("             {} of {} clients still connected", report.live, run.connect.connected),
    ];
    for (how, n) in &report.ends {
        text.push(format!("             ended: {n} × {how}"));
    }
    let clean = reached.is_some() && report.ends.is_empty();
    let value = serde_json::to_value(&recovery).map_err(|e| e.to_string())?;
    Ok(run.finish(clean, Some(value), text).await)
}

/// Runs the start command; its output goes to our stderr so stdout stays the report's.
async fn start_redis(command: &str, warnings: &mut Vec<String>) -> Result<(), String> {
    eprintln!("outage: starting redis: {command}");
    let stdout = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| e.to_string())?;
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::from(stdout))
        .spawn()
        .map_err(|e| format!("cannot run --redis-start-cmd: {e}"))?;
    match tokio::time::timeout(START_CMD_WITHIN, child.wait()).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(format!("--redis-start-cmd exited with {status}")),
        Ok(Err(e)) => Err(format!("--redis-start-cmd: {e}")),
        Err(_) => {
            warnings.push(
                "--redis-start-cmd did not return within 10 s; left running (make it daemonize)"
                    .into(),
            );
            Ok(())
        }
    }
}
