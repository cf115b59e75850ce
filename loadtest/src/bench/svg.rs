//! The benchmark plot, as SVG written by hand: delivery latency percentiles (p50, p90,
//! p99, p99.9; median of the runs; log scale) per scenario for both peers, and the
//! server's RSS per idle connection against the 4 KiB target.

use std::fmt::Write;

use serde_json::Value;

use super::raw::Raw;

/// The peers plotted, in order: Herald and Nchan (herald-reference is in the tables).
const PLOTTED: [&str; 2] = ["herald", "nchan"];
use super::rows::{at, last_passed, phase_at};
use super::stats::{aggregate, Agg};

const WIDTH: f64 = 980.0;
const HEIGHT: f64 = 470.0;
/// Latency panel.
const LEFT: f64 = 70.0;
const RIGHT: f64 = 700.0;
const TOP: f64 = 70.0;
const BOTTOM: f64 = 370.0;
/// Memory panel.
const MEM_LEFT: f64 = 790.0;
const MEM_RIGHT: f64 = 950.0;

const PERCENTILES: [(&str, &str); 4] = [
    ("p50", "/latency_ms/p50_ms"),
    ("p90", "/latency_ms/p90_ms"),
    ("p99", "/latency_ms/p99_ms"),
    ("p99.9", "/latency_ms/p999_ms"),
];
/// Light to dark: p50 to p99.9.
const HERALD: [&str; 4] = ["#c6dbef", "#6baed6", "#2171b5", "#08306b"];
const NCHAN: [&str; 4] = ["#fdd0a2", "#fd8d3c", "#d94801", "#7f2704"];
const IDLE_TARGET_KIB: f64 = 4.0;
/// A white outline under value labels, so they stay readable over bars and lines.
const HALO: &str = r#"stroke="white" stroke-width="3" paint-order="stroke""#;

/// One cluster of bars: a measured phase of a scenario.
struct Group {
    label: &'static str,
    scenario: &'static str,
    phase: fn(&Value) -> Option<&Value>,
    /// The issue's p99 target for this phase, drawn as a dashed line.
    p99_target_ms: Option<f64>,
}

fn groups() -> [Group; 4] {
    [
        Group {
            label: "fanout 20/s",
            scenario: "fanout",
            phase: |v| phase_at(v, 20.0),
            p99_target_ms: None,
        },
        Group {
            label: "fanout 200/s",
            scenario: "fanout",
            phase: |v| phase_at(v, 200.0),
            p99_target_ms: Some(100.0),
        },
        Group {
            label: "saturate (last step passed)",
            scenario: "saturate",
            phase: last_passed,
            p99_target_ms: Some(100.0),
        },
        Group {
            label: "channels",
            scenario: "channels",
            phase: |v| v["phases"].get(0),
            p99_target_ms: Some(50.0),
        },
    ]
}

/// Median percentiles of one peer in one group; None where nothing was measured.
fn percentiles(raw: &Raw, peer: &str, group: &Group) -> Option<[f64; 4]> {
    let reports = raw.reports(peer, group.scenario);
    let mut out = [0.0; 4];
    for (slot, (_, pointer)) in out.iter_mut().zip(PERCENTILES) {
        let values: Vec<f64> = reports
            .iter()
            .filter_map(|r| (group.phase)(r).and_then(|p| at(p, pointer)))
            .filter(|v| *v > 0.0)
            .collect();
        *slot = aggregate(&values, Agg::Median)?.value;
    }
    Some(out)
}

pub fn plot(raw: &Raw) -> String {
    let groups = groups();
    let data: Vec<[Option<[f64; 4]>; 2]> = groups
        .iter()
        .map(|g| PLOTTED.map(|peer| percentiles(raw, peer, g)))
        .collect();
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="24" font-size="15" font-weight="bold">Delivery latency, publisher to client (median of runs, log scale)</text>"#
    );
    latency_panel(&mut svg, &groups, &data);
    memory_panel(&mut svg, raw);
    legend(&mut svg);
    let caption = [
        raw.meta("Date (UTC)").map(|d| format!("{d} UTC")),
        raw.meta("Herald").map(|h| format!("Herald {h}")),
        raw.meta("Nchan").map(|n| {
            let package = n.split(',').next().unwrap_or(n);
            format!(
                "Nchan {}",
                package.trim_start_matches("libnginx-mod-nchan ")
            )
        }),
        raw.meta("Mode")
            .filter(|m| m.starts_with("quick"))
            .map(|_| "QUICK MODE: not benchmark numbers".to_owned()),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join(" · ");
    let _ = writeln!(
        svg,
        r##"<text x="{LEFT}" y="{}" fill="#555">{}</text>"##,
        HEIGHT - 12.0,
        escape(&caption)
    );
    svg.push_str("</svg>\n");
    svg
}

