//! The publication payload: `{"t":<ns since the UNIX epoch>,"s":<sequence>,"c":<channel>}`.
//!
//! `t` is taken in the publisher process; publisher and clients share this machine's clock,
//! so receipt time minus `t` is the end-to-end latency. `s` counts from 1 per channel, so a
//! client sees losses as gaps and duplicates as repeats (order per channel is guaranteed).
//! `c` names the channel inside the body because Nchan delivers the bare body.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Deserialize;

/// A decoded payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Stamp {
    pub t: u64,
    pub s: u64,
    pub c: u32,
}

/// The payload for publication `seq` on channel `channel`, sent at `t`.
pub fn encode(t: u64, seq: u64, channel: u32) -> String {
    format!(r#"{{"t":{t},"s":{seq},"c":{channel}}}"#)
}

/// Reads a payload written by [`encode`], exactly that form; `None` for anything else.
///
/// The generator reads millions of frames a second on one core; serde_json took about
/// two thirds of that core, this takes a few percent. Callers fall back to serde_json, so
/// a payload in another (valid) form is still read.
pub fn parse(body: &[u8]) -> Option<Stamp> {
    let rest = body.strip_prefix(br#"{"t":"#)?;
    let (t, rest) = number(rest)?;
    let rest = rest.strip_prefix(br#","s":"#)?;
    let (s, rest) = number(rest)?;
    let rest = rest.strip_prefix(br#","c":"#)?;
    let (c, rest) = number(rest)?;
    (rest == b"}").then_some(Stamp {
        t,
        s,
        c: u32::try_from(c).ok()?,
    })
}

/// A leading run of ASCII digits as a u64 (`None` if empty or too large), and the rest.
fn number(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let digits = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 20 {
        return None;
    }
    let value = bytes[..digits].iter().try_fold(0u64, |value, &digit| {
        value.checked_mul(10)?.checked_add(u64::from(digit - b'0'))
    })?;
    Some((value, &bytes[digits..]))
}

/// Now, in nanoseconds since the UNIX epoch.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let text = encode(1_700_000_000_123_456_789, 42, 7);
        assert_eq!(text, r#"{"t":1700000000123456789,"s":42,"c":7}"#);
        let stamp: Stamp = serde_json::from_str(&text).expect("decodes");
        assert_eq!(
            stamp,
            Stamp {
                t: 1_700_000_000_123_456_789,
                s: 42,
                c: 7
            }
        );
        assert_eq!(parse(text.as_bytes()), Some(stamp));
    }

    #[test]
    fn parse_takes_only_the_exact_form() {
        assert_eq!(
            parse(br#"{"t":0,"s":18446744073709551615,"c":4294967295}"#),
            Some(Stamp {
                t: 0,
                s: u64::MAX,
                c: u32::MAX
            })
        );
        for other in [
            &br#"{"t":1,"s":2,"c":3} "#[..],
            br#"{"t":1, "s":2,"c":3}"#,
            br#"{"t":1,"s":2,"c":4294967296}"#,
            br#"{"t":1,"s":18446744073709551616,"c":3}"#,
            br#"{"t":-1,"s":2,"c":3}"#,
            br#"{"t":,"s":2,"c":3}"#,
            br#"{"s":2,"t":1,"c":3}"#,
            br#"{"t":1,"s":2}"#,
            b"",
        ] {
            assert_eq!(parse(other), None, "{}", String::from_utf8_lossy(other));
        }
    }
}
