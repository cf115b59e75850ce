//! What the benchmark page shows per scenario: its rows, where each value sits in a
//! report, how runs are aggregated, and the targets of issue 5; and issue 14's targets,
//! ratios of Herald's rows against herald-reference's in the same run.
//!
//! Targets are stated for the parameters (fanout N=5,000 at 200/s for 10 s, ...).
//! A run at other parameters (`run.sh --quick`) is tabulated but not judged.

use std::rc::Rc;

use serde_json::Value;

use super::stats::{thousands, Agg, Unit};

/// Finds the part of a report a row reads (a phase, the report itself).
type Pick = Rc<dyn Fn(&Value) -> Option<&Value>>;
/// Reads a row's number from a report.
type Get = Box<dyn Fn(&Value) -> Option<f64>>;

/// One table row: a metric of one scenario.
pub struct Row {
    pub label: String,
    pub unit: Unit,
    pub agg: Agg,
    pub get: Get,
    pub target: Option<Target>,
}

/// A target from the issue, on one row.
#[derive(Clone, Copy)]
pub struct Target {
    pub text: &'static str,
    pub met: fn(f64) -> bool,
}

/// One scenario's table.
pub struct Section {
    pub scenario: &'static str,
    pub about: &'static str,
    /// The parameters of a run, in words.
    pub describe: fn(&Value) -> String,
    /// Whether a run used the parameters the targets are stated for.
    pub standard: fn(&Value) -> bool,
    pub rows: Vec<Row>,
    /// Measures something only Herald has (Nchan's cells say so).
    pub herald_only: bool,
}

/// Issue 14: one of Herald's rows against herald-reference's, in the same run.
pub struct Versus {
    pub scenario: &'static str,
    /// What the page calls it.
    pub metric: &'static str,
    /// The label of the scenario's row it reads.
    pub row: &'static str,
    /// Read as server CPU per delivery, in µs: the inverse of a "deliveries per server
    /// CPU-second" row (each run inverted, then aggregated).
    pub per_delivery: bool,
    pub target: &'static str,
    pub judge: Judge,
}

/// How a [`Versus`] target is judged.
#[derive(Clone, Copy)]
pub enum Judge {
    /// On Herald ÷ reference.
    Ratio(fn(f64) -> bool),
    /// On Herald's value alone (no loss).
    Herald(fn(f64) -> bool),
}

/// Issue 14's targets, in page order.
pub fn versus_reference() -> Vec<Versus> {
    let versus = |scenario, metric, row, target, judge| Versus {
        scenario,
        metric,
        row,
        per_delivery: false,
        target,
        judge,
    };
    let per_delivery = |scenario, metric, row, target, judge| Versus {
        per_delivery: true,
        ..versus(scenario, metric, row, target, judge)
    };
    vec![
        per_delivery(
            "channels",
            "server CPU per delivery",
            "deliveries per server CPU-second",
            "≤ 1.25× reference",
            Judge::Ratio(|r| r <= 1.25),
        ),
        versus(
            "channels",
            "latency p99",
            "latency p99",
            "≤ 1.25× reference",
            Judge::Ratio(|r| r <= 1.25),
        ),
        versus(
            "channels",
            "lost deliveries, worst run",
            "lost deliveries, worst run",
            "0",
            Judge::Herald(|v| v == 0.0),
        ),
        per_delivery(
            "fanout",
            "20/s: server CPU per delivery",
            "20/s: deliveries per server CPU-second",
            "≤ 1.15× reference",
            Judge::Ratio(|r| r <= 1.15),
        ),
        versus(
            "fanout",
            "200/s: deliveries per server CPU-second",
            "200/s: deliveries per server CPU-second",
            "≥ 1.0× reference",
            Judge::Ratio(|r| r >= 1.0),
        ),
        versus(
            "saturate",
            "sustained deliveries/s",
            "sustained deliveries/s",
            "≥ 1.0× reference",
            Judge::Ratio(|r| r >= 1.0),
        ),
        versus(
            "idle",
            "server RSS per connection",
            "server RSS per connection",
            "≤ 1.5× reference",
            Judge::Ratio(|r| r <= 1.5),
        ),
        versus(
            "connect",
            "server CPU for all connects and subscribes",
            "server CPU while connecting",
            "≤ 1.2× reference",
            Judge::Ratio(|r| r <= 1.2),
        ),
        versus(
            "connect",
            "time to connect and confirm all",
            "time to connect and confirm all",
            "≤ 1.1× reference",
            Judge::Ratio(|r| r <= 1.1),
        ),
    ]
}