fn latency_panel(svg: &mut String, groups: &[Group], data: &[[Option<[f64; 4]>; 2]]) {
    let values = data.iter().flatten().flatten().flatten().copied();
    let targets = groups.iter().filter_map(|g| g.p99_target_ms);
    let (lo, hi) = values
        .chain(targets)
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    // Whole decades, at least 0.01 ms (the histogram's resolution is 1 µs).
    let lo = if lo == f64::MAX {
        -1.0
    } else {
        lo.max(0.01).log10().floor()
    };
    let hi = if hi == f64::MIN {
        3.0
    } else {
        hi.log10().ceil().max(lo + 1.0)
    };
    let y = |ms: f64| BOTTOM - (ms.max(10f64.powf(lo)).log10() - lo) / (hi - lo) * (BOTTOM - TOP);
    for decade in (lo as i32)..=(hi as i32) {
        let ms = 10f64.powi(decade);
        let yy = y(ms);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{RIGHT}" y2="{yy:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT - 6.0,
            yy + 4.0,
            decade_label(decade)
        );
    }
    let _ = writeln!(
        svg,
        r##"<line x1="{LEFT}" y1="{BOTTOM}" x2="{RIGHT}" y2="{BOTTOM}" stroke="#333"/>"##
    );
    let slot = (RIGHT - LEFT) / groups.len() as f64;
    let bar = (slot - 30.0) / 9.0;
    for (g, (group, peers)) in groups.iter().zip(data).enumerate() {
        let x0 = LEFT + slot * g as f64 + 15.0;
        for (p, values) in peers.iter().enumerate() {
            let colours = if p == 0 { HERALD } else { NCHAN };
            let cx = x0 + p as f64 * 5.0 * bar;
            let name = if p == 0 { "Herald" } else { "Nchan" };
            let _ = writeln!(
                svg,
                r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#555" font-size="10">{name}</text>"##,
                cx + 2.0 * bar,
                BOTTOM + 14.0
            );
            let Some(values) = values else {
                let _ = writeln!(
                    svg,
                    r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#999" font-size="10">no data</text>"##,
                    cx + 2.0 * bar,
                    BOTTOM - 6.0
                );
                continue;
            };
            for (i, ms) in values.iter().enumerate() {
                let top = y(*ms);
                let _ = writeln!(
                    svg,
                    r#"<rect x="{:.1}" y="{top:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{name} {}: {} {}</title></rect>"#,
                    cx + i as f64 * bar,
                    bar - 1.0,
                    (BOTTOM - top).max(0.5),
                    colours[i],
                    escape(group.label),
                    PERCENTILES[i].0,
                    ms_text(*ms)
                );
            }
            let _ = writeln!(
                svg,
                r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="9" fill="#333" {HALO}>{}</text>"##,
                cx + 2.5 * bar,
                y(values[2]) - 3.0,
                ms_text(values[2])
            );
        }
        if let Some(target) = group.p99_target_ms {
            let yy = y(target);
            let _ = writeln!(
                svg,
                r##"<line x1="{:.1}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#c00" stroke-dasharray="5,3"/><text x="{:.1}" y="{:.1}" fill="#c00" font-size="10" {HALO}>p99 target {target} ms</text>"##,
                x0 - 5.0,
                x0 + 10.0 * bar,
                x0 - 5.0,
                yy - 4.0
            );
        }
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-weight="bold">{}</text>"#,
            x0 + 4.5 * bar,
            BOTTOM + 30.0,
            escape(group.label)
        );
    }
}

