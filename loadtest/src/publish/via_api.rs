//! Herald's `POST /api/publish` over one HTTP/1.1 keep-alive connection, with hyper's
//! low-level client (`client::conn::http1`): one request at a time, the whole answer read
//! before the next, so a request's time is its latency and nothing queues behind it.

use std::net::{SocketAddr, ToSocketAddrs};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use url::Url;

/// Where the API is and how to authenticate; shared by every connection of a leg.
#[derive(Debug, Clone)]
pub struct ApiTarget {
    addr: SocketAddr,
    host: HeaderValue,
    path: String,
    authorization: HeaderValue,
}

impl ApiTarget {
    /// `url` is the full http:// URL of the publish endpoint.
    pub fn new(url: &str, key: &str) -> Result<ApiTarget, String> {
        let parsed = Url::parse(url).map_err(|e| format!("--api-url {url:?}: {e}"))?;
        if parsed.scheme() != "http" {
            return Err(format!("--api-url {url:?}: only http:// is supported"));
        }
        let host = parsed.host_str().ok_or("--api-url has no host")?.to_owned();
        let port = parsed.port_or_known_default().unwrap_or(80);
        let addr = (host.as_str(), port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .next()
            .ok_or_else(|| format!("{host} resolves to nothing"))?;
        let header = |value: String| {
            HeaderValue::try_from(value).map_err(|e| format!("--api-url / --api-key: {e}"))
        };
        Ok(ApiTarget {
            addr,
            host: header(format!("{host}:{port}"))?,
            path: parsed.path().to_owned(),
            authorization: header(format!("Bearer {key}"))?,
        })
    }

    /// The publish URL beside a Herald `/ws` target: same host and port, `/api/publish`.
    pub fn url_beside(ws_target: &str) -> Result<String, String> {
        let mut url = Url::parse(ws_target).map_err(|e| format!("--target {ws_target:?}: {e}"))?;
        let scheme = match url.scheme() {
            "ws" => "http",
            other => {
                return Err(format!(
                "--target {ws_target:?}: {other}:// has no http:// API beside it; give --api-url"
            ))
            }
        };
        url.set_scheme(scheme)
            .map_err(|()| "cannot make an http:// URL of --target".to_owned())?;
        url.set_path("/api/publish");
        url.set_query(None);
        Ok(url.into())
    }
}

/// One open keep-alive connection.
pub struct ApiConn {
    send: SendRequest<Full<Bytes>>,
    /// hyper's connection task: reads and writes the socket for `send`.
    driver: JoinHandle<()>,
}

/// What Herald answered to one publication.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// 200 `{}`: a plain channel.
    Published,
    /// 200 `{"offset":"..."}`: kept on a history channel.
    Offset,
}

impl ApiConn {
    /// Connects (no request yet). The caller bounds the time.
    pub async fn connect(target: &ApiTarget) -> Result<ApiConn, String> {
        let tcp = TcpStream::connect(target.addr)
            .await
            .map_err(|e| format!("connect {}: {e}", target.addr))?;
        // Without it a small request could wait for the previous one's ACK (Nagle).
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let (send, connection) = http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| format!("http handshake: {e}"))?;
        let driver = tokio::task::spawn_local(async move {
            let _ = connection.await;
        });
        Ok(ApiConn { send, driver })
    }

    /// POSTs `{"channel":<channel>,"data":<data>}` and reads the whole answer. `channel`
    /// must need no JSON escaping (the tool's names do not); `data` is JSON.
    pub async fn publish(
        &mut self,
        target: &ApiTarget,
        channel: &str,
        data: &str,
    ) -> Result<Answer, String> {
        let body = format!(r#"{{"channel":"{channel}","data":{data}}}"#);
        let request = Request::builder()
            .method(Method::POST)
            .uri(target.path.as_str())
            .header(header::HOST, target.host.clone())
            .header(header::AUTHORIZATION, target.authorization.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_LENGTH, body.len())
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        self.send
            .ready()
            .await
            .map_err(|e| format!("connection: {e}"))?;
        let response = self
            .send
            .send_request(request)
            .await
            .map_err(|e| format!("POST: {e}"))?;
        let status = response.status();
        let answer = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("answer: {e}"))?
            .to_bytes();
        if !status.is_success() {
            return Err(format!(
                "POST answered {status}: {}",
                String::from_utf8_lossy(&answer[..answer.len().min(200)])
            ));
        }
        read_answer(&answer)
    }
}

impl Drop for ApiConn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// A 200's body: `{}` or `{"offset":"..."}`.
fn read_answer(body: &[u8]) -> Result<Answer, String> {
    #[derive(serde::Deserialize)]
    struct Body<'a> {
        #[serde(borrow)]
        offset: Option<&'a str>,
    }
    match serde_json::from_slice::<Body>(body) {
        Ok(Body { offset: None }) => Ok(Answer::Published),
        Ok(Body {
            offset: Some(offset),
        }) if crate::decode::is_offset(offset.as_bytes()) => Ok(Answer::Offset),
        _ => Err(format!(
            "unexpected answer: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_sits_beside_the_ws_target() {
        assert_eq!(
            ApiTarget::url_beside("ws://127.0.0.1:8080/ws?x=1").unwrap(),
            "http://127.0.0.1:8080/api/publish"
        );
        assert!(ApiTarget::url_beside("wss://example.com/ws").is_err());
        let target = ApiTarget::new("http://127.0.0.1:9/api/publish", "k").unwrap();
        assert_eq!(target.path, "/api/publish");
        assert_eq!(target.host, "127.0.0.1:9");
        assert_eq!(target.authorization, "Bearer k");
    }

    #[test]
    fn answers_are_read() {
        assert_eq!(read_answer(b"{}"), Ok(Answer::Published));
        assert_eq!(
            read_answer(br#"{"offset":"1764318000123456:42"}"#),
            Ok(Answer::Offset)
        );
        assert!(read_answer(br#"{"offset":"a b"}"#).is_err());
        assert!(read_answer(b"[]").is_err());
    }
}
