//! HTTP requests before the upgrade and WebSocket frames after it (RFC 6455 §4, §5.2).
//!
//! Server frames are unmasked, so one encoded frame serves every client; client frames
//! are masked and rare here (subscribe, ping, close), so reading one copies it out.

use bytes::Bytes;

use crate::wire_length::payload_length;

pub const TEXT: u8 = 0x1;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

/// Largest client frame payload accepted (Herald's default limit).
pub const MAX_FRAME: usize = 64 << 10;
/// Largest request head accepted.
pub const MAX_HEAD: usize = 16 << 10;

/// What an HTTP request asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// `GET /ws` with an upgrade: the `Sec-WebSocket-Key` and the query's channels.
    Upgrade { key: String, channels: Vec<String> },
    /// Any other request, answered with this status line and closed.
    Plain(&'static str),
}

/// Parses the request head at the start of `buf`: `Ok(None)` until it is complete, then
/// the request and the head's length.
pub fn request(buf: &[u8]) -> Result<Option<(Request, usize)>, ()> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Ok(None),
        _ => return Err(()),
    };
    let target = req.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    let request = match path {
        // The Redis connection is made before the listener opens and its loss ends the
        // process, so listening means ready.
        "/readyz" | "/healthz" => Request::Plain("200 OK"),
        "/ws" => match header("sec-websocket-key") {
            Some(key) if header("upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket")) => {
                let mut channels = Vec::new();
                for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
                    if name == "channels" {
                        channels.extend(value.split(',').map(str::to_owned));
                    }
                }
                if channels
                    .iter()
                    .any(|c| herald::channel::validate(c).is_err())
                {
                    Request::Plain("400 Bad Request")
                } else {
                    Request::Upgrade {
                        key: key.to_owned(),
                        channels,
                    }
                }
            }
            _ => Request::Plain("426 Upgrade Required"),
        },
        _ => Request::Plain("404 Not Found"),
    };
    Ok(Some((request, len)))
}

/// The 101 answer to an upgrade with this key.
pub fn switching(key: &str) -> Bytes {
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    )
    .into()
}

/// A whole answer to a plain request; the connection closes after it.
pub fn plain(status: &str) -> Bytes {
    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").into()
}

/// An unmasked server frame.
pub fn frame(opcode: u8, payload: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(payload.len() + 10);
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= u16::MAX as usize => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    out.into()
}

/// A client frame, unmasked.
#[derive(Debug, PartialEq, Eq)]
pub struct ClientFrame {
    pub opcode: u8,
    pub payload: Vec<u8>,
}

/// Parses the client frame at the start of `buf`: `Ok(None)` until it is complete, then
/// the frame and its length. Fragments are refused: the generator never sends them.
pub fn client_frame(buf: &[u8]) -> Result<Option<(ClientFrame, usize)>, &'static str> {
    if buf.len() < 2 {
        return Ok(None);
    }
    if buf[0] & 0x70 != 0 {
        return Err("reserved bits set");
    }
    if buf[0] & 0x80 == 0 || buf[0] & 0x0f == 0 {
        return Err("fragmented frame");
    }
    if buf[1] & 0x80 == 0 {
        return Err("unmasked client frame");
    }
    let Some((len, at)) = payload_length(buf) else {
        return Ok(None);
    };
    if len > MAX_FRAME as u64 {
        return Err("frame too large");
    }
    let len = len as usize;
    let total = at + 4 + len;
    if buf.len() < total {
        return Ok(None);
    }
    let mask = [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]];
    let payload = buf[at + 4..total]
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ mask[i % 4])
        .collect();
    let frame = ClientFrame {
        opcode: buf[0] & 0x0f,
        payload,
    };
    Ok(Some((frame, total)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upgrade_with_channels() {
        let head = b"GET /ws?channels=lt.1%2Clt.2 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
                     Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                     Sec-WebSocket-Version: 13\r\n\r\n";
        assert_eq!(request(&head[..20]), Ok(None));
        let (req, len) = request(head).unwrap().unwrap();
        assert_eq!(len, head.len());
        assert_eq!(
            req,
            Request::Upgrade {
                key: "dGhlIHNhbXBsZSBub25jZQ==".into(),
                channels: vec!["lt.1".into(), "lt.2".into()],
            }
        );
        let answer = switching("dGhlIHNhbXBsZSBub25jZQ==");
        assert!(std::str::from_utf8(&answer)
            .unwrap()
            .contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
    }

    #[test]
    fn plain_requests() {
        let ready = request(b"GET /readyz HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert_eq!(ready.0, Request::Plain("200 OK"));
        let ws = request(b"GET /ws HTTP/1.1\r\n\r\n").unwrap().unwrap();
        assert_eq!(ws.0, Request::Plain("426 Upgrade Required"));
    }

    #[test]
    fn client_frames_are_unmasked() {
        let mut wire = vec![0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2];
        assert_eq!(client_frame(&wire[..7]), Ok(None));
        let (frame, len) = client_frame(&wire).unwrap().unwrap();
        assert_eq!(
            (frame.opcode, &frame.payload[..], len),
            (TEXT, &b"hi"[..], 8)
        );
        wire[1] = 0x02;
        assert!(
            client_frame(&wire).is_err(),
            "a client frame must be masked"
        );
    }

    #[test]
    fn server_frame_lengths() {
        assert_eq!(&frame(TEXT, b"ab")[..], &[0x81, 2, b'a', b'b']);
        assert_eq!(&frame(TEXT, &[0; 300])[..4], &[0x81, 126, 1, 44]);
    }
}
