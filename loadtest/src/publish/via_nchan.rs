//! POST to an Nchan publisher location over one keep-alive HTTP/1.1 connection.
//!
//! A hand-written request/response is enough for Nchan's small replies (always with
//! Content-Length); a connection the server closes is reopened once per request.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use url::Url;

use super::Sequences;
use crate::stamp::{encode, now_ns};

/// Deadline for one POST and its reply.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_RESPONSE: usize = 64 << 10;

pub struct NchanPublisher {
    addr: SocketAddr,
    host: String,
    /// Request path per channel index.
    paths: Vec<String>,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

impl NchanPublisher {
    /// `template` is an http:// URL holding `{channel}`.
    pub fn new(template: &str, names: Vec<String>) -> Result<NchanPublisher, String> {
        if !template.contains("{channel}") {
            return Err(format!(
                "nchan publisher {template:?} must contain {{channel}}"
            ));
        }
        let url = |name: &str| {
            let raw = template.replace("{channel}", name);
            Url::parse(&raw).map_err(|e| format!("nchan publisher {raw:?}: {e}"))
        };
        let probe = url("x")?;
        if probe.scheme() != "http" {
            return Err("nchan publisher: only http:// is supported".into());
        }
        let host = probe
            .host_str()
            .ok_or("nchan publisher has no host")?
            .to_owned();
        let port = probe.port_or_known_default().unwrap_or(80);
        let addr = (host.as_str(), port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .next()
            .ok_or("nchan publisher host resolves to nothing")?;
        let paths = names
            .iter()
            .map(|name| url(name).map(|u| u.path().to_owned()))
            .collect::<Result<_, _>>()?;
        Ok(NchanPublisher {
            addr,
            host: format!("{host}:{port}"),
            paths,
            stream: None,
            buf: Vec::with_capacity(4096),
        })
    }

    pub async fn send(&mut self, batch: &[u32], seqs: &mut Sequences) -> Result<(), String> {
        let mut first_error = None;
        for &channel in batch {
            // Stamped per POST: POSTs are sequential, and a stamp taken once per batch would
            // charge later ones with the wait for earlier replies (seen: p99 of 31 s).
            let body = encode(now_ns(), seqs.take(channel), channel);
            let outcome = tokio::time::timeout(REQUEST_TIMEOUT, self.post(channel, &body)).await;
            let error = match outcome {
                Ok(Ok(status)) if (200..300).contains(&status) => continue,
                Ok(Ok(status)) => format!("POST answered {status}"),
                Ok(Err(e)) => e,
                Err(_) => "POST timed out".into(),
            };
            self.stream = None;
            first_error.get_or_insert(error);
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn post(&mut self, channel: u32, body: &str) -> Result<u16, String> {
        let request = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            self.paths[channel as usize],
            self.host,
            body.len()
        );
        for attempt in 0..2 {
            if self.stream.is_none() {
                let stream = TcpStream::connect(self.addr)
                    .await
                    .map_err(|e| format!("connect {}: {e}", self.addr))?;
                stream.set_nodelay(true).map_err(|e| e.to_string())?;
                self.stream = Some(stream);
            }
            match self.exchange(request.as_bytes()).await {
                Ok(status) => return Ok(status),
                // A kept-alive connection the server closed meanwhile: reopen once.
                Err(_) if attempt == 0 => self.stream = None,
                Err(e) => return Err(e),
            }
        }
        Err("unreachable".into())
    }

    /// Writes one request and reads its whole response; returns the status.
    async fn exchange(&mut self, request: &[u8]) -> Result<u16, String> {
        let stream = self.stream.as_mut().ok_or("no connection")?;
        stream.write_all(request).await.map_err(|e| e.to_string())?;
        self.buf.clear();
        loop {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("connection closed".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            let head = match response.parse(&self.buf) {
                Ok(httparse::Status::Complete(head)) => head,
                Ok(httparse::Status::Partial) if self.buf.len() < MAX_RESPONSE => continue,
                _ => return Err("unreadable response".into()),
            };
            let header = |name: &str| {
                response
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .and_then(|h| std::str::from_utf8(h.value).ok())
            };
            let length: usize = header("content-length")
                .and_then(|v| v.trim().parse().ok())
                .ok_or("response without Content-Length")?;
            let close = header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
            let status = response.code.unwrap_or(0);
            if self.buf.len() >= head + length {
                if close {
                    self.stream = None;
                }
                return Ok(status);
            }
            if head + length > MAX_RESPONSE {
                return Err("response too large".into());
            }
        }
    }
}
