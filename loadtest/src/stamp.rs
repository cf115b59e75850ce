//! The publication payload: `{"t":<ns since the UNIX epoch>,"s":<sequence>,"c":<channel>}`.
//!
//! `t` is taken in the publisher process; publisher and clients share this machine's clock,
//! so receipt time minus `t` is the end-to-end latency. `s` counts from 1 per channel, so a
//! client sees losses as gaps and duplicates as repeats (order per channel is guaranteed).
//! `c` names the channel inside the body because Nchan delivers the bare body.
//!
//! `api_publish` pads the payload to a realistic size with a last member `"p":"xx…"`
//! (`encode_padded`); the fast parser takes that form too.

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

/// The payload of [`encode`], padded to `size` bytes with a last member `"p":"xx…"` when
/// the bare stamp is shorter than that (by at least the 7 bytes the member costs).
pub fn encode_padded(t: u64, seq: u64, channel: u32, size: usize) -> String {
    let mut text = encode(t, seq, channel);
    let fill = size.saturating_sub(text.len() + PAD_MEMBER.len() + 1);
    if fill > 0 {
        text.pop();
        text.reserve(size - text.len());
        text.push_str(PAD_MEMBER);
        text.extend(std::iter::repeat_n('x', fill));
        text.push_str("\"}");
    }
    text
}

/// How the padding member of [`encode_padded`] begins.
const PAD_MEMBER: &str = r#","p":""#;

/// Reads a payload written by [`encode`] or [`encode_padded`], exactly that form; `None`
/// for anything else.
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
    let padded = || {
        let fill = rest
            .strip_prefix(PAD_MEMBER.as_bytes())?
            .strip_suffix(br#""}"#)?;
        fill.iter().all(|&b| b == b'x').then_some(())
    };
    (rest == b"}" || padded().is_some()).then_some(Stamp {
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
    fn padded_payloads_have_their_size_and_parse() {
        let text = encode_padded(1_700_000_000_123_456_789, 42, 7, 100);
        assert_eq!(text.len(), 100, "{text}");
        assert!(text.starts_with(r#"{"t":1700000000123456789,"s":42,"c":7,"p":"xx"#));
        let stamp = Stamp {
            t: 1_700_000_000_123_456_789,
            s: 42,
            c: 7,
        };
        assert_eq!(parse(text.as_bytes()), Some(stamp));
        assert_eq!(serde_json::from_str::<Stamp>(&text).ok(), Some(stamp));
        // Too small to pad: the bare stamp.
        assert_eq!(encode_padded(1, 2, 3, 10), encode(1, 2, 3));
        assert_eq!(parse(br#"{"t":1,"s":2,"c":3,"p":"xy"}"#), None);
        assert_eq!(parse(br#"{"t":1,"s":2,"c":3,"p":"x"} "#), None);
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
