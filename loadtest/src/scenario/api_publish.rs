//! `api_publish` (issue 11): publications/s and per-request latency of Herald's
//! `POST /api/publish`, beside the same publications sent straight to Redis, which is
//! what a backend does without the API (`redis-cli PUBLISH`).
//!
//! Four legs of `--duration`, each from `--connections` keep-alive connections with one
//! request in flight each (`publish::closed_loop`): Redis `PUBLISH`, then the API, on
//! plain channels; then `FCALL herald_publish`, then the API, on history channels (the
//! API answers each with its offset). A few WebSocket subscribers take every channel, so
//! Herald delivers all of it, and every leg must lose nothing.

use serde::Serialize;
use serde_json::json;

use crate::cli::{ApiPublish, PeerKind, PublishVia};
use crate::phase::measure_with;
use crate::plan::{channel_name, Layout};
use crate::publish::closed_loop::{self, Path};
use crate::publish::via_api::ApiTarget;
use crate::report::{Phase, RunReport};
use crate::run::{single_redis_only, Run};
use crate::tally::Latency;

/// Bounds on the flags, so a run stays a measurement and not a load of its own.
const MAX_CONNECTIONS: u32 = 100;
const MAX_SUBSCRIBERS: u32 = 1000;
const MAX_DURATION: std::time::Duration = std::time::Duration::from_secs(600);
const MAX_PAYLOAD: usize = 64 << 10;

/// One leg: one path, `--connections` connections, `--duration`.
#[derive(Debug, Serialize)]
struct Leg {
    /// The phase it measured (deliveries, server CPU).
    phase: String,
    /// What each request was.
    request: &'static str,
    published: u64,
    /// Publications answered with success, per second of the leg (its duration, or the
    /// first request to the last answer if longer): a refused request does not count.
    per_s: f64,
    failed: u64,
    first_error: Option<String>,
    /// Answers that carried an offset: on history channels every one, else none.
    offsets: u64,
    /// Per request: send to the whole answer.
    latency_ms: Latency,
}

impl Leg {
    fn is_clean(&self, history: bool) -> bool {
        let offsets = if history { self.published } else { 0 };
        self.failed == 0 && self.offsets == offsets
    }
}

/// Both legs on one kind of channel.
struct Pair {
    report: RunReport,
    redis: Leg,
    api: Leg,
}

pub async fn run(args: ApiPublish) -> Result<RunReport, String> {
    check(&args)?;
    single_redis_only(
        &args.common,
        "api_publish",
        "publishes to that Redis with PUBLISH from its own connections, beside the API",
    )?;
    let url = match &args.api_url {
        Some(url) => url.clone(),
        None => ApiTarget::url_beside(&args.common.target)?,
    };
    let api = ApiTarget::new(&url, &args.api_key)?;
    let plain = pair(&args, &api, false).await?;
    let history = pair(&args, &api, true).await?;

    let ratios = |redis: &Leg, api: &Leg| {
        let ratio = |a: f64, b: f64| (b > 0.0).then(|| a / b);
        json!({
            "rate": ratio(api.per_s, redis.per_s),
            "p50": ratio(api.latency_ms.p50_ms, redis.latency_ms.p50_ms),
            "p99": ratio(api.latency_ms.p99_ms, redis.latency_ms.p99_ms),
        })
    };
    let result = json!({
        "api_url": url,
        "connections": args.connections,
        "subscribers": args.subscribers,
        "duration_s": args.duration.as_secs_f64(),
        "payload_bytes": args.payload_bytes,
        "plain": {"redis": plain.redis, "api": plain.api,
                  "api_vs_redis": ratios(&plain.redis, &plain.api)},
        "history": {"redis": history.redis, "api": history.api,
                    "api_vs_redis": ratios(&history.redis, &history.api)},
    });
    let mut text = vec![format!(
        "result       {} connections, one request in flight each, {}-byte payloads",
        args.connections, args.payload_bytes
    )];
    text.extend(lines("plain  ", &plain.redis, &plain.api));
    text.extend(lines("history", &history.redis, &history.api));

    let mut report = plain.report;
    if history.report.connect.failed > 0 {
        report.warnings.push(format!(
            "history legs: {} subscriber(s) failed to connect",
            history.report.connect.failed
        ));
    }
    report.publish = "api";
    report.phases.extend(history.report.phases);
    report.warnings.extend(history.report.warnings);
    report.clean &= history.report.clean;
    report.result = Some(result);
    report.result_text = text;
    Ok(report)
}

