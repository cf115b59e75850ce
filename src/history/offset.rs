//! Offsets: where a publication stands in its channel's history.
//!
//! A publication kept in history has a dense number `n` (1, 2, 3, ...) within an epoch,
//! a token minted when the channel's history was created. Dense numbers make a gap
//! provable (`n` skips); a new epoch says the history was lost (Redis restarted without
//! it) and numbering started over. On the wire both travel as one opaque string,
//! `<epoch>:<n>`; on the pub/sub channel, in an envelope before the payload that only
//! Herald reads.

use std::fmt;
use std::sync::Arc;

/// The longest offset string the contract allows, in bytes.
pub const MAX_LEN: usize = 64;

/// Marks a kept publication on the pub/sub channel: `\0herald1:<epoch>:<n>\0<payload>`.
/// JSON and text payloads never start with NUL, so a plain PUBLISH is never mistaken for one.
pub const ENVELOPE: &[u8] = b"\0herald1:";

/// Identifies one life of a channel's history.
pub type Epoch = Arc<str>;

/// A publication's place: its epoch and number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub epoch: Epoch,
    pub n: u64,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.epoch, self.n)
    }
}

impl Position {
    /// Parses an offset a client sent back; `None` when it is not one Herald could have
    /// given (the contract's alphabet and length, `<epoch>:<n>`).
    pub fn parse(text: &str) -> Option<Position> {
        if text.len() > MAX_LEN || !text.bytes().all(offset_byte) {
            return None;
        }
        let (epoch, n) = text.rsplit_once(':')?;
        if epoch.is_empty() || !epoch.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let n = parse_number(n.as_bytes())?;
        Some(Position {
            epoch: epoch.into(),
            n,
        })
    }
}

fn offset_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b':' | b'-' | b'_' | b'.')
}

fn parse_number(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Splits a pub/sub payload into its envelope's (epoch, n) and the publication's own
/// payload; a payload without a well-formed envelope is returned whole.
pub fn open_envelope(payload: &[u8]) -> (Option<(&str, u64)>, &[u8]) {
    let plain = (None, payload);
    let Some(rest) = payload.strip_prefix(ENVELOPE) else {
        return plain;
    };
    let Some(end) = rest.iter().position(|&b| b == 0) else {
        return plain;
    };
    let Ok(head) = std::str::from_utf8(&rest[..end]) else {
        return plain;
    };
    let Some((epoch, n)) = head.split_once(':') else {
        return plain;
    };
    // The epoch goes into JSON as is: only the digits Herald mints are taken.
    let epoch_ok =
        !epoch.is_empty() && epoch.len() <= 40 && epoch.bytes().all(|b| b.is_ascii_digit());
    match parse_number(n.as_bytes()) {
        Some(n) if epoch_ok => (Some((epoch, n)), &rest[end + 1..]),
        _ => plain,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_round_trip_and_bad_ones_are_refused() {
        let position = Position {
            epoch: "1764318000123456".into(),
            n: 42,
        };
        let text = position.to_string();
        assert_eq!(text, "1764318000123456:42");
        assert_eq!(Position::parse(&text), Some(position));
        for bad in [
            "",
            "42",
            ":42",
            "e:42",
            "1:",
            "1:x",
            "1:-1",
            "1:99999999999999999999",
            "1 :2",
            &format!("{}:1", "1".repeat(70)),
        ] {
            assert_eq!(Position::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn envelopes_open_and_plain_payloads_pass_through() {
        let kept = b"\0herald1:17:5\0{\"x\":1}";
        assert_eq!(open_envelope(kept), (Some(("17", 5)), &b"{\"x\":1}"[..]));
        assert_eq!(
            open_envelope(b"\0herald1:17:5\0"),
            (Some(("17", 5)), &b""[..])
        );
        for plain in [
            &b"{\"x\":1}"[..],
            b"",
            b"\0herald1:17:5",
            b"\0herald1:17\0x",
            b"\0herald1::5\0x",
            b"\0herald1:17:z\0x",
            b"\0herald1:1\"7:5\0x",
        ] {
            assert_eq!(open_envelope(plain), (None, plain), "{plain:?}");
        }
    }
}
