//! Channel patterns from tokens and config: names where `*` stands for any run of bytes.
//!
//! Only `*` is special (it is outside the channel alphabet, so a pattern can never be
//! confused with a name); `user:42:*` allows `user:42:inbox` and `user:42:a/b`.

/// A set of patterns; a name is allowed when any of them matches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Patterns(Vec<String>);

impl Patterns {
    pub fn new(patterns: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Patterns(patterns.into_iter().map(Into::into).collect())
    }

    pub fn allows(&self, name: &str) -> bool {
        self.0
            .iter()
            .any(|pattern| matches(pattern.as_bytes(), name.as_bytes()))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Glob match with `*` only; linear time by backtracking to the last star alone.
fn matches(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    let mut last_star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            last_star = Some((p, n));
            p += 1;
        } else if p < pattern.len() && pattern[p] == name[n] {
            p += 1;
            n += 1;
        } else if let Some((star, matched)) = last_star {
            // Let the last star swallow one more byte and retry from there.
            p = star + 1;
            n = matched + 1;
            last_star = Some((star, matched + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_matches_any_run() {
        let cases = [
            ("news", "news", true),
            ("news", "newsy", false),
            ("user:42:*", "user:42:inbox", true),
            ("user:42:*", "user:42:", true),
            ("user:42:*", "user:43:inbox", false),
            ("*", "anything/at=all", true),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("*:public", "room:1:public", true),
            ("a**", "a", true),
        ];
        for (pattern, name, expected) in cases {
            assert_eq!(
                matches(pattern.as_bytes(), name.as_bytes()),
                expected,
                "{pattern} ~ {name}"
            );
        }
    }

    #[test]
    fn a_set_allows_when_any_matches() {
        let patterns = Patterns::new(["news", "user:1:*"]);
        assert!(patterns.allows("news") && patterns.allows("user:1:x"));
        assert!(!patterns.allows("user:2:x"));
        assert!(!Patterns::default().allows("news"));
    }
}
