//! The channel-name rule and the mapping between client names and Redis names.

use std::sync::Arc;

/// Longest channel name a client may use, in bytes.
pub const MAX_NAME_LEN: usize = 255;

/// A channel name as clients see it, shared between the hub and every session holding it.
pub type Name = Arc<str>;

/// Why a name was refused; the text goes to the client verbatim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameError {
    Empty,
    TooLong,
    BadCharacter,
}

impl NameError {
    pub fn describe(self) -> &'static str {
        match self {
            NameError::Empty => "channel name is empty",
            NameError::TooLong => "channel name is longer than 255 bytes",
            NameError::BadCharacter => "channel name may hold only A-Z a-z 0-9 _ - : . @ / =",
        }
    }
}

fn allowed(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'-' | b':' | b'.' | b'@' | b'/' | b'=')
}

/// Checks a client channel name against the contract's rule.
pub fn validate(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong);
    }
    if !name.bytes().all(allowed) {
        return Err(NameError::BadCharacter);
    }
    Ok(())
}

/// A prefix follows the same alphabet as names (so a prefixed name stays printable) and may be empty.
pub fn is_valid_prefix(prefix: &str) -> bool {
    prefix.bytes().all(allowed)
}

/// Maps client channel names to Redis channel names and back.
#[derive(Debug, Clone, Default)]
pub struct Prefix(String);

impl Prefix {
    pub fn new(prefix: impl Into<String>) -> Self {
        Prefix(prefix.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The Redis channel for a client channel.
    pub fn to_redis(&self, name: &str) -> String {
        let mut out = String::with_capacity(self.0.len() + name.len());
        out.push_str(&self.0);
        out.push_str(name);
        out
    }

    /// The Redis channel instances tell each other on (the server API's disconnect). Its
    /// `#` is outside the channel alphabet, so no client channel maps to it and no client
    /// can subscribe to it.
    pub fn control(&self) -> String {
        self.to_redis("herald#control")
    }

    /// The client channel for a Redis channel, or `None` when it is not ours.
    pub fn from_redis<'a>(&self, redis_name: &'a str) -> Option<&'a str> {
        redis_name.strip_prefix(self.0.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_whole_alphabet() {
        assert_eq!(validate("AZaz09_-:.@/="), Ok(()));
        assert_eq!(validate(&"x".repeat(255)), Ok(()));
    }

    #[test]
    fn refuses_what_the_contract_refuses() {
        assert_eq!(validate(""), Err(NameError::Empty));
        assert_eq!(validate(&"x".repeat(256)), Err(NameError::TooLong));
        for bad in ["a b", "a*", "é", "a,b", "a\n", "{x}"] {
            assert_eq!(validate(bad), Err(NameError::BadCharacter), "{bad:?}");
        }
    }

    #[test]
    fn prefix_round_trips() {
        let prefix = Prefix::new("app:");
        assert_eq!(prefix.to_redis("news"), "app:news");
        assert_eq!(prefix.from_redis("app:news"), Some("news"));
        assert_eq!(prefix.from_redis("other:news"), None);
        assert_eq!(Prefix::default().from_redis("news"), Some("news"));
    }
}