/// Every scenario's section, in page order.
pub fn sections() -> Vec<Section> {
    vec![
        fanout(),
        fanout_history(),
        saturate(),
        channels(),
        idle(),
        connect(),
        outage(),
        resume(),
        api_publish(),
    ]
}

/// A number at a JSON pointer.
pub fn at(v: &Value, pointer: &str) -> Option<f64> {
    v.pointer(pointer).and_then(Value::as_f64)
}

/// The phase published at `rate` per second.
pub fn phase_at(v: &Value, rate: f64) -> Option<&Value> {
    v["phases"]
        .as_array()?
        .iter()
        .find(|p| p["rate"].as_f64().is_some_and(|r| (r - rate).abs() < 1e-6))
}

/// The phase named `name`.
pub fn phase_named<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    v["phases"]
        .as_array()?
        .iter()
        .find(|p| p["name"].as_str() == Some(name))
}

/// saturate: the step the sustained rate comes from (with `--refine`, not always the
/// last one that passed).
pub fn last_passed(v: &Value) -> Option<&Value> {
    if let Some(index) = v.pointer("/result/sustained_phase").and_then(Value::as_u64) {
        return v["phases"].get(usize::try_from(index).ok()?);
    }
    let passed = v.pointer("/result/steps_passed")?.as_u64()?;
    v["phases"].get(usize::try_from(passed).ok()?.checked_sub(1)?)
}

fn pick(f: impl Fn(&Value) -> Option<&Value> + 'static) -> Pick {
    Rc::new(f)
}

fn row(
    label: impl Into<String>,
    unit: Unit,
    agg: Agg,
    get: impl Fn(&Value) -> Option<f64> + 'static,
) -> Row {
    Row {
        label: label.into(),
        unit,
        agg,
        get: Box::new(get),
        target: None,
    }
}

impl Row {
    fn target(mut self, text: &'static str, met: fn(f64) -> bool) -> Row {
        self.target = Some(Target { text, met });
        self
    }
}

/// Targets on one measured phase.
#[derive(Default)]
struct PhaseTargets {
    rate: Option<Target>,
    lost: Option<Target>,
    p99: Option<Target>,
    per_cpu: Option<Target>,
}

/// The rows every publishing phase has, labelled with `prefix`.
fn phase_rows(prefix: &str, phase: Pick, targets: PhaseTargets) -> Vec<Row> {
    let field = |pointer: &'static str| {
        let phase = phase.clone();
        move |v: &Value| phase(v).and_then(|p| at(p, pointer))
    };
    let label = |what: &str| format!("{prefix}{what}");
    let published = {
        let phase = phase.clone();
        move |v: &Value| {
            let p = phase(v)?;
            let window = at(p, "/published/elapsed_s")?.max(at(p, "/duration_s")?);
            Some(at(p, "/published/sent")? / window)
        }
    };
    let mut rows = vec![
        row(
            label("deliveries/s"),
            Unit::Rate,
            Agg::Median,
            field("/deliveries_per_s"),
        ),
        row(
            label("lost deliveries, worst run"),
            Unit::Count,
            Agg::Worst,
            field("/lost"),
        ),
        row(
            label("latency p50"),
            Unit::Ms,
            Agg::Median,
            field("/latency_ms/p50_ms"),
        ),
        row(
            label("latency p90"),
            Unit::Ms,
            Agg::Median,
            field("/latency_ms/p90_ms"),
        ),
        row(
            label("latency p99"),
            Unit::Ms,
            Agg::Median,
            field("/latency_ms/p99_ms"),
        ),
        row(
            label("latency p99.9"),
            Unit::Ms,
            Agg::Median,
            field("/latency_ms/p999_ms"),
        ),
        row(
            label("server CPU, cores"),
            Unit::Cores,
            Agg::Median,
            field("/usage/server/cores"),
        ),
        row(
            label("deliveries per server CPU-second"),
            Unit::Rate,
            Agg::Median,
            field("/deliveries_per_server_cpu_s"),
        ),
        row(label("server RSS peak"), Unit::MiB, Agg::Median, {
            let get = field("/usage/server/rss_peak_kib");
            move |v: &Value| get(v).map(|kib| kib / 1024.0)
        }),
    ];
    rows[0].target = targets.rate;
    rows[1].target = targets.lost;
    rows[4].target = targets.p99;
    rows[7].target = targets.per_cpu;
    // Below the asked rate when the publisher could not keep up (Nchan's POSTs wait for
    // the server): then deliveries/s describes the publisher as much as the server.
    rows.push(row(
        label("publications/s achieved"),
        Unit::Rate,
        Agg::Median,
        published,
    ));
    rows
}

