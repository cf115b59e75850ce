//! A Redis payload becomes the one `message` frame every subscriber shares.
//!
//! Built once per publication, down to the WebSocket framing: server frames are unmasked,
//! so every subscriber gets the same bytes, and sessions clone the handle (a refcount
//! bump) and hand it to the socket as is, never framing or copying per client.

use base64::Engine;
use bytes::Bytes;
use serde_json::value::RawValue;

/// A complete WebSocket text frame (FIN set, unmasked), shared by every session it is
/// queued to.
#[derive(Debug, Clone)]
pub struct Frame {
    /// What is still to be written: the whole frame, or its tail after a partial write.
    wire: Bytes,
    header_len: u8,
    started: bool,
    /// A `message` frame, as opposed to `gap`, `lagged` or `error`: what the drop
    /// accounting counts.
    publication: bool,
}

impl Frame {
    /// The bytes still to write to a client's socket.
    pub fn wire(&self) -> &[u8] {
        &self.wire
    }

    /// Drops the first `n` bytes, which a write took.
    pub fn consume(&mut self, n: usize) {
        bytes::Buf::advance(&mut self.wire, n);
        self.started |= n > 0;
    }

    /// Part of the frame is on the wire: the rest must follow before any other frame.
    pub fn started(&self) -> bool {
        self.started
    }

    pub fn is_publication(&self) -> bool {
        self.publication
    }

    /// The frame's text (of a frame not yet started).
    pub fn as_str(&self) -> &str {
        debug_assert!(!self.started, "the text of a partly written frame");
        std::str::from_utf8(&self.wire[usize::from(self.header_len)..])
            .expect("a frame is built from a String")
    }
}

impl From<String> for Frame {
    fn from(text: String) -> Frame {
        const FIN_TEXT: u8 = 0x81;
        let len = text.len();
        let mut wire = Vec::with_capacity(len + 10);
        wire.push(FIN_TEXT);
        // RFC 6455 5.2: 7-bit length, or 126 + 16-bit, or 127 + 64-bit, big-endian.
        match len {
            0..=125 => wire.push(len as u8),
            126..=0xffff => {
                wire.push(126);
                wire.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                wire.push(127);
                wire.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        let header_len = wire.len() as u8;
        wire.extend_from_slice(text.as_bytes());
        Frame {
            wire: wire.into(),
            header_len,
            started: false,
            publication: false,
        }
    }
}

/// Encodes a publication on client channel `channel` (already valid by the channel rule,
/// which needs no JSON escaping), with its offset when it was kept in history (an offset
/// is `<epoch>:<n>` of digits, which needs none either).
pub fn message(channel: &str, payload: &[u8], offset: Option<(&str, u64)>) -> Frame {
    let mut out = String::with_capacity(payload.len() + channel.len() + 48);
    out.push_str(r#"{"op":"message","channel":""#);
    out.push_str(channel);
    out.push_str(r#"","data":"#);
    if let Ok(json) = serde_json::from_slice::<&RawValue>(payload) {
        out.push_str(json.get());
    } else if let Ok(text) = std::str::from_utf8(payload) {
        out.push_str(&serde_json::to_string(text).expect("a str always serializes"));
    } else {
        out.push('"');
        base64::engine::general_purpose::STANDARD.encode_string(payload, &mut out);
        out.push_str(r#"","encoding":"base64""#);
    }
    if let Some((epoch, n)) = offset {
        use std::fmt::Write;
        let _ = write!(out, r#","offset":"{epoch}:{n}""#);
    }
    out.push('}');
    Frame {
        publication: true,
        ..out.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn decoded(frame: &Frame) -> Value {
        serde_json::from_str(frame.as_str()).expect("frame is JSON")
    }

    #[test]
    fn json_is_embedded_as_is() {
        let frame = message("news", br#"{"x":[1,2]}"#, None);
        assert_eq!(
            frame.as_str(),
            r#"{"op":"message","channel":"news","data":{"x":[1,2]}}"#
        );
        assert_eq!(decoded(&message("n", b"42", None))["data"], json!(42));
    }

    #[test]
    fn kept_publications_carry_their_offset() {
        let frame = message("chat", b"{}", Some(("17", 4)));
        assert_eq!(
            frame.as_str(),
            r#"{"op":"message","channel":"chat","data":{},"offset":"17:4"}"#
        );
    }

    #[test]
    fn utf8_text_becomes_a_string() {
        let frame = message("n", "héllo \"world\"\n{".as_bytes(), None);
        assert_eq!(decoded(&frame)["data"], json!("héllo \"world\"\n{"));
        assert_eq!(decoded(&message("n", b"", None))["data"], json!(""));
    }

    #[test]
    fn the_wire_bytes_are_one_text_frame() {
        use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
        use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
        for len in [0, 1, 125, 126, 127, 0xffff, 0x10000, 0x10001] {
            let text = "x".repeat(len);
            let frame = Frame::from(text.clone());
            let mut reader = std::io::Cursor::new(frame.wire());
            let (header, payload_len) = FrameHeader::parse(&mut reader)
                .expect("valid header")
                .expect("complete header");
            let at = reader.position() as usize;
            assert!(header.is_final && header.mask.is_none(), "len {len}");
            assert_eq!(header.opcode, OpCode::Data(Data::Text), "len {len}");
            assert_eq!(payload_len, len as u64);
            assert_eq!(&frame.wire()[at..], text.as_bytes(), "len {len}");
            assert_eq!(frame.as_str(), text);
        }
    }

    #[test]
    fn other_bytes_become_base64() {
        let frame = decoded(&message("n", &[0xff, 0x00, 0xfe], None));
        assert_eq!(frame["data"], json!("/wD+"));
        assert_eq!(frame["encoding"], json!("base64"));
    }
}
