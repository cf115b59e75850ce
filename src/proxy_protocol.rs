//! The PROXY protocol (v1 text or v2 binary) header a trusted load balancer puts before
//! the HTTP request, carrying the client's real address.
//!
//! The header is inspected with `peek` and only its own bytes are consumed, so what
//! follows reaches hyper untouched, with no replay buffer around the socket.

use std::io;
use std::net::IpAddr;
use std::time::Duration;

use ppp::{v1, v2, HeaderResult, PartialResult};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Longest header accepted: v1 is at most 107 bytes; v2 carries TLVs after the addresses.
const MAX_HEADER: usize = 1024;
/// `peek` returns the same bytes until more arrive; wait this long between looks at an
/// incomplete header (rare: proxies send the header in one write). The caller's handshake
/// timeout bounds the whole wait.
const INCOMPLETE_RETRY: Duration = Duration::from_millis(5);

/// Reads and consumes the header; returns the client address it names, or `None` when the
/// proxy says the connection is its own (v1 UNKNOWN, v2 LOCAL) and the peer address stands.
pub async fn read_header(stream: &mut TcpStream) -> io::Result<Option<IpAddr>> {
    let mut buf = vec![0u8; MAX_HEADER];
    loop {
        let seen = stream.peek(&mut buf).await?;
        if seen == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let parsed = HeaderResult::parse(&buf[..seen]);
        if parsed.is_incomplete() {
            if seen == MAX_HEADER {
                return Err(invalid("PROXY header too long"));
            }
            tokio::time::sleep(INCOMPLETE_RETRY).await;
            continue;
        }
        let (length, client) = match parsed {
            HeaderResult::V1(Ok(header)) => (header.header.len(), v1_client(&header.addresses)),
            HeaderResult::V2(Ok(header)) => (header.len(), v2_client(&header.addresses)),
            _ => {
                return Err(invalid(
                    "connection from a trusted proxy lacks a valid PROXY header",
                ))
            }
        };
        let mut header = vec![0u8; length];
        stream.read_exact(&mut header).await?;
        return Ok(client);
    }
}

fn v1_client(addresses: &v1::Addresses) -> Option<IpAddr> {
    match addresses {
        v1::Addresses::Tcp4(ip) => Some(ip.source_address.into()),
        v1::Addresses::Tcp6(ip) => Some(ip.source_address.into()),
        v1::Addresses::Unknown => None,
    }
}

fn v2_client(addresses: &v2::Addresses) -> Option<IpAddr> {
    match addresses {
        v2::Addresses::IPv4(ip) => Some(ip.source_address.into()),
        v2::Addresses::IPv6(ip) => Some(ip.source_address.into()),
        v2::Addresses::Unspecified | v2::Addresses::Unix(_) => None,
    }
}

fn invalid(why: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// Sends `first` (then `rest` a moment later) and returns what the server side read
    /// as the client address, and the bytes left for HTTP.
    async fn exchange(first: &[u8], rest: &[u8]) -> (io::Result<Option<IpAddr>>, Vec<u8>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (first, rest) = (first.to_vec(), rest.to_vec());
        let client = tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream.write_all(&first).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            stream.write_all(&rest).await.unwrap();
        });
        let (mut stream, _) = listener.accept().await.unwrap();
        let result = read_header(&mut stream).await;
        client.await.unwrap();
        let mut left = Vec::new();
        if result.is_ok() {
            stream.read_to_end(&mut left).await.unwrap();
        }
        (result, left)
    }

    #[tokio::test]
    async fn v1_header_gives_the_client_and_leaves_the_request() {
        let (client, left) =
            exchange(b"PROXY TCP4 203.0.113.7 10.0.0.1 5555 80\r\nGET /", b"ws").await;
        assert_eq!(client.unwrap(), Some("203.0.113.7".parse().unwrap()));
        assert_eq!(left, b"GET /ws");
    }

    #[tokio::test]
    async fn a_header_split_over_writes_is_awaited() {
        let (client, left) = exchange(b"PROXY TCP6 2001:db8::1 ::1 ", b"5555 80\r\nGET").await;
        assert_eq!(client.unwrap(), Some("2001:db8::1".parse().unwrap()));
        assert_eq!(left, b"GET");
    }

    #[tokio::test]
    async fn v2_and_unknown_headers() {
        let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
        v2.extend_from_slice(&[198, 51, 100, 4, 10, 0, 0, 1, 0x15, 0xb3, 0, 80]);
        let (client, left) = exchange(&v2, b"GET").await;
        assert_eq!(client.unwrap(), Some("198.51.100.4".parse().unwrap()));
        assert_eq!(left, b"GET");
        let (client, _) = exchange(b"PROXY UNKNOWN\r\n", b"").await;
        assert_eq!(client.unwrap(), None);
    }

    #[tokio::test]
    async fn no_header_is_refused() {
        let (client, _) = exchange(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n", b"").await;
        assert_eq!(client.unwrap_err().kind(), io::ErrorKind::InvalidData);
    }
}