fn clients(v: &Value) -> u64 {
    v["clients"].as_u64().unwrap_or(0)
}

fn phases_in_words(v: &Value) -> String {
    let phases: Vec<String> = v["phases"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            format!(
                "{} for {} s",
                p["name"].as_str().unwrap_or("?"),
                p["duration_s"].as_f64().unwrap_or(0.0)
            )
        })
        .collect();
    format!(
        "{} clients; {}",
        thousands(clients(v) as f64),
        phases.join(", ")
    )
}

fn fanout() -> Section {
    let mut rows = phase_rows(
        "20/s: ",
        pick(|v| phase_at(v, 20.0)),
        PhaseTargets::default(),
    );
    rows.extend(phase_rows(
        "200/s: ",
        pick(|v| phase_at(v, 200.0)),
        PhaseTargets {
            rate: Some(Target {
                text: "≥ 1,000,000 (all 200 × 5,000 in the window)",
                met: |v| v >= 990_000.0,
            }),
            lost: Some(Target {
                text: "0",
                met: |v| v == 0.0,
            }),
            p99: Some(Target {
                text: "< 100 ms",
                met: |v| v < 100.0,
            }),
            per_cpu: Some(Target {
                text: "≥ 700,000",
                met: |v| v >= 700_000.0,
            }),
        },
    ));
    Section {
        scenario: "fanout",
        about: "N clients on one channel; every publication reaches all of them (deliveries/s = rate × N).",
        describe: phases_in_words,
        standard: |v| {
            clients(v) == 5000
                && phase_at(v, 200.0).and_then(|p| at(p, "/duration_s")) == Some(10.0)
        },
        rows,
        herald_only: false,
    }
}

fn saturate() -> Section {
    let step = |pointer: &'static str| move |v: &Value| last_passed(v).and_then(|p| at(p, pointer));
    let rows = vec![
        row("sustained deliveries/s", Unit::Rate, Agg::Median, |v| {
            at(v, "/result/sustained_deliveries_per_s")
        })
        .target("≥ 3,500,000 with p99 < 100 ms", |v| v >= 3_500_000.0),
        row("at publications/s", Unit::Rate, Agg::Median, |v| {
            at(v, "/result/sustained_rate")
        }),
        row("steps passed", Unit::Count, Agg::Median, |v| {
            at(v, "/result/steps_passed")
        }),
        row(
            "last step passed: latency p50",
            Unit::Ms,
            Agg::Median,
            step("/latency_ms/p50_ms"),
        ),
        row(
            "last step passed: latency p99",
            Unit::Ms,
            Agg::Median,
            step("/latency_ms/p99_ms"),
        ),
        row(
            "last step passed: latency p99.9",
            Unit::Ms,
            Agg::Median,
            step("/latency_ms/p999_ms"),
        ),
        row(
            "last step passed: server CPU, cores",
            Unit::Cores,
            Agg::Median,
            step("/usage/server/cores"),
        ),
        row(
            "last step passed: deliveries per server CPU-second",
            Unit::Rate,
            Agg::Median,
            step("/deliveries_per_server_cpu_s"),
        ),
    ];
    Section {
        scenario: "saturate",
        about: "N clients on one channel; the publication rate rises stepwise until a step's p99 \
                exceeds 100 ms or loses a delivery (or the publisher cannot keep the rate); the \
                result is the last step that passed.",
        describe: |v| {
            let steps = v["phases"].as_array().map_or(0, Vec::len);
            let first = v["phases"][0]["rate"].as_f64().unwrap_or(0.0);
            let second = v["phases"][1]["rate"].as_f64();
            let factor = second.map_or(String::new(), |s| format!(", ×{:.2} per step", s / first));
            let seconds = v["phases"][0]["duration_s"].as_f64().unwrap_or(0.0);
            format!(
                "{} clients; {steps} steps of {seconds} s from {first}/s{factor}",
                thousands(clients(v) as f64)
            )
        },
        standard: |v| clients(v) == 2000,
        rows,
        herald_only: false,
    }
}

