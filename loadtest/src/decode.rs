//! A received text frame -> what the client needs from it.
//!
//! Herald wraps each publication as `{"op":"message","channel":..,"data":<payload>}`;
//! Nchan delivers the bare payload. A publication of this tool is read on a fast path that
//! takes exactly the form Herald and the publisher write; anything else goes through
//! serde_json, which reads only `op`, `data` and `missed`. (serde_json for every frame was
//! two thirds of a generator core at 3.5 million frames a second.)

use serde::Deserialize;

use crate::stamp::{self, Stamp};

/// How Herald's publication frames begin; the payload is the last member.
const MESSAGE_PREFIX: &[u8] = br#"{"op":"message","channel":""#;

/// What a frame meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded {
    /// A publication made by this tool.
    Stamp(Stamp),
    /// Herald's first frame: the subscriptions in the query are in place.
    Welcome,
    /// Herald dropped `missed` publications for this client.
    Lagged(u64),
    /// Another op (`ok`, `pong`, `error`) or a payload this tool did not publish.
    Other,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    op: &'a str,
    data: Option<Stamp>,
    missed: Option<u64>,
}

/// A Herald server frame.
pub fn herald(text: &[u8]) -> Decoded {
    if let Some(stamp) = herald_message(text) {
        return Decoded::Stamp(stamp);
    }
    match serde_json::from_slice::<Envelope>(text) {
        Ok(Envelope {
            op: "message",
            data: Some(stamp),
            ..
        }) => Decoded::Stamp(stamp),
        Ok(Envelope { op: "welcome", .. }) => Decoded::Welcome,
        Ok(Envelope {
            op: "lagged",
            missed,
            ..
        }) => Decoded::Lagged(missed.unwrap_or(0)),
        _ => Decoded::Other,
    }
}

/// The stamp of `{"op":"message","channel":"…","data":{"t":…,"s":…,"c":…}}`, if the frame
/// is exactly that. The stamp holds no `{`, so its object starts at the last one.
fn herald_message(text: &[u8]) -> Option<Stamp> {
    let body = text.strip_prefix(MESSAGE_PREFIX)?.strip_suffix(b"}")?;
    let start = body.iter().rposition(|&b| b == b'{')?;
    let (before, data) = body.split_at(start);
    before.ends_with(br#"","data":"#).then_some(())?;
    stamp::parse(data)
}

/// An Nchan frame: the published body itself.
pub fn nchan(text: &[u8]) -> Decoded {
    if let Some(stamp) = stamp::parse(text) {
        return Decoded::Stamp(stamp);
    }
    match serde_json::from_slice::<Stamp>(text) {
        Ok(stamp) => Decoded::Stamp(stamp),
        Err(_) => Decoded::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn herald_frames() {
        let message = br#"{"op":"message","channel":"lt.0","data":{"t":5,"s":2,"c":0}}"#;
        assert_eq!(herald(message), Decoded::Stamp(Stamp { t: 5, s: 2, c: 0 }));
        assert!(herald_message(message).is_some(), "the fast path reads it");
        let welcome = br#"{"op":"welcome","session":"a-1","heartbeat":300,"channels":["lt.0"]}"#;
        assert_eq!(herald(welcome), Decoded::Welcome);
        let lagged = br#"{"op":"lagged","channel":"lt.0","missed":17}"#;
        assert_eq!(herald(lagged), Decoded::Lagged(17));
        let spaced = br#"{"op": "message", "channel": "lt.0", "data": {"t": 5, "s": 2, "c": 0}}"#;
        assert_eq!(herald(spaced), Decoded::Stamp(Stamp { t: 5, s: 2, c: 0 }));
        let braces = br#"{"op":"message","channel":"a{b","data":{"t":5,"s":2,"c":0}}"#;
        assert_eq!(herald(braces), Decoded::Stamp(Stamp { t: 5, s: 2, c: 0 }));
        let foreign = br#"{"op":"message","channel":"x","data":{"headline":"hi"}}"#;
        assert_eq!(herald(foreign), Decoded::Other);
        assert_eq!(herald(b"not json"), Decoded::Other);
    }

    #[test]
    fn nchan_bodies() {
        assert_eq!(
            nchan(br#"{"t":1,"s":1,"c":3}"#),
            Decoded::Stamp(Stamp { t: 1, s: 1, c: 3 })
        );
        assert_eq!(nchan(b"hello"), Decoded::Other);
    }
}
