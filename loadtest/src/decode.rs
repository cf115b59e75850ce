//! A received text frame -> what the client needs from it.
//!
//! Herald wraps each publication as `{"op":"message","channel":..,"data":<payload>}`;
//! Nchan delivers the bare payload. serde_json with borrowed fields reads only `op`,
//! `data` and `missed`, and skips the rest; at ~100 bytes a frame that is a few hundred
//! nanoseconds, small beside the read syscall that brought the frame in.

use serde::Deserialize;

use crate::stamp::Stamp;

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

/// An Nchan frame: the published body itself.
pub fn nchan(text: &[u8]) -> Decoded {
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
        let welcome = br#"{"op":"welcome","session":"a-1","heartbeat":300,"channels":["lt.0"]}"#;
        assert_eq!(herald(welcome), Decoded::Welcome);
        let lagged = br#"{"op":"lagged","channel":"lt.0","missed":17}"#;
        assert_eq!(herald(lagged), Decoded::Lagged(17));
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