fn channels() -> Section {
    let mut rows = phase_rows(
        "",
        pick(|v| v["phases"].get(0)),
        PhaseTargets {
            lost: Some(Target {
                text: "0",
                met: |v| v == 0.0,
            }),
            p99: Some(Target {
                text: "< 50 ms",
                met: |v| v < 50.0,
            }),
            ..PhaseTargets::default()
        },
    );
    rows.push(row(
        "Redis carried every channel, s after the last welcome",
        Unit::Seconds,
        Agg::Median,
        |v| at(v, "/connect/redis_subscribed_after_s"),
    ));
    Section {
        scenario: "channels",
        about: "N clients, each on its own channel plus one shared channel: publications spread \
                over the own channels (each reaches one client) and a few on the shared one.",
        describe: phases_in_words,
        standard: |v| {
            clients(v) == 5000
                && at(v, "/phases/0/rate") == Some(2005.0)
                && at(v, "/phases/0/duration_s") == Some(10.0)
        },
        rows,
        herald_only: false,
    }
}

fn idle() -> Section {
    let rows = vec![
        row("connections held", Unit::Count, Agg::Least, |v| {
            at(v, "/connect/connected")
        }),
        row("server RSS per connection", Unit::KiB, Agg::Median, |v| {
            at(v, "/result/kib_per_connection")
        })
        .target("≤ 4 KiB", |v| v <= 4.0),
        row(
            "server RSS before connecting",
            Unit::MiB,
            Agg::Median,
            |v| at(v, "/result/rss_before_kib").map(|k| k / 1024.0),
        ),
        row("server RSS after holding", Unit::MiB, Agg::Median, |v| {
            at(v, "/result/rss_after_kib").map(|k| k / 1024.0)
        }),
        row(
            "still open at the end, worst run",
            Unit::Count,
            Agg::Least,
            |v| at(v, "/result/live_at_end"),
        ),
        row("connect time", Unit::Seconds, Agg::Median, |v| {
            at(v, "/connect/elapsed_s")
        }),
    ];
    Section {
        scenario: "idle",
        about: "N subscribed connections held without traffic; the server's resident memory \
                growth divided by the connections, against a freshly started server.",
        describe: |v| {
            format!(
                "{} clients; held {:.0} s",
                thousands(clients(v) as f64),
                at(v, "/result/held_s").unwrap_or(0.0)
            )
        },
        // The issue asks for 20,000; a 20,000 hard open-files limit leaves 19,900 (see notes).
        standard: |v| clients(v) >= 19_900 && at(v, "/result/held_s").is_some_and(|s| s >= 9.5),
        rows,
        herald_only: false,
    }
}

fn connect() -> Section {
    let rows = vec![
        row(
            "clients connected, worst run",
            Unit::Count,
            Agg::Least,
            |v| at(v, "/connect/connected"),
        ),
        row(
            "time to connect and confirm all",
            Unit::Seconds,
            Agg::Median,
            |v| at(v, "/connect/elapsed_s"),
        )
        .target("< 0.4 s", |v| v < 0.4),
        row("connections/s", Unit::Rate, Agg::Median, |v| {
            at(v, "/connect/per_s")
        }),
        row("per client: p50", Unit::Ms, Agg::Median, |v| {
            at(v, "/connect/latency_ms/p50_ms")
        }),
        row("per client: p99", Unit::Ms, Agg::Median, |v| {
            at(v, "/connect/latency_ms/p99_ms")
        }),
        row("per client: max", Unit::Ms, Agg::Median, |v| {
            at(v, "/connect/latency_ms/max_ms")
        }),
        row(
            "server CPU while connecting",
            Unit::Seconds,
            Agg::Median,
            |v| at(v, "/connect/usage/server/cpu_s"),
        ),
        row(
            "Redis carried the channel, s after the last welcome",
            Unit::Seconds,
            Agg::Median,
            |v| at(v, "/connect/redis_subscribed_after_s"),
        ),
    ];
    Section {
        scenario: "connect",
        about: "Time for N clients to connect and be confirmed subscribed (Herald: the `welcome` \
                frame; Nchan: the completed upgrade), 500 attempts in flight.",
        describe: |v| format!("{} clients", thousands(clients(v) as f64)),
        standard: |v| clients(v) == 10_000,
        rows,
        herald_only: false,
    }
}

/// A time at `pointer` in a run's result; a run that never got there has null, which is
/// the worst possible value (a run without a result has none at all).
fn or_never(pointer: &'static str) -> impl Fn(&Value) -> Option<f64> {
    move |v: &Value| {
        v.pointer("/result")?;
        Some(at(v, pointer).unwrap_or(f64::INFINITY))
    }
}

