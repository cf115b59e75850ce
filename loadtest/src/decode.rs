//! A received text frame -> what the client needs from it.
//!
//! Herald wraps each publication as `{"op":"message","channel":..,"data":<payload>}`, with
//! `,"offset":"<epoch>:<n>"` after `data` on a history channel (contract 1.1); Nchan
//! delivers the bare payload. A publication of this tool is read on a fast path that takes
//! exactly the form Herald and the publisher write; anything else goes through serde_json,
//! which reads only the fields below. (serde_json for every frame was two thirds of a
//! generator core at 3.5 million frames a second.)

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::stamp::{self, Stamp};

/// How Herald's publication frames begin; the payload follows the channel name.
const MESSAGE_PREFIX: &[u8] = br#"{"op":"message","channel":""#;
/// What follows the payload on a history channel, before the offset's value.
const OFFSET_MEMBER: &[u8] = br#","offset":""#;
/// Longest offset the contract allows, in bytes.
pub const MAX_OFFSET: usize = 64;

/// What a frame meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A publication made by this tool, and its offset on a history channel.
    Stamp {
        stamp: Stamp,
        offset: Option<&'a [u8]>,
    },
    /// Herald's first frame: the subscriptions in the query are in place.
    Welcome,
    /// Herald dropped `missed` publications for this client.
    Lagged(u64),
    /// The reply to subscribe/unsubscribe; `recovered` (channel, true/false), by name,
    /// only when the request had `since`.
    Ok {
        recovered: Option<Vec<(String, bool)>>,
    },
    /// A refused request, with its code (`bad_request`, `forbidden`, ...).
    Error { code: String },
    /// Herald lost its Redis connection; publications on `channel` may have been missed.
    Gap,
    /// Another op (`pong`, ...) or a payload this tool did not publish.
    Other,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    op: &'a str,
    data: Option<Stamp>,
    missed: Option<u64>,
    /// Offsets are `A-Z a-z 0-9 : - _ .` (contract 1.1): never escaped, so borrowable.
    #[serde(borrow)]
    offset: Option<&'a str>,
    /// One boolean per channel named in `since`.
    recovered: Option<BTreeMap<String, bool>>,
    code: Option<String>,
}

/// A Herald server frame.
pub fn herald(text: &[u8]) -> Decoded<'_> {
    if let Some((stamp, offset)) = herald_message(text) {
        return Decoded::Stamp { stamp, offset };
    }
    let Ok(envelope) = serde_json::from_slice::<Envelope>(text) else {
        return Decoded::Other;
    };
    match envelope {
        Envelope {
            op: "message",
            data: Some(stamp),
            offset,
            ..
        } => Decoded::Stamp {
            stamp,
            offset: offset.map(str::as_bytes).filter(|o| is_offset(o)),
        },
        Envelope { op: "welcome", .. } => Decoded::Welcome,
        Envelope {
            op: "lagged",
            missed,
            ..
        } => Decoded::Lagged(missed.unwrap_or(0)),
        Envelope {
            op: "ok",
            recovered,
            ..
        } => Decoded::Ok {
            recovered: recovered.map(|r| r.into_iter().collect()),
        },
        Envelope {
            op: "error", code, ..
        } => Decoded::Error {
            code: code.unwrap_or_else(|| "no code".into()),
        },
        Envelope { op: "gap", .. } => Decoded::Gap,
        _ => Decoded::Other,
    }
}

/// The stamp (and offset) of
/// `{"op":"message","channel":"…","data":{"t":…,"s":…,"c":…}}` or of the same with
/// `,"offset":"…"` after `data`, if the frame is exactly that. Neither the stamp nor an
/// offset holds a `{`, so the stamp's object starts at the last one.
fn herald_message(text: &[u8]) -> Option<(Stamp, Option<&[u8]>)> {
    let body = text.strip_prefix(MESSAGE_PREFIX)?.strip_suffix(b"}")?;
    let start = body.iter().rposition(|&b| b == b'{')?;
    let (before, data) = body.split_at(start);
    before.ends_with(br#"","data":"#).then_some(())?;
    let end = data.iter().position(|&b| b == b'}')? + 1;
    let (data, rest) = data.split_at(end);
    let offset = match rest {
        [] => None,
        rest => {
            let value = rest.strip_prefix(OFFSET_MEMBER)?.strip_suffix(b"\"")?;
            Some(value).filter(|v| is_offset(v))?;
            Some(value)
        }
    };
    Some((stamp::parse(data)?, offset))
}

/// 1 to 64 bytes of `A-Z a-z 0-9 : - _ .` (contract 1.1).
pub fn is_offset(bytes: &[u8]) -> bool {
    (1..=MAX_OFFSET).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'-' | b'_' | b'.'))
}

