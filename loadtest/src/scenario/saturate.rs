//! `saturate`: N clients on one channel; the rate rises by a factor each step until a
//! step's p99 exceeds the limit or a delivery is lost; `--refine` more steps then bisect
//! between the last passed and the first failed rate. The answer is the highest
//! deliveries/s of a step that passed.
//!
//! With `--retries`, a step that failed on latency alone is measured again at the same
//! rate before the failure counts: on a shared 2-core machine one stall of the generator's
//! core can lift a 5 s step's p99 over the limit at a rate far below the server's. A
//! loss is never measured again. The report lists every repeat.
//!
//! A step also ends the climb when the publisher could not keep its rate (then the
//! publisher, not the server, was the limit, and the report says so).

use serde::Serialize;

use crate::cli::Saturate;
use crate::phase::measure;
use crate::plan::Layout;
use crate::publish::pace::Stream;
use crate::report::{Phase, RunReport};
use crate::run::Run;

#[derive(Debug, Serialize)]
struct Verdict {
    /// Deliveries/s of the last step that passed; 0 if none did.
    sustained_deliveries_per_s: f64,
    /// Its publication rate.
    sustained_rate: f64,
    steps_passed: usize,
    /// Index in the report's phases of the step the sustained rate comes from.
    sustained_phase: Option<usize>,
    stopped_because: String,
    /// The bisection's steps after the climb stopped: (publications/s, passed).
    refined: Vec<(f64, bool)>,
    /// Steps measured again after a latency failure: (publications/s, passed the repeat).
    repeated: Vec<(f64, bool)>,
}

pub async fn run(args: Saturate) -> Result<RunReport, String> {
    if args.start_rate.is_nan()
        || args.start_rate <= 0.0
        || args.step_factor.is_nan()
        || args.step_factor <= 1.0
    {
        return Err("--start-rate must be above 0 and --step-factor above 1".into());
    }
    let work = args.step_duration * args.max_steps;
    let mut run = Run::start(
        "saturate",
        &args.common,
        Layout::OneChannel,
        args.clients,
        work,
    )
    .await?;
    let limit_ms = args.p99_limit.as_secs_f64() * 1000.0;
    let mut verdict = Verdict {
        sustained_deliveries_per_s: 0.0,
        sustained_rate: 0.0,
        steps_passed: 0,
        sustained_phase: None,
        stopped_because: format!("reached --max-steps {}", args.max_steps),
        refined: Vec::new(),
        repeated: Vec::new(),
    };
    let mut rate = args.start_rate;
    // The first failed rate, when the failure is one a lower rate can bisect.
    let mut failed_at = None;
    for _ in 0..args.max_steps {
        let failure = trial(&mut run, &args, rate, limit_ms, &mut verdict).await?;
        if let Some(failure) = failure {
            verdict.stopped_because = format!("at {rate:.0}/s: {}", failure.why);
            failed_at = failure.bisectable().then_some(rate);
            break;
        }
        verdict.passed(&run, rate);
        rate *= args.step_factor;
    }
    if let Some(mut high) = failed_at.filter(|_| verdict.steps_passed > 0) {
        let mut low = verdict.sustained_rate;
        for _ in 0..args.refine {
            let rate = (low * high).sqrt();
            let failure = trial(&mut run, &args, rate, limit_ms, &mut verdict).await?;
            verdict.refined.push((rate, failure.is_none()));
            match failure {
                None => {
                    verdict.passed(&run, rate);
                    low = rate;
                }
                Some(failure) if failure.bisectable() => high = rate,
                Some(failure) => {
                    let why = failure.why;
                    verdict.stopped_because += &format!("; refining at {rate:.0}/s: {why}");
                    break;
                }
            }
        }
    }
    let mut text = vec![
        format!(
            "result       sustained {:.0} deliveries/s at {:.0} publications/s ({} steps passed)",
            verdict.sustained_deliveries_per_s, verdict.sustained_rate, verdict.steps_passed
        ),
        format!("             stopped: {}", verdict.stopped_because),
    ];
    for (label, steps, failed) in [
        ("refined", &verdict.refined, "failed"),
        (
            "repeated after a p99 failure",
            &verdict.repeated,
            "failed again",
        ),
    ] {
        if steps.is_empty() {
            continue;
        }
        let steps: Vec<String> = steps
            .iter()
            .map(|(rate, passed)| {
                format!("{rate:.0}/s {}", if *passed { "passed" } else { failed })
            })
            .collect();
        text.push(format!("             {label}: {}", steps.join(", ")));
    }
    // Loss at the breaking point is what the scenario looks for; loss at the first step
    // is a fault.
    let clean = verdict.steps_passed > 0;
    let value = serde_json::to_value(&verdict).map_err(|e| e.to_string())?;
    Ok(run.finish(clean, Some(value), text).await)
}

