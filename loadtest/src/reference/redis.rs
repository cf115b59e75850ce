//! The one subscriber connection: connect, SUBSCRIBE/UNSUBSCRIBE, read pushes in batches.
//!
//! No reconnect: the reference measures the steady state, so losing Redis ends the
//! process (an error, never a clean exit).

use std::io::{self, Read, Write};
use std::net::ToSocketAddrs;
use std::time::Duration;

use mio::net::TcpStream;

use crate::resp;

/// Bytes read per `read` call: a batch of pushes.
const READ_CHUNK: usize = 256 << 10;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Redis {
    pub stream: TcpStream,
    buf: Vec<u8>,
    /// Unparsed bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    /// Commands not yet written.
    out: Vec<u8>,
}

impl Redis {
    /// Connects (blocking, bounded) to `redis://HOST:PORT`.
    pub fn connect(url: &str) -> Result<Redis, String> {
        let parsed = url::Url::parse(url).map_err(|e| format!("--redis {url:?}: {e}"))?;
        if parsed.scheme() != "redis"
            || !parsed.username().is_empty()
            || parsed.password().is_some()
        {
            return Err(format!("--redis {url:?}: only plain redis://HOST:PORT"));
        }
        let host = parsed.host_str().ok_or("--redis has no host")?;
        let port = parsed.port().unwrap_or(6379);
        let addr = (host, port)
            .to_socket_addrs()
            .map_err(|e| format!("resolving {host}: {e}"))?
            .next()
            .ok_or_else(|| format!("{host} resolves to nothing"))?;
        let stream = std::net::TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
            .map_err(|e| format!("connecting to Redis at {addr}: {e}"))?;
        stream
            .set_nodelay(true)
            .and_then(|()| stream.set_nonblocking(true))
            .map_err(|e| format!("Redis socket: {e}"))?;
        Ok(Redis {
            stream: TcpStream::from_std(stream),
            buf: vec![0; READ_CHUNK],
            start: 0,
            end: 0,
            out: Vec::new(),
        })
    }

    pub fn subscribe(&mut self, channel: &str) {
        resp::command(&mut self.out, "SUBSCRIBE", channel);
    }

    pub fn unsubscribe(&mut self, channel: &str) {
        resp::command(&mut self.out, "UNSUBSCRIBE", channel);
    }

    /// Writes pending commands as far as the socket takes them.
    pub fn flush(&mut self) -> Result<(), String> {
        while !self.out.is_empty() {
            match self.stream.write(&self.out) {
                Ok(0) => return Err("Redis connection closed".into()),
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("writing to Redis: {e}")),
            }
        }
        Ok(())
    }

    /// One read: true when bytes arrived, false when the socket has none for now.
    pub fn read(&mut self) -> Result<bool, String> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.buf.len() - self.end < READ_CHUNK / 2 {
            // Room for a large batch: move the unparsed tail down, grow for a push
            // larger than the buffer.
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.buf.len() - self.end < READ_CHUNK / 2 {
                self.buf.resize(self.buf.len() * 2, 0);
            }
        }
        loop {
            match self.stream.read(&mut self.buf[self.end..]) {
                Ok(0) => return Err("Redis closed the connection".into()),
                Ok(n) => {
                    self.end += n;
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("reading from Redis: {e}")),
            }
        }
    }

    /// Hands every complete `message` push in the buffer to `each(channel, payload)`;
    /// confirmations are skipped.
    pub fn messages(&mut self, mut each: impl FnMut(&[u8], &[u8])) -> Result<(), String> {
        while let Some(push) = resp::parse(&self.buf[self.start..self.end])? {
            let at = &self.buf[self.start..self.end];
            if let Some((channel, payload)) = push.message(at) {
                each(&at[channel], &at[payload]);
            }
            self.start += push.len;
        }
        Ok(())
    }
}
