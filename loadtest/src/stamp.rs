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
    }
}
