//! `idle`: N subscribed connections held open without traffic; the server's resident
//! memory per connection.
//!
//! KiB per connection = (VmRSS after connecting and holding − VmRSS before) / connected.
//! Measure against a freshly started server: memory a previous run left in the
//! allocator would hide part of the cost.

use serde::Serialize;
use tokio::time::Instant;

use crate::cli::Idle;
use crate::plan::Layout;
use crate::procfs;
use crate::report::RunReport;
use crate::run::Run;
use crate::usage::Window;

#[derive(Debug, Serialize)]
struct Memory {
    rss_before_kib: u64,
    rss_after_kib: u64,
    kib_per_connection: f64,
    held_s: f64,
    /// Connections still open when the hold ended.
    live_at_end: u32,
}

pub async fn run(args: Idle) -> Result<RunReport, String> {
    let pid = args
        .common
        .server_pid
        .ok_or("idle needs --server-pid to read the server's memory")?;
    let before = procfs::memory(pid).ok_or_else(|| format!("cannot read /proc/{pid}/status"))?;
    let layout = Layout::Spread {
        channels: args.channels,
    };
    let mut run = Run::start("idle", &args.common, layout, args.clients, args.hold).await?;
    eprintln!(
        "idle: holding {} connections for {:?}",
        run.connect.connected, args.hold
    );
    let baseline = run.fleet.report().await?;
    let window = Window::open(Some(pid), baseline.cpu_ticks);
    run.fleet.idle_until(Instant::now() + args.hold).await?;
    let after = procfs::memory(pid).ok_or_else(|| format!("server {pid} is gone"))?;
    let report = run.fleet.report().await?;
    let usage = window.close(&report.cpu_ticks);
    let connected = run.connect.connected.max(1);
    let memory = Memory {
        rss_before_kib: before.rss_kib,
        rss_after_kib: after.rss_kib,
        kib_per_connection: after.rss_kib.saturating_sub(before.rss_kib) as f64 / connected as f64,
        held_s: usage.wall_s,
        live_at_end: report.live,
    };
    let server_cpu = usage.server.as_ref().map_or(0.0, |s| s.cpu_s);
    let text = vec![
        format!(
            "result       {:.2} KiB per connection (rss {:.1} MiB before, {:.1} MiB after, {} connections)",
            memory.kib_per_connection,
            before.rss_kib as f64 / 1024.0,
            after.rss_kib as f64 / 1024.0,
            connected
        ),
        format!(
            "             held {:.1} s: {} still open, server cpu {:.2} s, generator cpu {:.2} s",
            memory.held_s, memory.live_at_end, server_cpu, usage.generator.cpu_s
        ),
    ];
    if after.rss_kib <= before.rss_kib {
        run.warnings.push(
            "the server's RSS did not grow: it reused memory an earlier load left in its \
             allocator; measure against a freshly started server"
                .into(),
        );
    }
    let clean = memory.live_at_end == run.connect.connected && report.ends.is_empty();
    if !report.ends.is_empty() {
        run.warnings
            .push(format!("connections ended while idle: {:?}", report.ends));
    }
    let value = serde_json::to_value(&memory).map_err(|e| e.to_string())?;
    Ok(run.finish(clean, Some(value), text).await)
}
