//! `resume` (Herald only, contract 1.1): N clients on one history channel, publications
//! at a fixed rate through `FCALL herald_publish`. After a warm-up, every client drops its
//! connection, at turns spread uniformly over `--spread`, connects again and subscribes
//! with `since` set to the last offset it received; Herald should answer `ok` with
//! `recovered: {c: true}` and then deliver everything the client missed, then the live
//! stream, none twice and none missing.
//!
//! Two phases: the warm-up (steady publishing; also Redis's commands per publication in
//! steady state) and the wave (publishing goes on throughout; it ends `--tail` after the
//! last client caught up). A client has *caught up* when a publication stamped after it
//! sent its subscribe arrives: by per-channel order every earlier one has then arrived or
//! been counted lost. Sequence numbers continue across the reconnect, so a replay that
//! skips or repeats shows as lost or duplicated deliveries.
//!
//! Redis's cost of the resume: INFO commandstats read when the first client drops and
//! when the last one caught up; beside it, what steady publishing alone would have cost in
//! that window (the warm-up's calls per publication × the publications made), so the rest
//! is what the resume itself asked of Redis (history reads: FCALL_RO, XRANGE, HGET...).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::cli::{PeerKind, PublishVia, Resume};
use crate::fleet::Fleet;
use crate::phase::{measure, measure_during};
use crate::plan::Layout;
use crate::publish::{self, pace::Control, pace::Stream};
use crate::redis_ops;
use crate::report::RunReport;
use crate::run::{single_redis_only, Run};
use crate::stamp::now_ns;
use crate::wave::{Wave, WaveSummary};

/// From the wave phase's first publication to the first client's drop: the wave begins
/// while publications flow.
const LEAD: Duration = Duration::from_millis(500);
/// Commands the report names on their own (the rest are in the JSON).
const NAMED: [&str; 4] = ["fcall", "fcall_ro", "xrange", "hget"];

#[derive(Debug, Serialize)]
struct Outcome {
    rate: f64,
    spread_s: f64,
    /// Where the clients came back to, when not --target (another instance).
    #[serde(skip_serializing_if = "Option::is_none")]
    rejoin_target: Option<String>,
    /// From the first client's drop until the last client caught up; None if some client
    /// had neither caught up nor failed by `--catch-up-timeout`.
    all_caught_up_after_s: Option<f64>,
    wave: WaveSummary,
    /// Of the wave phase: deliveries lost (gaps and missing), duplicated.
    lost: u64,
    duplicated: u64,
    redis: RedisCost,
}

/// What Redis ran while the clients came back.
#[derive(Debug, Serialize)]
struct RedisCost {
    /// The window: first drop to last caught up (or the deadline).
    window_s: f64,
    /// Publications the tool made in it.
    publications: u64,
    /// Calls per command in the window (INFO commandstats after − before; INFO excluded).
    calls: BTreeMap<String, u64>,
    total: u64,
    /// Calls per publication in the warm-up, per command and in total.
    steady_per_publication: BTreeMap<String, f64>,
    steady_total_per_publication: f64,
    /// `calls` − steady per publication × `publications`, for the named commands and in
    /// total: what the resume itself cost.
    beyond_steady: BTreeMap<String, f64>,
    beyond_steady_total: f64,
}