fn check(args: &ApiPublish) -> Result<(), String> {
    if args.common.peer != PeerKind::Herald {
        return Err("api_publish measures Herald's server API: Herald only".into());
    }
    if args.common.publish.is_some() {
        return Err("api_publish publishes both ways itself; leave out --publish".into());
    }
    if !(1..=MAX_CONNECTIONS).contains(&args.connections) {
        // Each subscriber names every channel in its one request: Herald's
        // HERALD_MAX_CHANNELS_PER_REQUEST is 100 by default.
        return Err(format!("--connections must be 1 to {MAX_CONNECTIONS}"));
    }
    if !(1..=MAX_SUBSCRIBERS).contains(&args.subscribers) {
        return Err(format!("--subscribers must be 1 to {MAX_SUBSCRIBERS}"));
    }
    if args.duration.is_zero() || args.duration > MAX_DURATION {
        return Err(format!(
            "--duration must be above 0 and at most {MAX_DURATION:?}"
        ));
    }
    if args.payload_bytes > MAX_PAYLOAD {
        return Err(format!("--payload-bytes must be at most {MAX_PAYLOAD}"));
    }
    if args.history_prefix == args.common.channel_prefix {
        return Err("--history-prefix must differ from --channel-prefix".into());
    }
    Ok(())
}

/// The Redis leg, then the API leg, on plain or history channels, with their own
/// subscribers (a run per kind: channel names carry one prefix).
async fn pair(args: &ApiPublish, api: &ApiTarget, history: bool) -> Result<Pair, String> {
    let mut common = args.common.clone();
    if history {
        common.channel_prefix = args.history_prefix.clone();
    }
    let layout = Layout::Every {
        channels: args.connections,
    };
    let work = (args.duration + common.settle) * 2;
    let mut run = Run::start("api_publish", &common, layout, args.subscribers, work).await?;
    let names: Vec<String> = (0..args.connections)
        .map(|c| channel_name(&common.channel_prefix, c))
        .collect();
    // The API takes the names clients use; Redis needs Herald's own prefix before them.
    let on_redis: Vec<String> = names
        .iter()
        .map(|name| format!("{}{name}", common.redis_channel_prefix))
        .collect();
    let (via, phase) = if history {
        (PublishVia::Fcall, "redis FCALL herald_publish")
    } else {
        (PublishVia::Publish, "redis PUBLISH")
    };
    let redis = Path::Redis {
        url: common.redis.clone(),
        via,
    };
    let request = if history {
        "FCALL herald_publish 1 <channel> <payload>"
    } else {
        "PUBLISH <channel> <payload>"
    };
    let redis = leg(&mut run, args, phase, request, &redis, &on_redis, history).await?;
    let phase = if history {
        "api POST (history)"
    } else {
        "api POST"
    };
    let request = "POST /api/publish";
    let api = leg(
        &mut run,
        args,
        phase,
        request,
        &Path::Api(api.clone()),
        &names,
        history,
    )
    .await?;
    let clean =
        run.phases.iter().all(Phase::is_clean) && redis.is_clean(history) && api.is_clean(history);
    let report = run.finish(clean, None, Vec::new()).await;
    Ok(Pair { report, redis, api })
}

