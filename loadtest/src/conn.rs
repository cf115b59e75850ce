//! One client socket: bind, connect, upgrade, then frames out of a reusable buffer.
//!
//! The handshake is written by hand rather than through tokio-tungstenite so that bytes
//! the server sends right behind its 101 response (Herald's `welcome`) stay in our buffer,
//! and so the reader afterwards is ours: `next` hands out slices of the read buffer.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tungstenite::handshake::client::generate_key;
use tungstenite::handshake::derive_accept_key;

use crate::peer::Endpoint;
use crate::wire::{self, WireError};

/// First read buffer; grows only for a frame larger than this.
const READ_BUFFER: usize = 4096;
/// Largest frame or response head accepted.
const MAX_FRAME: usize = 16 << 20;
const MAX_HEAD: usize = 16 << 10;

/// A frame, borrowed from the connection's buffer until the next call.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    Text(&'a [u8]),
    Binary,
    Ping(&'a [u8]),
    Pong,
    Close(Option<u16>),
}

/// Why a connection could not be made or ended.
#[derive(Debug)]
pub enum ConnError {
    Connect(io::Error),
    Io(io::Error),
    /// The server answered the upgrade with this HTTP status.
    Status(u16),
    Handshake(&'static str),
    Wire(WireError),
    Closed,
}

impl ConnError {
    /// A short label for counting failures by kind.
    pub fn kind(&self) -> String {
        match self {
            ConnError::Connect(e) => format!("connect: {}", e.kind()),
            ConnError::Io(e) => format!("io: {}", e.kind()),
            ConnError::Status(code) => format!("http {code}"),
            ConnError::Handshake(why) => format!("handshake: {why}"),
            ConnError::Wire(e) => format!("protocol: {e}"),
            ConnError::Closed => "closed by server".into(),
        }
    }
}

impl From<WireError> for ConnError {
    fn from(e: WireError) -> Self {
        ConnError::Wire(e)
    }
}

pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Unparsed bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    /// Bytes the frame at `start` needs in all; `fill` makes room for them.
    need: usize,
    /// A fragmented message being put together, and its opcode.
    partial: Vec<u8>,
    partial_opcode: u8,
    /// `partial` was handed out by the previous `next` and is cleared on the next one.
    partial_done: bool,
    mask: [u8; 4],
}

impl Conn {
    /// Connects from `source` (or the kernel's choice) and performs the upgrade to `path`.
    pub async fn open(
        endpoint: &Endpoint,
        source: Option<Ipv4Addr>,
        path: &str,
        seed: u32,
    ) -> Result<Conn, ConnError> {
        let socket = match endpoint.addr {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        }
        .map_err(ConnError::Connect)?;
        if let Some(ip) = source {
            // Lets bind reuse a port still in TIME_WAIT from a previous run.
            socket.set_reuseaddr(true).map_err(ConnError::Connect)?;
            socket
                .bind(SocketAddr::new(IpAddr::V4(ip), 0))
                .map_err(ConnError::Connect)?;
        }
        let stream = socket
            .connect(endpoint.addr)
            .await
            .map_err(ConnError::Connect)?;
        stream.set_nodelay(true).map_err(ConnError::Connect)?;
        let mut conn = Conn {
            stream,
            buf: vec![0; READ_BUFFER],
            start: 0,
            end: 0,
            need: 0,
            partial: Vec::new(),
            partial_opcode: wire::TEXT,
            partial_done: false,
            mask: (seed ^ 0x5a5a_a5a5).to_le_bytes(),
        };
        conn.upgrade(&endpoint.host, path).await?;
        Ok(conn)
    }

    async fn upgrade(&mut self, host: &str, path: &str) -> Result<(), ConnError> {
        let key = generate_key();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        self.stream
            .write_all(request.as_bytes())
            .await
            .map_err(ConnError::Io)?;
        loop {
            self.need = self.end + 1;
            self.fill().await?;
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            let head_len = match response.parse(&self.buf[..self.end]) {
                Ok(httparse::Status::Complete(n)) => n,
                Ok(httparse::Status::Partial) if self.end < MAX_HEAD => continue,
                _ => return Err(ConnError::Handshake("unreadable response head")),
            };
            match response.code {
                Some(101) => {}
                Some(code) => return Err(ConnError::Status(code)),
                None => return Err(ConnError::Handshake("no status")),
            }
            let accept = response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-accept"))
                .map(|h| h.value);
            if accept != Some(derive_accept_key(key.as_bytes()).as_bytes()) {
                return Err(ConnError::Handshake("wrong Sec-WebSocket-Accept"));
            }
            self.start = head_len;
            self.need = 0;
            return Ok(());
        }
    }

    /// Reads more bytes; `Closed` at end of stream.
    pub async fn fill(&mut self) -> Result<(), ConnError> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.end == self.buf.len() || self.buf.len() - self.start < self.need {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            let want = self.need.max(self.end + 1).min(MAX_FRAME + 14);
            if want > self.buf.len() {
                self.buf.resize(want.next_power_of_two(), 0);
            }
        }
        match self.stream.read(&mut self.buf[self.end..]).await {
            Ok(0) => Err(ConnError::Closed),
            Ok(n) => {
                self.end += n;
                Ok(())
            }
            Err(e) => Err(ConnError::Io(e)),
        }
    }

    /// The next complete frame in the buffer, if any; fragments are joined.
    pub fn next(&mut self) -> Result<Option<Frame<'_>>, WireError> {
        if self.partial_done {
            self.partial.clear();
            self.partial_done = false;
        }
        loop {
            let Some(header) = wire::parse_header(&self.buf[self.start..self.end], MAX_FRAME)?
            else {
                self.need = 14;
                return Ok(None);
            };
            if self.end - self.start < header.total() {
                self.need = header.total();
                return Ok(None);
            }
            let at = self.start + header.header_len;
            let payload = at..at + header.payload_len;
            self.start += header.total();
            self.need = 0;
            match header.opcode {
                wire::TEXT if header.fin => return Ok(Some(Frame::Text(&self.buf[payload]))),
                wire::BINARY if header.fin => return Ok(Some(Frame::Binary)),
                wire::TEXT | wire::BINARY => {
                    self.partial_opcode = header.opcode;
                    self.partial.clear();
                    self.partial.extend_from_slice(&self.buf[payload]);
                }
                wire::CONTINUATION => {
                    self.partial.extend_from_slice(&self.buf[payload]);
                    if header.fin {
                        self.partial_done = true;
                        return Ok(Some(match self.partial_opcode {
                            wire::TEXT => Frame::Text(&self.partial),
                            _ => Frame::Binary,
                        }));
                    }
                }
                wire::PING => return Ok(Some(Frame::Ping(&self.buf[payload]))),
                wire::PONG => return Ok(Some(Frame::Pong)),
                wire::CLOSE => {
                    let body = &self.buf[payload];
                    let code = (body.len() >= 2).then(|| u16::from_be_bytes([body[0], body[1]]));
                    return Ok(Some(Frame::Close(code)));
                }
                // Unknown opcodes carry nothing this tool reads.
                _ => {}
            }
        }
    }

    /// Sends one masked control frame (pong, close).
    pub async fn send(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        let frame = wire::client_frame(opcode, payload, self.mask);
        self.stream.write_all(&frame).await
    }
}