fn outage() -> Section {
    let rows = vec![
        row(
            "Redis down (SHUTDOWN to answering PING)",
            Unit::Seconds,
            Agg::Median,
            |v| at(v, "/result/down_s"),
        ),
        row(
            "every channel resubscribed, s after Redis answered, worst run",
            Unit::Seconds,
            Agg::Worst,
            or_never("/result/resubscribed_after_s"),
        )
        .target("≤ 1 s", |v| v <= 1.0),
        row(
            "every client reached, s after Redis answered, worst run",
            Unit::Seconds,
            Agg::Worst,
            or_never("/result/all_reached_after_s"),
        )
        .target("≤ 1 s", |v| v <= 1.0),
        row(
            "clients still connected, worst run",
            Unit::Count,
            Agg::Least,
            |v| at(v, "/result/live_at_end"),
        ),
        row("probe rounds", Unit::Count, Agg::Median, |v| {
            at(v, "/result/probe_rounds")
        }),
    ];
    Section {
        scenario: "outage",
        about: "N clients over 2,000 channels; Redis is shut down and started again; the time \
                until every channel is subscribed again and a publication reaches every client \
                (Herald only: the scenario watches Herald's own Redis subscriptions).",
        describe: |v| {
            format!(
                "{} clients; Redis down {:.2} s",
                thousands(clients(v) as f64),
                at(v, "/result/down_s").unwrap_or(0.0)
            )
        },
        standard: |v| clients(v) == 5000,
        rows,
        herald_only: true,
    }
}

fn fanout_history() -> Section {
    let mut rows = phase_rows(
        "20/s: ",
        pick(|v| phase_at(v, 20.0)),
        PhaseTargets::default(),
    );
    rows.extend(phase_rows(
        "200/s: ",
        pick(|v| phase_at(v, 200.0)),
        PhaseTargets::default(),
    ));
    Section {
        scenario: "fanout_history",
        about: "fanout on a history channel: the same N clients and rates, Herald started with \
                `--history`, every publication through `FCALL herald_publish` (kept in Redis, \
                delivered with an offset) instead of `PUBLISH`. Beside fanout, the end-to-end \
                cost of history (Herald only: Nchan has no equivalent here).",
        describe: phases_in_words,
        standard: |v| clients(v) == 5000,
        rows,
        herald_only: true,
    }
}

fn resume() -> Section {
    let wave = |pointer: &'static str| move |v: &Value| at(v, &format!("/result/wave/{pointer}"));
    let failed = |v: &Value| {
        let failed = v.pointer("/result/wave/failed")?.as_object()?;
        Some(failed.values().filter_map(Value::as_f64).sum())
    };
    let calls = |name: &'static str| {
        move |v: &Value| {
            v.pointer("/result/redis/calls")?;
            Some(at(v, &format!("/result/redis/calls/{name}")).unwrap_or(0.0))
        }
    };
    let wave_phase = pick(|v| v["phases"].get(1));
    let phase = |pointer: &'static str| {
        let wave_phase = wave_phase.clone();
        move |v: &Value| wave_phase(v).and_then(|p| at(p, pointer))
    };
    let rows = vec![
        row(
            "every client caught up, s after the first drop, worst run",
            Unit::Seconds,
            Agg::Worst,
            or_never("/result/all_caught_up_after_s"),
        ),
        row(
            "per client: drop to caught up, p50",
            Unit::Ms,
            Agg::Median,
            wave("back_live_ms/p50_ms"),
        ),
        row(
            "per client: drop to caught up, p99",
            Unit::Ms,
            Agg::Median,
            wave("back_live_ms/p99_ms"),
        ),
        row(
            "per client: drop to welcome, p99",
            Unit::Ms,
            Agg::Median,
            wave("reconnect_ms/p99_ms"),
        ),
        row(
            "per client: subscribe to ok, p99",
            Unit::Ms,
            Agg::Median,
            wave("answer_ms/p99_ms"),
        ),
        row(
            "recovered: true, worst run",
            Unit::Count,
            Agg::Least,
            wave("recovered"),
        ),
        row(
            "recovered: false, worst run",
            Unit::Count,
            Agg::Worst,
            wave("not_recovered"),
        ),
        row(
            "clients that could not come back, worst run",
            Unit::Count,
            Agg::Worst,
            failed,
        ),
        row("lost deliveries, worst run", Unit::Count, Agg::Worst, |v| {
            at(v, "/result/lost")
        }),
        row(
            "… of them after recovered: true, worst run",
            Unit::Count,
            Agg::Worst,
            wave("lost_recovered"),
        ),
        row(
            "duplicated deliveries, worst run",
            Unit::Count,
            Agg::Worst,
            |v| at(v, "/result/duplicated"),
        ),
        row(
            "wave: latency p99",
            Unit::Ms,
            Agg::Median,
            phase("/latency_ms/p99_ms"),
        ),
        row(
            "wave: server CPU, cores",
            Unit::Cores,
            Agg::Median,
            phase("/usage/server/cores"),
        ),
        row("wave: server RSS peak", Unit::MiB, Agg::Median, {
            let get = phase("/usage/server/rss_peak_kib");
            move |v: &Value| get(v).map(|kib| kib / 1024.0)
        }),
        row(
            "Redis calls while clients came back",
            Unit::Count,
            Agg::Median,
            |v| at(v, "/result/redis/total"),
        ),
        row("… of them FCALL", Unit::Count, Agg::Median, calls("fcall")),
        row(
            "… FCALL_RO (history reads)",
            Unit::Count,
            Agg::Median,
            calls("fcall_ro"),
        ),
        row("… XRANGE", Unit::Count, Agg::Median, calls("xrange")),
        row("… HGET", Unit::Count, Agg::Median, calls("hget")),
        row(
            "Redis calls beyond steady publishing",
            Unit::Count,
            Agg::Median,
            |v| at(v, "/result/redis/beyond_steady_total"),
        ),
    ];
    Section {
        scenario: "resume",
        about: "N clients on one history channel, publications at 200/s through \
                `FCALL herald_publish`; after a warm-up every client drops its connection \
                (turns spread over one second), reconnects and subscribes with `since`. Time \
                until every client is back on the live stream, what was lost or repeated, and \
                what Redis ran meanwhile (Herald only: Nchan has no resume from an offset).",
        describe: |v| {
            format!(
                "{} clients; {}/s; drops over {} s",
                thousands(clients(v) as f64),
                at(v, "/result/rate").unwrap_or(0.0),
                at(v, "/result/spread_s").unwrap_or(0.0)
            )
        },
        standard: |v| clients(v) == 5000,
        rows,
        herald_only: true,
    }
}

