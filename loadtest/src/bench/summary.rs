//! One line per `--json` report, for the smoke run: scenario, peer, clean or not, and the
//! numbers that matter for it. `--strict` also fails a report with any phase that lost,
//! lagged, duplicated or misrouted a delivery.

use std::fmt::Write;

use serde_json::Value;

use super::rows::at;
use super::stats::{thousands, Unit};

/// The line for one report, and why it fails under --strict (if it does).
pub fn line(report: &Value) -> (String, Option<String>) {
    let scenario = report["scenario"].as_str().unwrap_or("?");
    let clean = report["clean"] == Value::Bool(true);
    let peer = match (report["peer"].as_str(), report["redis"].as_str()) {
        (Some(peer), Some("cluster")) => format!("{peer}+cluster"),
        (peer, _) => peer.unwrap_or("?").to_owned(),
    };
    let mut out = format!(
        "{scenario:<9} {peer:<7} {:<5} {:>6} clients, connect {}",
        if clean { "clean" } else { "NOT CLEAN" },
        thousands(at(report, "/clients").unwrap_or(0.0)),
        Unit::Seconds.format(at(report, "/connect/elapsed_s").unwrap_or(0.0)),
    );
    let mut faults = Vec::new();
    if !clean {
        faults.push("not clean".to_owned());
    }
    let failed = at(report, "/connect/failed").unwrap_or(0.0);
    if failed > 0.0 {
        let _ = write!(out, " ({failed} failed)");
    }
    for phase in report["phases"].as_array().into_iter().flatten() {
        let n = |key: &str| phase[key].as_u64().unwrap_or(0);
        let _ = write!(
            out,
            " | {}: {} deliveries/s, lost {}, p99 {}",
            phase["name"].as_str().unwrap_or("?"),
            thousands(at(phase, "/deliveries_per_s").unwrap_or(0.0)),
            n("lost"),
            Unit::Ms.format(at(phase, "/latency_ms/p99_ms").unwrap_or(0.0)),
        );
        let bad = n("lost") + n("lagged") + n("duplicates") + n("foreign");
        if bad > 0 {
            faults.push(format!(
                "phase {}: lost {} lagged {} duplicated {} misrouted {}",
                phase["name"].as_str().unwrap_or("?"),
                n("lost"),
                n("lagged"),
                n("duplicates"),
                n("foreign")
            ));
        }
    }
    let r = |key: &str| at(report, &format!("/result/{key}"));
    let seconds = |v: Option<f64>| v.map_or("never".into(), |s| Unit::Seconds.format(s));
    match scenario {
        "saturate" => {
            let _ = write!(
                out,
                " | sustained {} deliveries/s ({} steps passed)",
                thousands(r("sustained_deliveries_per_s").unwrap_or(0.0)),
                r("steps_passed").unwrap_or(0.0)
            );
        }
        "idle" => {
            let _ = write!(
                out,
                " | {} per connection, {} still open",
                Unit::KiB.format(r("kib_per_connection").unwrap_or(0.0)),
                thousands(r("live_at_end").unwrap_or(0.0))
            );
        }
        "connect" => {
            let _ = write!(
                out,
                " | {}/s, per client p99 {}",
                thousands(at(report, "/connect/per_s").unwrap_or(0.0)),
                Unit::Ms.format(at(report, "/connect/latency_ms/p99_ms").unwrap_or(0.0))
            );
        }
        "outage" => {
            let _ = write!(
                out,
                " | resubscribed after {}, all reached after {}, {} still connected",
                seconds(r("resubscribed_after_s")),
                seconds(r("all_reached_after_s")),
                thousands(r("live_at_end").unwrap_or(0.0))
            );
        }
        "resume" => {
            let _ = write!(
                out,
                " | all caught up {} after the first drop, recovered {} of {}, failed {}, \
                 redis calls beyond publishing {}",
                seconds(r("all_caught_up_after_s")),
                thousands(r("wave/recovered").unwrap_or(0.0)),
                thousands(r("wave/dropped").unwrap_or(0.0)),
                thousands(
                    report
                        .pointer("/result/wave/failed")
                        .and_then(Value::as_object)
                        .map_or(0.0, |f| f.values().filter_map(Value::as_f64).sum())
                ),
                thousands(r("redis/beyond_steady_total").unwrap_or(0.0).max(0.0))
            );
        }
        "api_publish" => {
            for (kind, redis) in [("plain", "PUBLISH"), ("history", "FCALL")] {
                let leg = |who: &str, what: &str| r(&format!("{kind}/{who}/{what}"));
                let _ = write!(
                    out,
                    " | {kind}: API {}/s p99 {} vs {redis} {}/s p99 {}",
                    thousands(leg("api", "per_s").unwrap_or(0.0)),
                    Unit::Ms.format(leg("api", "latency_ms/p99_ms").unwrap_or(0.0)),
                    thousands(leg("redis", "per_s").unwrap_or(0.0)),
                    Unit::Ms.format(leg("redis", "latency_ms/p99_ms").unwrap_or(0.0)),
                );
            }
        }
        _ => {}
    }
    if report["publish"] == "fcall" {
        out.push_str(" | via FCALL herald_publish");
    }
    let fault = (!faults.is_empty()).then(|| faults.join("; "));
    (out, fault)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_clean_fanout_passes_and_a_loss_fails() {
        let mut report = json!({
            "scenario": "fanout", "peer": "herald", "clients": 50, "clean": true,
            "connect": {"elapsed_s": 0.01, "failed": 0},
            "phases": [{"name": "20/s", "deliveries_per_s": 1000.0, "lost": 0,
                        "latency_ms": {"p99_ms": 2.5}}]
        });
        let (text, fault) = line(&report);
        assert_eq!(fault, None);
        assert!(text.contains("fanout    herald  clean"), "{text}");
        assert!(
            text.contains("20/s: 1,000 deliveries/s, lost 0, p99 2.50 ms"),
            "{text}"
        );
        report["phases"][0]["lost"] = json!(3);
        let (_, fault) = line(&report);
        assert_eq!(
            fault.as_deref(),
            Some("phase 20/s: lost 3 lagged 0 duplicated 0 misrouted 0")
        );
    }

    #[test]
    fn a_resume_line_names_its_wave() {
        let report = json!({
            "scenario": "resume", "peer": "herald", "publish": "fcall", "clients": 50,
            "clean": true, "connect": {"elapsed_s": 0.01}, "phases": [],
            "result": {"all_caught_up_after_s": 1.25,
                       "wave": {"dropped": 50, "recovered": 50, "failed": {"timeout": 0}},
                       "redis": {"beyond_steady_total": 2.4}}
        });
        let (text, fault) = line(&report);
        assert!(
            text.contains(
                "all caught up 1.25 s after the first drop, recovered 50 of 50, failed 0"
            ),
            "{text}"
        );
        assert!(text.ends_with("| via FCALL herald_publish"), "{text}");
        assert_eq!(fault, None);
    }

    #[test]
    fn an_api_publish_line_compares_the_api_with_redis() {
        let leg = |per_s: f64, p99: f64| json!({"per_s": per_s, "latency_ms": {"p99_ms": p99}});
        let report = json!({
            "scenario": "api_publish", "peer": "herald", "publish": "api", "clients": 4,
            "clean": true, "connect": {"elapsed_s": 0.01}, "phases": [],
            "result": {"plain": {"api": leg(9000.0, 2.5), "redis": leg(30000.0, 0.9)},
                       "history": {"api": leg(7000.0, 3.0), "redis": leg(20000.0, 1.2)}}
        });
        let (text, fault) = line(&report);
        assert!(
            text.contains("plain: API 9,000/s p99 2.50 ms vs PUBLISH 30,000/s p99 0.900 ms"),
            "{text}"
        );
        assert!(
            text.contains("history: API 7,000/s p99 3.00 ms vs FCALL"),
            "{text}"
        );
        assert_eq!(fault, None);
    }

    #[test]
    fn an_outage_that_never_recovered_says_so() {
        let report = json!({
            "scenario": "outage", "peer": "herald", "clients": 50, "clean": false,
            "connect": {"elapsed_s": 0.01}, "phases": [],
            "result": {"resubscribed_after_s": 0.2, "all_reached_after_s": null, "live_at_end": 50}
        });
        let (text, fault) = line(&report);
        assert!(text.contains("all reached after never"), "{text}");
        assert_eq!(fault.as_deref(), Some("not clean"));
    }
}