async fn leg(
    run: &mut Run,
    args: &ApiPublish,
    phase: &str,
    request: &'static str,
    path: &Path,
    names: &[String],
    history: bool,
) -> Result<Leg, String> {
    let publish = async |seqs: &mut _| {
        let leg = closed_loop::run(path, names, seqs, args.duration, args.payload_bytes).await?;
        Ok((leg.published.clone(), leg))
    };
    let (measured, leg) = measure_with(run, phase.into(), args.duration, publish).await?;
    if !history && leg.offsets > 0 {
        run.warnings.push(format!(
            "phase {phase}: {} answers carried an offset on a plain channel: does a history \
             rule cover --channel-prefix?",
            leg.offsets
        ));
    }
    let answered = leg.published.sent.saturating_sub(leg.failed);
    if history && leg.offsets < answered {
        run.warnings.push(format!(
            "phase {phase}: {} answers without an offset on a history channel: start Herald \
             with --history '{}*=1000/5m'",
            answered - leg.offsets,
            args.history_prefix
        ));
    }
    let result = Leg {
        phase: measured.name.clone(),
        request,
        published: leg.published.sent,
        per_s: leg.latency.len() as f64 / leg.published.elapsed_s.max(args.duration.as_secs_f64()),
        failed: leg.failed,
        first_error: leg.published.first_error.clone(),
        offsets: leg.offsets,
        latency_ms: Latency::of(&leg.latency),
    };
    run.phases.push(measured);
    Ok(result)
}

/// The report's lines for one kind of channel.
fn lines(kind: &str, redis: &Leg, api: &Leg) -> Vec<String> {
    let leg = |who: &str, leg: &Leg| {
        let l = &leg.latency_ms;
        format!(
            "  {kind} {who:<6} {:>9.0}/s  p50 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3} ms  ({}; {} failed)",
            leg.per_s, l.p50_ms, l.p99_ms, l.p999_ms, l.max_ms, leg.request, leg.failed
        )
    };
    let ratio = |a: f64, b: f64| {
        if b > 0.0 {
            format!("{:.2}×", a / b)
        } else {
            "—".into()
        }
    };
    vec![
        leg("redis", redis),
        leg("api", api),
        format!(
            "  {kind} api ÷ redis: rate {}, p50 {}, p99 {}",
            ratio(api.per_s, redis.per_s),
            ratio(api.latency_ms.p50_ms, redis.latency_ms.p50_ms),
            ratio(api.latency_ms.p99_ms, redis.latency_ms.p99_ms)
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Scenario};
    use clap::Parser;

    fn args(extra: &[&str]) -> ApiPublish {
        let mut argv = vec!["t", "api_publish", "--api-key", "k"];
        argv.extend(extra);
        match Cli::try_parse_from(argv).expect("parses").scenario {
            Scenario::ApiPublish(args) => args,
            other => panic!("not api_publish: {other:?}"),
        }
    }

    #[test]
    fn flags_are_bounded() {
        assert_eq!(check(&args(&[])), Ok(()));
        for bad in [
            &["--connections", "0"][..],
            &["--connections", "101"],
            &["--subscribers", "0"],
            &["--duration", "0s"],
            &["--duration", "11m"],
            &["--payload-bytes", "70000"],
            &["--history-prefix", "lt."],
            &["--peer", "nchan"],
            &["--publish", "fcall"],
        ] {
            assert!(check(&args(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_history_leg_needs_an_offset_on_every_answer() {
        let leg = |published, failed, offsets| Leg {
            phase: "p".into(),
            request: "r",
            published,
            per_s: published as f64,
            failed,
            first_error: None,
            offsets,
            latency_ms: Latency::default(),
        };
        assert!(leg(10, 0, 10).is_clean(true));
        assert!(!leg(10, 0, 9).is_clean(true));
        assert!(leg(10, 0, 0).is_clean(false));
        assert!(!leg(10, 0, 1).is_clean(false));
        assert!(!leg(10, 1, 0).is_clean(false));
        let text = lines("plain  ", &leg(100, 0, 0), &leg(50, 0, 0));
        assert!(text[2].contains("rate 0.50×"), "{}", text[2]);
    }
}
