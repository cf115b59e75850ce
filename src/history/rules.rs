//! `HERALD_HISTORY`: which channels keep history, how many publications and for how long.

use std::time::Duration;

use crate::auth::Patterns;

/// Most publications one channel may keep: a resume replays at most this many, and a
/// channel with local subscribers keeps up to this many frames in memory.
pub const MAX_SIZE: usize = 100_000;

/// One `PATTERN=SIZE/TTL` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub pattern: String,
    /// Publications kept.
    pub size: usize,
    /// How long each is kept.
    pub ttl: Duration,
}

/// The rules in order; the first that matches a channel decides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules(Vec<Rule>);

impl Rules {
    pub fn new(rules: Vec<Rule>) -> Self {
        Rules(rules)
    }

    /// The rule for client channel `name`, if it is a history channel.
    pub fn find(&self, name: &str) -> Option<&Rule> {
        self.0
            .iter()
            .find(|rule| Patterns::new([rule.pattern.as_str()]).allows(name))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Rule> {
        self.0.iter()
    }

    /// Parses `chat:*=300/5m,orders:*=1000/1h` (the flag's syntax); an empty string is no
    /// rule. The error names the rule at fault.
    pub fn parse(raw: &str) -> Result<Rules, String> {
        let mut rules = Vec::new();
        for text in raw.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            rules.push(parse_rule(text).map_err(|e| format!("{text:?}: {e}"))?);
        }
        Ok(Rules(rules))
    }
}

fn parse_rule(text: &str) -> Result<Rule, String> {
    const FORM: &str = "write PATTERN=SIZE/TTL, e.g. chat:*=300/5m";
    let (pattern, limits) = text.split_once('=').ok_or(FORM)?;
    let (size, ttl) = limits.split_once('/').ok_or(FORM)?;
    let unstarred = pattern.replace('*', "");
    if pattern.is_empty() || !crate::channel::is_valid_prefix(&unstarred) {
        return Err("the pattern may hold only channel characters and *".into());
    }
    let size: usize = size
        .parse()
        .map_err(|_| format!("SIZE {size:?} is not a whole number"))?;
    if !(1..=MAX_SIZE).contains(&size) {
        return Err(format!("SIZE must be 1 to {MAX_SIZE}"));
    }
    let ttl = humantime::parse_duration(ttl)
        .map_err(|e| format!("TTL {ttl:?}: {e} (write e.g. 30s, 5m, 1h)"))?;
    if ttl < Duration::from_secs(1) {
        return Err("TTL must be at least 1s".into());
    }
    Ok(Rule {
        pattern: pattern.to_owned(),
        size,
        ttl,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rules_and_the_first_match_wins() {
        let rules = Rules::parse("chat:vip:*=1000/1h, chat:*=300/5m").unwrap();
        assert_eq!(rules.find("chat:vip:1").unwrap().size, 1000);
        let chat = rules.find("chat:1").unwrap();
        assert_eq!((chat.size, chat.ttl), (300, Duration::from_secs(300)));
        assert!(rules.find("news").is_none());
        assert!(Rules::parse("").unwrap().is_empty());
    }

    #[test]
    fn refuses_what_cannot_work() {
        for bad in [
            "chat",
            "chat=300",
            "=300/5m",
            "a b=1/1m",
            "c=0/5m",
            "c=x/5m",
            "c=100001/5m",
            "c=10/5",
            "c=10/500ms",
        ] {
            let error = Rules::parse(bad).expect_err(bad);
            assert!(error.contains(bad), "{error} names {bad}");
        }
    }
}