fn memory_panel(svg: &mut String, raw: &Raw) {
    let kib: Vec<Option<f64>> = PLOTTED
        .iter()
        .map(|peer| {
            let values: Vec<f64> = raw
                .reports(peer, "idle")
                .iter()
                .filter_map(|r| at(r, "/result/kib_per_connection"))
                .collect();
            aggregate(&values, Agg::Median).map(|s| s.value)
        })
        .collect();
    let top = kib.iter().flatten().fold(IDLE_TARGET_KIB, |m, v| m.max(*v)) * 1.15;
    let y = |v: f64| BOTTOM - v.max(0.0) / top * (BOTTOM - TOP);
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="24" font-size="15" font-weight="bold" text-anchor="middle">Server RSS per</text><text x="{:.1}" y="42" font-size="15" font-weight="bold" text-anchor="middle">idle connection</text>"#,
        (MEM_LEFT + MEM_RIGHT) / 2.0,
        (MEM_LEFT + MEM_RIGHT) / 2.0
    );
    let step = if top > 20.0 {
        10.0
    } else if top > 8.0 {
        2.0
    } else {
        1.0
    };
    let mut tick = 0.0;
    while tick <= top {
        let yy = y(tick);
        let _ = writeln!(
            svg,
            r##"<line x1="{MEM_LEFT}" y1="{yy:.1}" x2="{MEM_RIGHT}" y2="{yy:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{tick} KiB</text>"##,
            MEM_LEFT - 6.0,
            yy + 4.0
        );
        tick += step;
    }
    let width = (MEM_RIGHT - MEM_LEFT) / 2.0;
    for (p, value) in kib.iter().enumerate() {
        let x = MEM_LEFT + p as f64 * width + 12.0;
        let (name, colour) = if p == 0 {
            ("Herald", HERALD[2])
        } else {
            ("Nchan", NCHAN[2])
        };
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{name}</text>"#,
            x + (width - 24.0) / 2.0,
            BOTTOM + 14.0
        );
        let Some(value) = value else {
            let _ = writeln!(
                svg,
                r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#999" font-size="10">no data</text>"##,
                x + (width - 24.0) / 2.0,
                BOTTOM - 6.0
            );
            continue;
        };
        let _ = writeln!(
            svg,
            r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{colour}"><title>{name}: {value:.2} KiB per idle connection</title></rect><text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="11" {HALO}>{value:.2}</text>"#,
            y(*value),
            width - 24.0,
            BOTTOM - y(*value),
            x + (width - 24.0) / 2.0,
            y(*value) - 4.0
        );
    }
    let yy = y(IDLE_TARGET_KIB);
    let _ = writeln!(
        svg,
        r##"<line x1="{MEM_LEFT}" y1="{yy:.1}" x2="{MEM_RIGHT}" y2="{yy:.1}" stroke="#c00" stroke-dasharray="5,3"/><text x="{:.1}" y="60" fill="#c00" font-size="11" text-anchor="middle">dashed: target ≤ 4 KiB</text>"##,
        (MEM_LEFT + MEM_RIGHT) / 2.0
    );
    let _ = writeln!(
        svg,
        r##"<line x1="{MEM_LEFT}" y1="{BOTTOM}" x2="{MEM_RIGHT}" y2="{BOTTOM}" stroke="#333"/>"##
    );
    let n = raw
        .reports("herald", "idle")
        .first()
        .or(raw.reports("nchan", "idle").first())
        .and_then(|r| r["clients"].as_u64());
    if let Some(n) = n {
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#555">{} connections</text>"##,
            (MEM_LEFT + MEM_RIGHT) / 2.0,
            BOTTOM + 30.0,
            super::stats::thousands(n as f64)
        );
    }
}

fn legend(svg: &mut String) {
    let y = 48.0;
    let mut x = LEFT;
    for (name, colours) in [("Herald", HERALD), ("Nchan", NCHAN)] {
        let _ = writeln!(svg, r#"<text x="{x}" y="{}">{name}</text>"#, y + 9.0);
        x += 48.0;
        for (colour, (label, _)) in colours.iter().zip(PERCENTILES) {
            let _ = writeln!(
                svg,
                r#"<rect x="{x}" y="{y}" width="12" height="12" fill="{colour}"/><text x="{}" y="{}">{label}</text>"#,
                x + 15.0,
                y + 10.0
            );
            x += 52.0;
        }
        x += 20.0;
    }
}

/// An axis label: milliseconds below a second, seconds from there up.
fn decade_label(decade: i32) -> String {
    match decade {
        d if d >= 3 => format!("{} s", super::stats::thousands(10f64.powi(d - 3))),
        d => format!("{} ms", 10f64.powi(d)),
    }
}

fn ms_text(ms: f64) -> String {
    match ms {
        v if v >= 100.0 => format!("{v:.0}"),
        v if v >= 10.0 => format!("{v:.1}"),
        v => format!("{v:.2}"),
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_raw_directory_still_plots_axes_and_says_no_data() {
        let svg = plot(&Raw::default());
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("no data"));
        assert!(svg.contains("dashed: target ≤ 4 KiB"));
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(escape("a<b & c>"), "a&lt;b &amp; c&gt;");
        assert_eq!(decade_label(-2), "0.01 ms");
        assert_eq!(decade_label(2), "100 ms");
        assert_eq!(decade_label(3), "1 s");
        assert_eq!(decade_label(5), "100 s");
    }
}
