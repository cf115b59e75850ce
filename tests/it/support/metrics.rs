//! A parser for the Prometheus text exposition format (0.0.4), enough for Herald's scrape.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// One parsed /metrics answer.
#[derive(Debug, Clone)]
pub struct Scrape {
    pub samples: Vec<Sample>,
    /// Family name -> type, from the `# TYPE` lines.
    pub types: BTreeMap<String, String>,
    pub text: String,
}

impl Scrape {
    /// Parses the exposition; panics on a line it cannot read (the format is the contract).
    pub fn parse(text: &str) -> Scrape {
        let mut samples = Vec::new();
        let mut types = BTreeMap::new();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                    types.insert(name.to_owned(), kind.to_owned());
                }
            } else if !line.starts_with('#') {
                samples.push(
                    parse_sample(line)
                        .unwrap_or_else(|| panic!("unparsable metrics line {line:?} in\n{text}")),
                );
            }
        }
        Scrape {
            samples,
            types,
            text: text.to_owned(),
        }
    }

    /// The value of the sample `name` whose labels include every pair of `labels`.
    pub fn try_value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
    }

    /// Like `try_value`, but a missing sample fails the test, showing the scrape.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.try_value(name, labels)
            .unwrap_or_else(|| panic!("no sample {name}{labels:?} in\n{}", self.text))
    }

    /// The sum of every sample named `name`, whatever its labels.
    pub fn sum(&self, name: &str) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .map(|s| s.value)
            .sum()
    }

    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }
}

/// `name{k="v",...} value [timestamp]`
fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_owned();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(inner)?;
        labels = parsed;
        rest = after;
    }
    let value = match rest.split_whitespace().next()? {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// Reads `k="v",k2="v2"}` and returns the labels and what follows the `}`.
fn parse_labels(mut s: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    loop {
        s = s.trim_start_matches([',', ' ']);
        if let Some(after) = s.strip_prefix('}') {
            return Some((labels, after));
        }
        let eq = s.find('=')?;
        let key = s[..eq].trim().to_owned();
        s = s[eq + 1..].strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (_, c) => value.push(c),
            }
        };
        labels.insert(key, value);
        s = &s[end + 1..];
    }
}

#[test]
fn parses_labels_escapes_and_infinity() {
    let scrape = Scrape::parse(
        "# TYPE a counter\na 3\nb{x=\"1\",y=\"q\\\"z\"} 2.5\nc_bucket{le=\"+Inf\"} 7\n",
    );
    assert_eq!(scrape.types["a"], "counter");
    assert_eq!(scrape.value("a", &[]), 3.0);
    assert_eq!(scrape.value("b", &[("y", "q\"z")]), 2.5);
    assert_eq!(scrape.value("c_bucket", &[("le", "+Inf")]), 7.0);
    assert_eq!(scrape.sum("b"), 2.5);
}