impl Verdict {
    /// The step just measured at `rate` passed.
    fn passed(&mut self, run: &Run, rate: f64) {
        let index = run.phases.len() - 1;
        // A bisection step may pass below a rate that passed before only by chance; the
        // answer stays the highest.
        if rate > self.sustained_rate {
            self.sustained_deliveries_per_s = run.phases[index].deliveries_per_s;
            self.sustained_rate = rate;
            self.sustained_phase = Some(index);
        }
        self.steps_passed += 1;
    }
}

/// Measures a step at `rate`, and again (up to `--retries` times) while it fails on
/// latency alone; returns why the last measurement failed, if it did.
async fn trial(
    run: &mut Run,
    args: &Saturate,
    rate: f64,
    limit_ms: f64,
    verdict: &mut Verdict,
) -> Result<Option<Failure>, String> {
    let mut failure = step_at(run, args, rate, limit_ms).await?;
    for _ in 0..args.retries {
        if !failure.as_ref().is_some_and(|f| f.cause == Cause::Latency) {
            break;
        }
        failure = step_at(run, args, rate, limit_ms).await?;
        verdict.repeated.push((rate, failure.is_none()));
    }
    Ok(failure)
}

/// Measures one step at `rate`; returns why it failed, if it did.
async fn step_at(
    run: &mut Run,
    args: &Saturate,
    rate: f64,
    limit_ms: f64,
) -> Result<Option<Failure>, String> {
    let stream = Stream {
        channels: vec![0],
        rate,
    };
    let name = format!("step {}: {rate:.0}/s", run.phases.len() + 1);
    let phase = measure(run, name, vec![stream], args.step_duration).await?;
    let failure = failure(&phase, limit_ms, rate, args.step_duration.as_secs_f64());
    run.phases.push(phase);
    Ok(failure)
}

/// Why a step failed.
struct Failure {
    why: String,
    cause: Cause,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    /// Connections ended: later steps would measure fewer clients.
    Ended,
    Loss,
    Duplicated,
    /// The publisher, not the server, was the limit.
    Publisher,
    /// Only the p99 was over the limit: nothing was lost.
    Latency,
}

impl Failure {
    /// Whether a lower rate can be tried after this failure.
    fn bisectable(&self) -> bool {
        !matches!(self.cause, Cause::Ended | Cause::Publisher)
    }
}

/// Why a step fails, if it does.
fn failure(phase: &Phase, limit_ms: f64, rate: f64, seconds: f64) -> Option<Failure> {
    let (cause, why) = if !phase.ended.is_empty() {
        (
            Cause::Ended,
            format!("connections ended: {:?}", phase.ended),
        )
    } else if phase.lost > 0 || phase.lagged > 0 {
        let (lost, lagged) = (phase.lost, phase.lagged);
        (
            Cause::Loss,
            format!("lost {lost} deliveries (lagged {lagged})"),
        )
    } else if phase.duplicates > 0 || phase.foreign > 0 {
        let (duplicated, foreign) = (phase.duplicates, phase.foreign);
        let why = format!("{duplicated} duplicated, {foreign} misrouted");
        (Cause::Duplicated, why)
    } else if (phase.published.sent as f64) < 0.95 * rate * seconds {
        let why = "the publisher could not keep the rate".to_owned();
        (Cause::Publisher, why)
    } else if phase.latency_ms.p99_ms > limit_ms {
        let p99 = phase.latency_ms.p99_ms;
        (
            Cause::Latency,
            format!("p99 {p99:.1} ms > {limit_ms:.0} ms"),
        )
    } else {
        return None;
    };
    Some(Failure { why, cause })
}
