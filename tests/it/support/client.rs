//! A WebSocket client speaking Herald's protocol, with bounded waits for each frame.
//!
//! tungstenite answers pings only while the stream is read, so a client nobody reads is,
//! to the server, a client that stopped answering: tests use that on purpose.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What `next_frame` read.
#[derive(Debug)]
pub enum Frame {
    Json(Value),
    Close(Option<(u16, String)>),
    /// The stream ended (or failed) without a close frame.
    Ended(String),
}

pub struct Client {
    pub ws: Ws,
    /// The `welcome` frame the server sent first.
    pub welcome: Value,
}

impl Client {
    /// Connects and reads the `welcome` frame.
    pub async fn connect(url: &str) -> Client {
        Client::welcomed(url, try_connect(url)).await
    }

    /// Like `connect`, over a socket whose receive buffer is set to `bytes` before it
    /// connects (so the TCP window stays that small): a client on a slow link.
    pub async fn connect_with_recv_buffer(url: &str, bytes: u32) -> Client {
        let connect = async {
            let uri: tungstenite::http::Uri = url.parse().expect("ws url");
            let host = uri.host().expect("ws url with a host");
            let port = uri.port_u16().expect("ws url with a port");
            let addr: std::net::SocketAddr = format!("{host}:{port}")
                .parse()
                .expect("numeric ws address");
            let socket = tokio::net::TcpSocket::new_v4().expect("socket");
            socket.set_recv_buffer_size(bytes).expect("SO_RCVBUF");
            let stream = socket.connect(addr).await.expect("TCP connect");
            tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream))
                .await
                .map(|(ws, _)| ws)
        };
        Client::welcomed(url, connect).await
    }

    /// Completes `connect` within 10 s and reads the `welcome` frame.
    async fn welcomed(
        url: &str,
        connect: impl std::future::Future<Output = Result<Ws, tungstenite::Error>>,
    ) -> Client {
        let ws = match tokio::time::timeout(Duration::from_secs(10), connect).await {
            Ok(Ok(ws)) => ws,
            Ok(Err(e)) => panic!("WebSocket connect to {url} failed: {e}"),
            Err(_) => panic!("WebSocket connect to {url} timed out after 10s"),
        };
        let mut client = Client {
            ws,
            welcome: Value::Null,
        };
        let welcome = client.recv_json(Duration::from_secs(5)).await;
        assert_eq!(welcome["op"], "welcome", "first frame: {welcome}");
        client.welcome = welcome;
        client
    }

    /// The `channels` the welcome frame listed, sorted.
    pub fn welcome_channels(&self) -> Vec<String> {
        sorted_names(&self.welcome["channels"])
    }

    pub async fn send(&mut self, message: Message) {
        tokio::time::timeout(Duration::from_secs(5), self.ws.send(message))
            .await
            .expect("send did not complete within 5s")
            .expect("send a frame");
    }

    pub async fn send_json(&mut self, value: Value) {
        self.send(Message::Text(value.to_string().into())).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.send(Message::Text(text.into())).await;
    }

    /// The next frame of any kind, skipping WebSocket pings and pongs.
    pub async fn next_frame(&mut self, timeout: Duration) -> Frame {
        let read = async {
            loop {
                match self.ws.next().await {
                    None => return Frame::Ended("end of stream".into()),
                    Some(Err(e)) => return Frame::Ended(e.to_string()),
                    Some(Ok(Message::Text(text))) => {
                        let value = serde_json::from_str(text.as_str())
                            .unwrap_or_else(|e| panic!("server sent non-JSON text {text:?}: {e}"));
                        return Frame::Json(value);
                    }
                    Some(Ok(Message::Close(frame))) => {
                        return Frame::Close(
                            frame.map(|f| (u16::from(f.code), f.reason.as_str().to_owned())),
                        )
                    }
                    Some(Ok(Message::Binary(b))) => {
                        panic!("server sent a binary frame ({} bytes)", b.len())
                    }
                    Some(Ok(_)) => continue, // ping, pong
                }
            }
        };
        match tokio::time::timeout(timeout, read).await {
            Ok(frame) => frame,
            Err(_) => panic!("no frame within {timeout:?}"),
        }
    }

    /// The next JSON frame; a close or end of stream fails the test.
    pub async fn recv_json(&mut self, timeout: Duration) -> Value {
        match self.next_frame(timeout).await {
            Frame::Json(value) => value,
            other => panic!("expected a JSON frame, got {other:?}"),
        }
    }

    /// The next frame must have `op`.
    pub async fn expect_op(&mut self, op: &str, timeout: Duration) -> Value {
        let frame = self.recv_json(timeout).await;
        assert_eq!(frame["op"], op, "expected op {op:?}, got {frame}");
        frame
    }

    /// The next frame must be a `message` on `channel`; returns the whole frame.
    pub async fn expect_message(&mut self, channel: &str, timeout: Duration) -> Value {
        let frame = self.recv_json(timeout).await;
        assert_eq!(
            (&frame["op"], &frame["channel"]),
            (&json!("message"), &json!(channel)),
            "expected a message on {channel:?}, got {frame}"
        );
        frame
    }

    /// The next frames must be exactly one `gap` for each of `channels`, in any order
    /// (contract 1.1: after Herald's own Redis connection was lost, each channel without
    /// history tells its subscribers once).
    pub async fn expect_gaps(&mut self, channels: &[&str], timeout: Duration) {
        let mut expected: Vec<&str> = channels.to_vec();
        expected.sort_unstable();
        let mut seen = Vec::new();
        for _ in channels {
            let frame = self.recv_json(timeout).await;
            assert_eq!(
                frame["op"], "gap",
                "expected a gap for {channels:?}, got {frame}"
            );
            seen.push(frame["channel"].as_str().unwrap_or_default().to_owned());
        }
        seen.sort_unstable();
        assert_eq!(seen, expected, "one gap per channel held");
    }

    /// Reads until a close frame, skipping anything before it unparsed (a slow consumer
    /// may have megabytes queued), then completes the close handshake as a real client
    /// would (tungstenite sends its close reply only when polled again); returns
    /// (code, reason).
    pub async fn expect_close(&mut self, timeout: Duration) -> (u16, String) {
        let read = async {
            let mut skipped = 0usize;
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Close(Some(f)))) => {
                        return Ok((u16::from(f.code), f.reason.as_str().to_owned()))
                    }
                    Some(Ok(Message::Close(None))) => {
                        return Err("a close frame without a code".to_owned())
                    }
                    Some(Ok(_)) => skipped += 1,
                    Some(Err(e)) => return Err(format!("{e} after {skipped} frames")),
                    None => return Err(format!("end of stream after {skipped} frames")),
                }
            }
        };
        let close = match tokio::time::timeout(timeout, read).await {
            Ok(Ok(close)) => close,
            Ok(Err(e)) => panic!("expected a close frame with a code, got {e}"),
            Err(_) => panic!("no close frame within {timeout:?}"),
        };
        let finish = async { while let Some(Ok(_)) = self.ws.next().await {} };
        let _ = tokio::time::timeout(Duration::from_secs(5), finish).await;
        close
    }

    /// Sends `request` and returns the reply, which must carry the request's `id`.
    pub async fn request(&mut self, request: Value) -> Value {
        let id = request["id"].clone();
        self.send_json(request).await;
        let reply = self.recv_json(Duration::from_secs(5)).await;
        assert_eq!(reply["id"], id, "reply does not echo the id: {reply}");
        reply
    }

    /// Subscribes; the reply must be `ok`. Returns the full subscription set it lists.
    pub async fn subscribe(&mut self, id: u64, channels: &[&str]) -> Vec<String> {
        let reply = self
            .request(json!({"op": "subscribe", "id": id, "channels": channels}))
            .await;
        assert_eq!(reply["op"], "ok", "subscribe {channels:?}: {reply}");
        sorted_names(&reply["channels"])
    }

    /// Subscribes with `since` (channel -> the last offset received on it); the reply must
    /// be `ok`, and is returned whole: its `recovered` says per channel whether history
    /// reached back.
    pub async fn subscribe_since(&mut self, id: u64, channels: &[&str], since: Value) -> Value {
        let request = json!({"op": "subscribe", "id": id, "channels": channels, "since": since});
        let reply = self.request(request.clone()).await;
        assert_eq!(reply["op"], "ok", "{request}: {reply}");
        reply
    }

    /// Unsubscribes; the reply must be `ok`. Returns the full subscription set it lists.
    pub async fn unsubscribe(&mut self, id: u64, channels: &[&str]) -> Vec<String> {
        let reply = self
            .request(json!({"op": "unsubscribe", "id": id, "channels": channels}))
            .await;
        assert_eq!(reply["op"], "ok", "unsubscribe {channels:?}: {reply}");
        sorted_names(&reply["channels"])
    }

    /// ping -> pong with the same id: proves the connection still works, and that nothing
    /// else was queued to this client before the pong.
    pub async fn ping(&mut self, id: u64) {
        let reply = self.request(json!({"op": "ping", "id": id})).await;
        assert_eq!(reply["op"], "pong", "ping: {reply}");
    }

    /// Closes from the client side and waits for the server's reply to the close.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        let drain = async { while let Some(Ok(_)) = self.ws.next().await {} };
        let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
    }
}

/// Opens a WebSocket without reading anything; `Err` holds e.g. an HTTP refusal.
pub async fn try_connect(url: &str) -> Result<Ws, tungstenite::Error> {
    tokio_tungstenite::connect_async(url)
        .await
        .map(|(ws, _)| ws)
}

/// The HTTP status of a refused upgrade; panics if the upgrade succeeded.
pub async fn refused_status(url: &str) -> u16 {
    match tokio::time::timeout(Duration::from_secs(10), try_connect(url)).await {
        Ok(Err(tungstenite::Error::Http(response))) => response.status().as_u16(),
        Ok(Err(e)) => panic!("connect to {url} failed without an HTTP answer: {e}"),
        Ok(Ok(_)) => panic!("connect to {url} was accepted; expected a refusal"),
        Err(_) => panic!("connect to {url} timed out"),
    }
}

/// A JSON array of strings as a sorted Vec.
pub fn sorted_names(value: &Value) -> Vec<String> {
    let mut names: Vec<String> = value
        .as_array()
        .unwrap_or_else(|| panic!("expected an array of channel names, got {value}"))
        .iter()
        .map(|v| v.as_str().expect("channel name is a string").to_owned())
        .collect();
    names.sort();
    names
}