/// An Nchan frame: the published body itself.
pub fn nchan(text: &[u8]) -> Decoded<'_> {
    if let Some(stamp) = stamp::parse(text) {
        return Decoded::Stamp {
            stamp,
            offset: None,
        };
    }
    match serde_json::from_slice::<Stamp>(text) {
        Ok(stamp) => Decoded::Stamp {
            stamp,
            offset: None,
        },
        Err(_) => Decoded::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAMP: Stamp = Stamp { t: 5, s: 2, c: 0 };

    fn stamp(offset: Option<&[u8]>) -> Decoded<'_> {
        Decoded::Stamp {
            stamp: STAMP,
            offset,
        }
    }

    #[test]
    fn herald_frames() {
        let message = br#"{"op":"message","channel":"lt.0","data":{"t":5,"s":2,"c":0}}"#;
        assert_eq!(herald(message), stamp(None));
        assert!(herald_message(message).is_some(), "the fast path reads it");
        let welcome = br#"{"op":"welcome","session":"a-1","heartbeat":300,"channels":["lt.0"]}"#;
        assert_eq!(herald(welcome), Decoded::Welcome);
        let lagged = br#"{"op":"lagged","channel":"lt.0","missed":17}"#;
        assert_eq!(herald(lagged), Decoded::Lagged(17));
        let spaced = br#"{"op": "message", "channel": "lt.0", "data": {"t": 5, "s": 2, "c": 0}}"#;
        assert_eq!(herald(spaced), stamp(None));
        let braces = br#"{"op":"message","channel":"a{b","data":{"t":5,"s":2,"c":0}}"#;
        assert_eq!(herald(braces), stamp(None));
        let foreign = br#"{"op":"message","channel":"x","data":{"headline":"hi"}}"#;
        assert_eq!(herald(foreign), Decoded::Other);
        assert_eq!(herald(b"not json"), Decoded::Other);
    }

    #[test]
    fn offsets_on_history_channels() {
        let message = br#"{"op":"message","channel":"lt.0","data":{"t":5,"s":2,"c":0},"offset":"1764318000123456:42"}"#;
        assert_eq!(
            herald_message(message),
            Some((STAMP, Some(&b"1764318000123456:42"[..]))),
            "the fast path reads it"
        );
        assert_eq!(herald(message), stamp(Some(b"1764318000123456:42")));
        // api_publish pads its payloads: still the fast path.
        let padded = br#"{"op":"message","channel":"lt.0","data":{"t":5,"s":2,"c":0,"p":"xxxx"},"offset":"9:1"}"#;
        assert_eq!(herald_message(padded), Some((STAMP, Some(&b"9:1"[..]))));
        // Another member order or spacing: serde_json reads it the same.
        let first =
            br#"{"op":"message","offset":"9:1","channel":"lt.0","data":{"t":5,"s":2,"c":0}}"#;
        assert_eq!(herald_message(first), None);
        assert_eq!(herald(first), stamp(Some(b"9:1")));
        let spaced =
            br#"{"op":"message","channel":"lt.0","data":{"t":5,"s":2,"c":0}, "offset": "9:1"}"#;
        assert_eq!(herald(spaced), stamp(Some(b"9:1")));
        // An offset outside the contract's alphabet or length is not kept.
        let bad = br#"{"op":"message","channel":"lt.0","data":{"t":5,"s":2,"c":0},"offset":"a b"}"#;
        assert_eq!(herald(bad), stamp(None));
        let long = format!(
            r#"{{"op":"message","channel":"lt.0","data":{{"t":5,"s":2,"c":0}},"offset":"{}"}}"#,
            "9".repeat(65)
        );
        assert_eq!(herald(long.as_bytes()), stamp(None));
        // Other members after the stamp do not confuse the fast path.
        let more = br#"{"op":"message","channel":"lt.0","data":{"t":5,"s":2,"c":0},"x":"1:2"}"#;
        assert_eq!(herald_message(more), None);
        assert_eq!(herald(more), stamp(None));
    }

    #[test]
    fn replies_to_subscribe() {
        let ok = br#"{"op":"ok","id":1,"channels":["lt.0","lt.1"],"recovered":{"lt.0":true,"lt.1":false}}"#;
        assert_eq!(
            herald(ok),
            Decoded::Ok {
                recovered: Some(vec![("lt.0".into(), true), ("lt.1".into(), false)])
            }
        );
        let plain = br#"{"op":"ok","id":1,"channels":["lt.0"]}"#;
        assert_eq!(herald(plain), Decoded::Ok { recovered: None });
        let error = br#"{"op":"error","id":1,"code":"bad_request","message":"since: bad offset"}"#;
        assert_eq!(
            herald(error),
            Decoded::Error {
                code: "bad_request".into()
            }
        );
        assert_eq!(herald(br#"{"op":"gap","channel":"lt.0"}"#), Decoded::Gap);
        assert_eq!(herald(br#"{"op":"pong","id":"x"}"#), Decoded::Other);
    }

    #[test]
    fn offsets_follow_the_contract() {
        assert!(is_offset(b"1764318000123456:42"));
        assert!(is_offset(b"a-b_c.d:E"));
        assert!(!is_offset(b""));
        assert!(!is_offset(b"1:2\""));
        assert!(!is_offset(&[b'1'; 65]));
        assert!(is_offset(&[b'1'; 64]));
    }

    #[test]
    fn nchan_bodies() {
        assert_eq!(
            nchan(br#"{"t":1,"s":1,"c":3}"#),
            Decoded::Stamp {
                stamp: Stamp { t: 1, s: 1, c: 3 },
                offset: None
            }
        );
        assert_eq!(nchan(b"hello"), Decoded::Other);
    }
}
