//! A Redis payload becomes the one `message` frame every subscriber shares.
//!
//! Built once per publication; sessions clone the handle (a refcount bump), never the bytes.

use base64::Engine;
use serde_json::value::RawValue;

/// An encoded frame, shared by every session it is queued to. It is tungstenite's text
/// type, which is reference-counted `Bytes` known to be UTF-8, so handing it to a socket
/// neither copies nor re-validates.
pub type Frame = tokio_tungstenite::tungstenite::Utf8Bytes;

/// Encodes a publication on client channel `channel` (already valid by the channel rule,
/// which needs no JSON escaping).
pub fn message(channel: &str, payload: &[u8]) -> Frame {
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
    out.push('}');
    out.into()
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
        let frame = message("news", br#"{"x":[1,2]}"#);
        assert_eq!(
            frame.as_str(),
            r#"{"op":"message","channel":"news","data":{"x":[1,2]}}"#
        );
        assert_eq!(decoded(&message("n", b"42"))["data"], json!(42));
    }

    #[test]
    fn utf8_text_becomes_a_string() {
        let frame = message("n", "héllo \"world\"\n{".as_bytes());
        assert_eq!(decoded(&frame)["data"], json!("héllo \"world\"\n{"));
        assert_eq!(decoded(&message("n", b""))["data"], json!(""));
    }

    #[test]
    fn other_bytes_become_base64() {
        let frame = decoded(&message("n", &[0xff, 0x00, 0xfe]));
        assert_eq!(frame["data"], json!("/wD+"));
        assert_eq!(frame["encoding"], json!("base64"));
    }
}
