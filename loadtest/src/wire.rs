//! The WebSocket frame rules a subscribing client needs (RFC 6455 §5.2).
//!
//! Server frames arrive unmasked, so reading one is a header parse and a slice of the read
//! buffer: no copy, no unmasking, no per-frame allocation. That is what keeps thousands of
//! connections on one core. Client frames (pong, close) are rare and masked as the RFC
//! requires.

use crate::wire_length::payload_length;

pub const CONTINUATION: u8 = 0x0;
pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub fin: bool,
    pub opcode: u8,
    /// Bytes of header before the payload.
    pub header_len: usize,
    pub payload_len: usize,
}

impl Header {
    pub fn total(&self) -> usize {
        self.header_len + self.payload_len
    }
}

/// A frame the client cannot accept; the connection is then abandoned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// A server must not mask (RFC 6455 §5.1).
    Masked,
    /// RSV bits set although no extension was negotiated.
    Reserved,
    TooLarge(u64),
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Masked => f.write_str("masked server frame"),
            WireError::Reserved => f.write_str("reserved bits set"),
            WireError::TooLarge(n) => write!(f, "frame of {n} bytes"),
        }
    }
}

/// Parses the header at the start of `buf`; `Ok(None)` when more bytes are needed.
pub fn parse_header(buf: &[u8], max_payload: usize) -> Result<Option<Header>, WireError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    if buf[0] & 0x70 != 0 {
        return Err(WireError::Reserved);
    }
    if buf[1] & 0x80 != 0 {
        return Err(WireError::Masked);
    }
    let Some((payload_len, header_len)) = payload_length(buf) else {
        return Ok(None);
    };
    if payload_len > max_payload as u64 {
        return Err(WireError::TooLarge(payload_len));
    }
    Ok(Some(Header {
        fin: buf[0] & 0x80 != 0,
        opcode: buf[0] & 0x0f,
        header_len,
        payload_len: payload_len as usize,
    }))
}

/// A complete, masked client frame.
pub fn client_frame(opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= u16::MAX as usize => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_extended_lengths() {
        let h = parse_header(&[0x81, 5, b'h'], 1 << 20).unwrap().unwrap();
        assert_eq!(
            (h.fin, h.opcode, h.header_len, h.payload_len),
            (true, TEXT, 2, 5)
        );
        let h = parse_header(&[0x01, 126, 0x01, 0x00], 1 << 20)
            .unwrap()
            .unwrap();
        assert_eq!((h.fin, h.header_len, h.payload_len), (false, 4, 256));
        let mut long = vec![0x82, 127];
        long.extend_from_slice(&70_000u64.to_be_bytes());
        assert_eq!(
            parse_header(&long, 1 << 20).unwrap().unwrap().payload_len,
            70_000
        );
    }

    #[test]
    fn waits_for_more_bytes() {
        assert_eq!(parse_header(&[0x81], 100), Ok(None));
        assert_eq!(parse_header(&[0x81, 126, 1], 100), Ok(None));
        assert_eq!(parse_header(&[0x81, 127, 0, 0], 100), Ok(None));
    }

    #[test]
    fn refuses_what_a_server_must_not_send() {
        assert_eq!(parse_header(&[0x81, 0x85], 100), Err(WireError::Masked));
        assert_eq!(parse_header(&[0xC1, 1], 100), Err(WireError::Reserved));
        assert_eq!(
            parse_header(&[0x81, 126, 1, 0], 100),
            Err(WireError::TooLarge(256))
        );
    }

    #[test]
    fn client_frames_are_masked() {
        let frame = client_frame(PONG, b"ab", [1, 2, 3, 4]);
        assert_eq!(frame, vec![0x8A, 0x82, 1, 2, 3, 4, b'a' ^ 1, b'b' ^ 2]);
    }
}