pub async fn run(mut args: Resume) -> Result<RunReport, String> {
    if args.common.peer != PeerKind::Herald {
        return Err(
            "resume needs history and offsets (Herald contract 1.1); Nchan has no equivalent: \
             --peer herald only"
                .into(),
        );
    }
    single_redis_only(
        &args.common,
        "resume",
        "reads the commands the resume cost from that Redis's INFO commandstats",
    )?;
    match args.common.publish {
        Some(PublishVia::Publish) => {
            return Err("resume publishes with FCALL herald_publish (offsets need it)".into())
        }
        _ => args.common.publish = Some(PublishVia::Fcall),
    }
    if args.rate.is_nan() || args.rate <= 0.0 {
        return Err("--rate must be above 0".into());
    }
    let wave_max = LEAD + args.spread + args.catch_up_timeout + args.tail;
    let work = args.warmup + wave_max;
    let layout = Layout::OneChannel;
    let rejoin = args.rejoin_target.as_deref().unwrap_or(&args.common.target);
    let mut run = Run::start_with(
        "resume",
        &args.common,
        layout,
        args.clients,
        work,
        Some(rejoin),
    )
    .await?;
    let stream = || Stream {
        channels: vec![0],
        rate: args.rate,
    };
    let mut con = publish::connect(&args.common.redis).await?;

    let before = redis_ops::command_calls(&mut con).await?;
    let warm = measure(
        &mut run,
        format!("warm-up {}/s", args.rate),
        vec![stream()],
        args.warmup,
    )
    .await?;
    let after = redis_ops::command_calls(&mut con).await?;
    if let Some(e) = &warm.published.first_error {
        return Err(format!("the warm-up could not publish: {e}"));
    }
    if warm.received == 0 {
        return Err("no publication reached a client during the warm-up".into());
    }
    let warm_calls = redis_ops::calls_between(&before, &after);
    let warm_sent = warm.published.sent.max(1) as f64;
    let mut clean = warm.is_clean();
    run.phases.push(warm);

    let clients = args.clients;
    let (spread, timeout, tail) = (args.spread, args.catch_up_timeout, args.tail);
    let name = format!("reconnect wave {}/s", args.rate);
    let (phase, window) = measure_during(
        &mut run,
        name,
        vec![stream()],
        wave_max,
        async |fleet: &mut Fleet, control: &Control| {
            wave(fleet, control, &mut con, clients, spread, timeout, tail).await
        },
    )
    .await?;
    let window = window?;
    clean &= phase.is_clean();
    let (lost, duplicated) = (phase.lost, phase.duplicates);
    run.phases.push(phase);
    let report = run.fleet.report().await?;
    let wave = report
        .wave
        .ok_or("the workers reported no reconnect wave")?;

    let redis = RedisCost::new(&warm_calls, warm_sent, &window);
    let over = window.over_at_ns.filter(|_| window.over);
    let outcome = Outcome {
        rate: args.rate,
        spread_s: spread.as_secs_f64(),
        rejoin_target: args.rejoin_target.clone(),
        all_caught_up_after_s: over
            .map(|_| wave.last_caught_up_ns.saturating_sub(window.start_ns) as f64 / 1e9),
        wave,
        lost,
        duplicated,
        redis,
    };
    let text = outcome.text(run.connect.connected);
    if outcome.wave.without_offset > 0 && outcome.wave.recovered == 0 {
        run.warnings.push(
            "no client had received an offset: is the channel a history channel? Start \
             Herald with --history 'PREFIX*=SIZE/TTL' (e.g. 'lt.*=1000/5m')"
                .into(),
        );
    }
    let w = &outcome.wave;
    clean &= over.is_some()
        && w.failed.is_empty()
        && w.not_recovered == 0
        && w.unanswered == 0
        && w.without_offset == 0
        && w.rejoined == run.connect.connected;
    let value = serde_json::to_value(&outcome).map_err(|e| e.to_string())?;
    Ok(run.finish(clean, Some(value), text).await)
}

/// What the wave phase measured beside the deliveries.
struct WaveWindow {
    start_ns: u64,
    over: bool,
    /// When the coordinator saw the wave over (or gave up waiting).
    over_at_ns: Option<u64>,
    publications: u64,
    calls: BTreeMap<String, u64>,
    window_s: f64,
}

/// Starts the wave `LEAD` from now, waits for every client to come back, reads Redis's
/// commands around it, and lets publishing run `tail` longer.
async fn wave(
    fleet: &mut Fleet,
    control: &Control,
    con: &mut redis::aio::MultiplexedConnection,
    clients: u32,
    spread: Duration,
    timeout: Duration,
    tail: Duration,
) -> Result<WaveWindow, String> {
    let start_ns = now_ns() + LEAD.as_nanos() as u64;
    let start = Instant::now() + LEAD;
    fleet
        .start_wave(Wave {
            start_ns,
            spread_ns: spread.as_nanos() as u64,
            clients,
        })
        .await?;
    fleet.idle_until(start).await?;
    let (before, sent_before) = snapshot(con, control).await?;
    eprintln!("resume: the wave began; {clients} clients drop over {spread:?}");
    let over = fleet.wave_over(start + timeout).await?;
    let over_at_ns = now_ns();
    let (after, sent_after) = snapshot(con, control).await?;
    let window_s = start.elapsed().as_secs_f64();
    let publications = (sent_after - sent_before).round().max(0.0) as u64;
    if over {
        eprintln!("resume: every client is back; publishing {tail:?} more");
        fleet.idle_until(Instant::now() + tail).await?;
    } else {
        eprintln!("resume: not every client came back within {timeout:?}");
    }
    Ok(WaveWindow {
        start_ns,
        over,
        over_at_ns: Some(over_at_ns),
        publications,
        calls: redis_ops::calls_between(&before, &after),
        window_s,
    })
}

/// INFO commandstats, and the publications made by then. A publication counts as sent
/// when its reply is back, which may be just before or just after Redis answers INFO on
/// another connection: the count is the mean of a reading before and one after (seen: 5
/// publications apart on a loaded machine when read after only).
async fn snapshot(
    con: &mut redis::aio::MultiplexedConnection,
    control: &Control,
) -> Result<(BTreeMap<String, u64>, f64), String> {
    let sent_before = control.sent.get();
    let calls = redis_ops::command_calls(con).await?;
    let sent = (sent_before + control.sent.get()) as f64 / 2.0;
    Ok((calls, sent))
}

