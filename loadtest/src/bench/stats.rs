//! Aggregating one number over the runs of a scenario, and writing numbers for people.
//!
//! Each metric is aggregated on its own (the median p99 and the median p50 may come from
//! different runs). Losses and recovery times take the worst run instead: "no loss" and
//! "recovered within 1 s" are promises, and a median would hide the run that broke them.

/// How the runs' values become the one in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agg {
    Median,
    /// The highest: losses, recovery times.
    Worst,
    /// The lowest: connections still open.
    Least,
}

/// One metric over the runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub value: f64,
    pub min: f64,
    pub max: f64,
    /// Runs that had the metric.
    pub runs: usize,
}

/// `None` when no run had the metric. An even count takes the mean of the middle two.
pub fn aggregate(values: &[f64], agg: Agg) -> Option<Spread> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let (min, max) = (sorted[0], sorted[sorted.len() - 1]);
    let mid = sorted.len() / 2;
    let value = match agg {
        Agg::Worst => max,
        Agg::Least => min,
        Agg::Median if sorted.len() % 2 == 1 => sorted[mid],
        Agg::Median => (sorted[mid - 1] + sorted[mid]) / 2.0,
    };
    Some(Spread {
        value,
        min,
        max,
        runs: sorted.len(),
    })
}

/// What a number measures, for its format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Whole things: deliveries, connections, steps.
    Count,
    /// Per second, whole.
    Rate,
    Ms,
    /// Microseconds: server CPU per delivery.
    Us,
    Seconds,
    KiB,
    MiB,
    /// CPU time over wall time: 1.00 = one core busy throughout.
    Cores,
    /// One measurement over another (api_publish: the API ÷ Redis directly).
    Ratio,
}

impl Unit {
    /// The number with its unit; infinity (a recovery that never happened) is "never".
    pub fn format(self, value: f64) -> String {
        if value.is_infinite() {
            return "never".into();
        }
        match self.suffix() {
            "" => self.bare(value),
            suffix => format!("{} {suffix}", self.bare(value)),
        }
    }

    /// The number alone, for ranges after the value.
    pub fn bare(self, value: f64) -> String {
        match self {
            _ if value.is_infinite() => "never".into(),
            Unit::Count | Unit::Rate => thousands(value),
            Unit::Ms | Unit::Us | Unit::Seconds => significant(value),
            Unit::KiB | Unit::Cores => format!("{value:.2}"),
            Unit::MiB => format!("{value:.1}"),
            Unit::Ratio => format!("{value:.2}×"),
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Unit::Count | Unit::Rate | Unit::Cores | Unit::Ratio => "",
            Unit::Ms => "ms",
            Unit::Us => "µs",
            Unit::Seconds => "s",
            Unit::KiB => "KiB",
            Unit::MiB => "MiB",
        }
    }
}

/// 1234567.8 -> "1,234,568".
pub fn thousands(value: f64) -> String {
    let rounded = value.round();
    let digits = format!("{:.0}", rounded.abs());
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    if rounded < 0.0 {
        out.insert(0, '-');
    }
    out
}

/// Three significant digits for small numbers, whole numbers from 100 up.
fn significant(value: f64) -> String {
    match value.abs() {
        v if v >= 100.0 => thousands(value),
        v if v >= 10.0 => format!("{value:.1}"),
        v if v >= 1.0 => format!("{value:.2}"),
        _ => format!("{value:.3}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_worst_and_least() {
        let values = [3.0, 1.0, 2.0];
        assert_eq!(aggregate(&values, Agg::Median).unwrap().value, 2.0);
        assert_eq!(aggregate(&values, Agg::Worst).unwrap().value, 3.0);
        assert_eq!(aggregate(&values, Agg::Least).unwrap().value, 1.0);
        assert_eq!(aggregate(&[1.0, 4.0], Agg::Median).unwrap().value, 2.5);
        assert_eq!(aggregate(&[], Agg::Median), None);
        let spread = aggregate(&[5.0, f64::NAN, 7.0, 6.0], Agg::Median).unwrap();
        assert_eq!(
            (spread.value, spread.min, spread.max, spread.runs),
            (6.0, 5.0, 7.0, 3)
        );
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(thousands(1_000_000.4), "1,000,000");
        assert_eq!(thousands(999.6), "1,000");
        assert_eq!(thousands(12.0), "12");
        assert_eq!(thousands(-4321.0), "-4,321");
        assert_eq!(Unit::Ms.format(0.4567), "0.457 ms");
        assert_eq!(Unit::Ms.format(12.34), "12.3 ms");
        assert_eq!(Unit::Ms.format(1234.0), "1,234 ms");
        assert_eq!(Unit::Seconds.format(f64::INFINITY), "never");
        assert_eq!(Unit::KiB.format(3.456), "3.46 KiB");
        assert_eq!(Unit::Ratio.format(0.314), "0.31×");
        assert_eq!(Unit::Us.format(1.4286), "1.43 µs");
    }
}