/// api_publish: per kind of channel, the API beside Redis directly.
fn api_publish_rows(kind: &'static str, redis: &'static str, p99: Option<Target>) -> Vec<Row> {
    let leg = move |who: &'static str, what: &'static str| {
        move |v: &Value| at(v, &format!("/result/{kind}/{who}/{what}"))
    };
    let api_phase = if kind == "plain" {
        "api POST"
    } else {
        "api POST (history)"
    };
    let mut api_p99 = row(
        format!("{kind}: API request latency p99"),
        Unit::Ms,
        Agg::Median,
        leg("api", "latency_ms/p99_ms"),
    );
    api_p99.target = p99;
    vec![
        row(
            format!("{kind}: API publications/s"),
            Unit::Rate,
            Agg::Median,
            leg("api", "per_s"),
        ),
        row(
            format!("{kind}: {redis} publications/s"),
            Unit::Rate,
            Agg::Median,
            leg("redis", "per_s"),
        ),
        row(
            format!("{kind}: API ÷ {redis}, publications/s"),
            Unit::Ratio,
            Agg::Median,
            leg("api_vs_redis", "rate"),
        ),
        row(
            format!("{kind}: API request latency p50"),
            Unit::Ms,
            Agg::Median,
            leg("api", "latency_ms/p50_ms"),
        ),
        api_p99,
        row(
            format!("{kind}: API request latency p99.9"),
            Unit::Ms,
            Agg::Median,
            leg("api", "latency_ms/p999_ms"),
        ),
        row(
            format!("{kind}: {redis} latency p50"),
            Unit::Ms,
            Agg::Median,
            leg("redis", "latency_ms/p50_ms"),
        ),
        row(
            format!("{kind}: {redis} latency p99"),
            Unit::Ms,
            Agg::Median,
            leg("redis", "latency_ms/p99_ms"),
        ),
        row(
            format!("{kind}: {redis} latency p99.9"),
            Unit::Ms,
            Agg::Median,
            leg("redis", "latency_ms/p999_ms"),
        ),
        row(
            format!("{kind}: API ÷ {redis}, p99"),
            Unit::Ratio,
            Agg::Median,
            leg("api_vs_redis", "p99"),
        ),
        row(
            format!("{kind}: API leg, server CPU, cores"),
            Unit::Cores,
            Agg::Median,
            move |v| phase_named(v, api_phase).and_then(|p| at(p, "/usage/server/cores")),
        ),
        row(
            format!("{kind}: API leg, delivery latency p99 (stamp to subscriber)"),
            Unit::Ms,
            Agg::Median,
            move |v| phase_named(v, api_phase).and_then(|p| at(p, "/latency_ms/p99_ms")),
        ),
    ]
}