impl RedisCost {
    fn new(warm: &BTreeMap<String, u64>, warm_sent: f64, window: &WaveWindow) -> RedisCost {
        let steady: BTreeMap<String, f64> = warm
            .iter()
            .map(|(name, &n)| (name.clone(), n as f64 / warm_sent))
            .collect();
        let steady_total = warm.values().sum::<u64>() as f64 / warm_sent;
        let total = window.calls.values().sum::<u64>();
        let publications = window.publications as f64;
        let beyond = |name: &str| {
            let calls = window.calls.get(name).copied().unwrap_or(0) as f64;
            calls - steady.get(name).copied().unwrap_or(0.0) * publications
        };
        RedisCost {
            window_s: window.window_s,
            publications: window.publications,
            beyond_steady: NAMED.iter().map(|&n| (n.to_owned(), beyond(n))).collect(),
            beyond_steady_total: total as f64 - steady_total * publications,
            calls: window.calls.clone(),
            total,
            steady_per_publication: steady,
            steady_total_per_publication: steady_total,
        }
    }

    fn named(&self, values: impl Fn(&str) -> String) -> String {
        NAMED
            .iter()
            .map(|&name| format!("{name} {}", values(name)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Outcome {
    fn text(&self, connected: u32) -> Vec<String> {
        let w = &self.wave;
        let r = &self.redis;
        let ms = |l: &crate::tally::Latency| {
            format!(
                "p50 {:.1} p99 {:.1} max {:.1} ms",
                l.p50_ms, l.p99_ms, l.max_ms
            )
        };
        let mut text = vec![
            format!(
                "result       {} of {connected} clients dropped over {:.2} s; every client caught up {}",
                w.dropped,
                self.spread_s,
                self.all_caught_up_after_s.map_or(
                    "never (timed out)".to_owned(),
                    |s| format!("{s:.3} s after the first drop")
                )
            ),
            format!(
                "             rejoined {}, caught up {}, failed {}; recovered true {}, false {}, \
                 unanswered {}, subscribed without an offset {}",
                w.rejoined,
                w.caught_up,
                w.failed_total(),
                w.recovered,
                w.not_recovered,
                w.unanswered,
                w.without_offset
            ),
            format!(
                "             wave phase: lost {}, duplicated {}; after recovered: true lost {} \
                 ({} of them reported lagged), duplicated {}; after false lost {} ({:.0} per \
                 channel: how far behind those clients were)",
                self.lost,
                self.duplicated,
                w.lost_recovered,
                w.lagged_recovered,
                w.duplicated_recovered,
                w.lost_not_recovered,
                w.lost_not_recovered as f64 / w.not_recovered.max(1) as f64
            ),
            format!("             per client: drop to welcome {}", ms(&w.reconnect_ms)),
            format!("             per client: subscribe to ok {}", ms(&w.answer_ms)),
            format!("             per client: drop to caught up {}", ms(&w.back_live_ms)),
            format!(
                "             redis in {:.2} s ({} publications): {} calls ({}); steady publishing \
                 costs {:.2} calls each",
                r.window_s,
                r.publications,
                r.total,
                r.named(|n| r.calls.get(n).copied().unwrap_or(0).to_string()),
                r.steady_total_per_publication
            ),
            format!(
                "             redis beyond steady publishing: {:.0} calls ({})",
                r.beyond_steady_total,
                r.named(|n| format!("{:.0}", r.beyond_steady.get(n).copied().unwrap_or(0.0)))
            ),
        ];
        if let Some(s) = w.skipped_not_recovered {
            text.insert(
                3,
                format!(
                    "             told false: skipped min {} median {} max {} publications at \
                     the seam (suspect if below the history's SIZE)",
                    s.min, s.median, s.max
                ),
            );
        }
        if let Some(target) = &self.rejoin_target {
            text.insert(1, format!("             the clients came back to {target}"));
        }
        for (why, n) in &w.failed {
            text.push(format!("             failed: {n} × {why}"));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_resume_cost_is_what_steady_publishing_does_not_explain() {
        let warm: BTreeMap<String, u64> = [("fcall", 100), ("xadd", 100), ("publish", 100)]
            .into_iter()
            .map(|(n, c)| (n.to_owned(), c))
            .collect();
        let window = WaveWindow {
            start_ns: 0,
            over: true,
            over_at_ns: Some(1),
            publications: 20,
            calls: [
                ("fcall", 20),
                ("xadd", 20),
                ("publish", 20),
                ("fcall_ro", 3),
            ]
            .into_iter()
            .map(|(n, c)| (n.to_owned(), c))
            .collect(),
            window_s: 0.1,
        };
        let cost = RedisCost::new(&warm, 100.0, &window);
        assert_eq!(cost.total, 63);
        assert!((cost.steady_total_per_publication - 3.0).abs() < 1e-9);
        assert!((cost.beyond_steady_total - 3.0).abs() < 1e-9);
        assert_eq!(cost.beyond_steady["fcall"], 0.0);
        assert_eq!(cost.beyond_steady["fcall_ro"], 3.0);
        assert_eq!(cost.beyond_steady["hget"], 0.0);
    }
}