fn api_publish() -> Section {
    let mut rows = api_publish_rows(
        "plain",
        "PUBLISH",
        Some(Target {
            text: "< 5 ms at C=16",
            met: |v| v < 5.0,
        }),
    );
    rows.extend(api_publish_rows("history", "FCALL", None));
    let sum = |pointer: &'static str| {
        move |v: &Value| {
            let phases = v["phases"].as_array()?;
            Some(phases.iter().filter_map(|p| at(p, pointer)).sum())
        }
    };
    rows.push(
        row(
            "lost deliveries, all legs, worst run",
            Unit::Count,
            Agg::Worst,
            sum("/lost"),
        )
        .target("0", |v| v == 0.0),
    );
    rows.push(row(
        "failed requests, all legs, worst run",
        Unit::Count,
        Agg::Worst,
        |v| {
            let legs = ["plain/redis", "plain/api", "history/redis", "history/api"];
            let failed = legs.map(|leg| at(v, &format!("/result/{leg}/failed")));
            failed
                .iter()
                .any(Option::is_some)
                .then(|| failed.iter().flatten().sum())
        },
    ));
    Section {
        scenario: "api_publish",
        about: "Herald's server API (issue 11): C keep-alive HTTP/1.1 connections, each \
                POSTing one publication to `/api/publish` at a time (the next once the answer \
                is read), for a fixed time; beside it the same from C connections straight \
                to Redis, one command at a time each (`PUBLISH`, what `redis-cli PUBLISH` \
                does), which is the floor the API adds to. Then on history channels: the API \
                (answered with an offset) beside `FCALL herald_publish`. Latency is per \
                request, send to the whole answer; a few WebSocket subscribers take every \
                channel and must lose nothing (Herald only: the API is Herald's).",
        describe: |v| {
            format!(
                "{} connections per leg, {} s per leg, {}-byte payloads; {} subscribers on \
                 every channel",
                at(v, "/result/connections").unwrap_or(0.0),
                at(v, "/result/duration_s").unwrap_or(0.0),
                at(v, "/result/payload_bytes").unwrap_or(0.0),
                at(v, "/result/subscribers").unwrap_or(0.0)
            )
        },
        standard: |v| {
            at(v, "/result/connections") == Some(16.0) && at(v, "/result/duration_s") == Some(10.0)
        },
        rows,
        herald_only: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fanout_report(lost: u64, p99: f64) -> Value {
        json!({
            "clients": 5000,
            "phases": [
                {"name": "20/s", "rate": 20.0, "duration_s": 10.0, "lost": 0,
                 "latency_ms": {"p99_ms": 1.0}},
                {"name": "200/s", "rate": 200.0, "duration_s": 10.0, "lost": lost,
                 "deliveries_per_s": 1_000_000.0, "latency_ms": {"p99_ms": p99},
                 "usage": {"server": {"rss_peak_kib": 2048}}}
            ]
        })
    }

    #[test]
    fn fanout_rows_read_the_phase_of_their_rate() {
        let section = fanout();
        let report = fanout_report(7, 42.0);
        let get = |label: &str| {
            let row = section.rows.iter().find(|r| r.label == label).expect(label);
            (row.get)(&report)
        };
        assert_eq!(get("200/s: latency p99"), Some(42.0));
        assert_eq!(get("20/s: latency p99"), Some(1.0));
        assert_eq!(get("200/s: lost deliveries, worst run"), Some(7.0));
        assert_eq!(get("200/s: server RSS peak"), Some(2.0));
        assert_eq!(get("20/s: server RSS peak"), None);
        assert!((section.standard)(&report));
        let targets: Vec<&str> = section
            .rows
            .iter()
            .filter_map(|r| r.target.map(|t| t.text))
            .collect();
        assert_eq!(targets.len(), 4);
    }

    #[test]
    fn every_reference_target_reads_a_row_of_its_scenario() {
        let sections = sections();
        let versus = versus_reference();
        assert_eq!(versus.len(), 9);
        for v in &versus {
            let section = sections.iter().find(|s| s.scenario == v.scenario);
            let row = section.and_then(|s| s.rows.iter().find(|r| r.label == v.row));
            let row = row.unwrap_or_else(|| panic!("{}: no row {}", v.scenario, v.row));
            if v.per_delivery {
                assert!(row.label.ends_with("deliveries per server CPU-second"));
            }
        }
    }

    #[test]
    fn saturate_reads_the_last_step_that_passed() {
        let report = json!({
            "clients": 2000,
            "phases": [{"latency_ms": {"p99_ms": 5.0}}, {"latency_ms": {"p99_ms": 150.0}}],
            "result": {"steps_passed": 1, "sustained_deliveries_per_s": 200000.0}
        });
        assert_eq!(
            last_passed(&report).and_then(|p| at(p, "/latency_ms/p99_ms")),
            Some(5.0)
        );
        let none = json!({"phases": [{}], "result": {"steps_passed": 0}});
        assert!(last_passed(&none).is_none());
        // Refined: pass, fail, then a bisection step passed between them.
        let refined = json!({
            "phases": [
                {"latency_ms": {"p99_ms": 5.0}},
                {"latency_ms": {"p99_ms": 150.0}},
                {"latency_ms": {"p99_ms": 90.0}}
            ],
            "result": {"steps_passed": 2, "sustained_phase": 2}
        });
        assert_eq!(
            last_passed(&refined).and_then(|p| at(p, "/latency_ms/p99_ms")),
            Some(90.0)
        );
    }

    #[test]
    fn an_outage_that_never_recovered_is_the_worst_value() {
        let section = outage();
        let reached = &section.rows[2];
        let never = json!({"result": {"all_reached_after_s": null}});
        assert_eq!((reached.get)(&never), Some(f64::INFINITY));
        assert_eq!((reached.get)(&json!({"clients": 5})), None);
        assert!(!(reached.target.unwrap().met)(f64::INFINITY));
    }

    #[test]
    fn resume_rows_read_the_wave() {
        let section = resume();
        let report = json!({
            "clients": 5000,
            "phases": [{}, {"latency_ms": {"p99_ms": 80.0}}],
            "result": {"all_caught_up_after_s": null, "lost": 3,
                       "wave": {"recovered": 4990, "failed": {"timeout": 10}},
                       "redis": {"total": 900, "calls": {"fcall": 200}}}
        });
        let get = |label: &str| {
            let row = section.rows.iter().find(|r| r.label == label).expect(label);
            (row.get)(&report)
        };
        assert_eq!(
            get("every client caught up, s after the first drop, worst run"),
            Some(f64::INFINITY)
        );
        assert_eq!(
            get("clients that could not come back, worst run"),
            Some(10.0)
        );
        assert_eq!(get("wave: latency p99"), Some(80.0));
        assert_eq!(get("… of them FCALL"), Some(200.0));
        assert_eq!(get("… FCALL_RO (history reads)"), Some(0.0));
        assert_eq!(get("lost deliveries, worst run"), Some(3.0));
        assert!(section.herald_only);
    }

    #[test]
    fn api_publish_rows_read_legs_ratios_and_phases() {
        let section = api_publish();
        let leg = |per_s: f64, p99: f64| {
            json!({"per_s": per_s, "failed": 0,
            "latency_ms": {"p50_ms": p99 / 2.0, "p99_ms": p99}})
        };
        let report = json!({
            "phases": [{"name": "redis PUBLISH", "lost": 0},
                       {"name": "api POST", "lost": 2, "usage": {"server": {"cores": 0.9}}}],
            "result": {"connections": 16, "duration_s": 10.0,
                "plain": {"redis": leg(40_000.0, 1.0), "api": leg(10_000.0, 3.0),
                          "api_vs_redis": {"rate": 0.25, "p99": 3.0}}}
        });
        let get = |label: &str| {
            let row = section.rows.iter().find(|r| r.label == label).expect(label);
            (row.get)(&report)
        };
        assert_eq!(get("plain: API publications/s"), Some(10_000.0));
        assert_eq!(get("plain: PUBLISH latency p99"), Some(1.0));
        assert_eq!(get("plain: API ÷ PUBLISH, p99"), Some(3.0));
        assert_eq!(get("plain: API leg, server CPU, cores"), Some(0.9));
        assert_eq!(get("history: API publications/s"), None);
        assert_eq!(get("lost deliveries, all legs, worst run"), Some(2.0));
        assert_eq!(get("failed requests, all legs, worst run"), Some(0.0));
        let p99 = section
            .rows
            .iter()
            .find(|r| r.label == "plain: API request latency p99")
            .and_then(|r| r.target)
            .expect("the issue's target");
        assert!((p99.met)(3.0) && !(p99.met)(5.0));
        assert!((section.standard)(&report));
        assert!(section.herald_only);
    }
}
