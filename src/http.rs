//! The one listener: `/ws`, `/healthz`, `/readyz`, `/metrics`, `/api/` (the server API,
//! `api`), and every refusal, which happens here as plain HTTP before any upgrade.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::auth::TokenError;
use crate::client_ip::client_ip;
use crate::gate::{self, Gate};
use crate::protocol::Code;
use crate::proxy_protocol;
use crate::readiness::Readiness;
use crate::session;

/// Everything the front needs to answer and to start sessions.
pub struct Front {
    /// The server API under `/api/`.
    pub api: crate::api::Api,
    pub shared: Arc<session::Shared>,
    pub readiness: Arc<Readiness>,
    pub gate: Arc<Gate>,
    /// Tracks sessions so shutdown can wait for them.
    pub sessions: TaskTracker,
    pub ws_config: WebSocketConfig,
    /// Browser origins allowed to connect, lowercased; empty allows all.
    pub allowed_origins: Vec<String>,
    /// Proxies whose X-Forwarded-For is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Time a client has to send its complete request after connecting.
    pub handshake_timeout: Duration,
    /// Whether trusted proxies put a PROXY protocol header before the request.
    pub proxy_protocol: bool,
}

/// Why a request did not become a WebSocket. The one place refusals map to statuses.
enum Refused {
    NotFound,
    NotUpgrade,
    BadHandshake(&'static str),
    BadChannels(String),
    Unauthorized(TokenError),
    BadOrigin,
    Forbidden(String),
    Draining,
    Full(gate::Full),
}

impl Refused {
    fn response(self) -> Response<Full<Bytes>> {
        let (status, body) = match self {
            Refused::NotFound => (StatusCode::NOT_FOUND, "not found".to_owned()),
            Refused::NotUpgrade => (
                StatusCode::UPGRADE_REQUIRED,
                "this endpoint speaks WebSocket only".to_owned(),
            ),
            Refused::BadHandshake(why) => (StatusCode::BAD_REQUEST, why.to_owned()),
            Refused::BadChannels(why) => (StatusCode::BAD_REQUEST, why),
            Refused::Unauthorized(why) => (StatusCode::UNAUTHORIZED, why.to_string()),
            Refused::BadOrigin => (StatusCode::FORBIDDEN, "origin not allowed".to_owned()),
            Refused::Forbidden(why) => (StatusCode::FORBIDDEN, why),
            Refused::Draining => (
                StatusCode::SERVICE_UNAVAILABLE,
                "draining; connect to another instance".to_owned(),
            ),
            Refused::Full(gate::Full::Instance) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "connection limit reached".to_owned(),
            ),
            Refused::Full(gate::Full::Ip) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "connection limit for this address reached".to_owned(),
            ),
        };
        let unauthorized = status == StatusCode::UNAUTHORIZED;
        let mut response = text(status, body);
        if unauthorized {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
        }
        if status == StatusCode::UPGRADE_REQUIRED {
            let headers = response.headers_mut();
            headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        response
    }
}

/// Accepts connections until `stop`; each is served by hyper on its own task.
pub async fn serve(listener: TcpListener, front: Arc<Front>, stop: CancellationToken) {
    let mut failures = AcceptFailures::default();
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Typically EMFILE: back off briefly instead of spinning on the error.
                    failures.record(&e);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let front = front.clone();
        tokio::spawn(async move {
            let mut stream = stream;
            let Some(peer) = proxied_peer(&mut stream, peer, &front).await else {
                return;
            };
            let handshake_timeout = front.handshake_timeout;
            let service = service_fn(move |request: Request<Incoming>| {
                let front = front.clone();
                async move {
                    let response = if request.uri().path().starts_with("/api/") {
                        front.api.handle(request).await
                    } else {
                        route(request, peer, &front)
                    };
                    Ok::<_, Infallible>(response)
                }
            });
            // The header read timeout drops a client that connects and sends nothing, or
            // dribbles its headers (slowloris), before it costs more than a socket.
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(handshake_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            let _ = connection.await;
        });
    }
}

/// The address the connection speaks for: the PROXY header's client when the peer is a
/// trusted proxy and the header is expected, else the peer. `None`: drop the connection.
async fn proxied_peer(
    stream: &mut TcpStream,
    peer: SocketAddr,
    front: &Front,
) -> Option<SocketAddr> {
    let trusted = front
        .trusted_proxies
        .iter()
        .any(|net| net.contains(&peer.ip()));
    if !front.proxy_protocol || !trusted {
        return Some(peer);
    }
    match tokio::time::timeout(front.handshake_timeout, proxy_protocol::read_header(stream)).await {
        Ok(Ok(client)) => Some(client.map_or(peer, |ip| SocketAddr::new(ip, 0))),
        Ok(Err(error)) => {
            debug!(%peer, %error, "dropped: bad PROXY header");
            None
        }
        Err(_) => {
            debug!(%peer, "dropped: no PROXY header within the handshake timeout");
            None
        }
    }
}

/// Logs accept failures at most once per interval, with how many were folded in: under
/// descriptor exhaustion they repeat every 50 ms.
#[derive(Default)]
struct AcceptFailures {
    last_logged: Option<std::time::Instant>,
    folded: u64,
}

impl AcceptFailures {
    const INTERVAL: Duration = Duration::from_secs(10);

    fn record(&mut self, error: &std::io::Error) {
        match self.last_logged {
            Some(at) if at.elapsed() < Self::INTERVAL => self.folded += 1,
            _ => {
                warn!(%error, repeated = self.folded, "accept failed");
                self.last_logged = Some(std::time::Instant::now());
                self.folded = 0;
            }
        }
    }
}

fn route(
    request: Request<Incoming>,
    peer: SocketAddr,
    front: &Arc<Front>,
) -> Response<Full<Bytes>> {
    // HEAD is answered like GET (hyper omits the body): some load balancers probe with it.
    let path = request.uri().path();
    match *request.method() {
        Method::GET => {}
        Method::HEAD if path != "/ws" => {}
        _ => return Refused::NotFound.response(),
    }
    match path {
        "/ws" => upgrade(request, peer, front).unwrap_or_else(Refused::response),
        "/healthz" => text(StatusCode::OK, "ok".into()),
        "/readyz" if front.readiness.is_ready() => text(StatusCode::OK, "ready".into()),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready".into()),
        "/metrics" => {
            let mut response = text(StatusCode::OK, front.shared.metrics.render());
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        _ => Refused::NotFound.response(),
    }
}

fn upgrade(
    mut request: Request<Incoming>,
    peer: SocketAddr,
    front: &Arc<Front>,
) -> Result<Response<Full<Bytes>>, Refused> {
    let headers = request.headers();
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|value| {
            value
                .to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has_token(header::CONNECTION, "upgrade") || !has_token(header::UPGRADE, "websocket") {
        return Err(Refused::NotUpgrade);
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
        != Some(b"13")
    {
        return Err(Refused::BadHandshake("Sec-WebSocket-Version must be 13"));
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return Err(Refused::BadHandshake("missing Sec-WebSocket-Key"));
    };
    let accept = derive_accept_key(key.as_bytes());

    if front.readiness.is_draining() {
        return Err(Refused::Draining);
    }
    if !origin_allowed(headers.get(header::ORIGIN), &front.allowed_origins) {
        return Err(Refused::BadOrigin);
    }
    let query = Query::parse(request.uri().query());
    let token = bearer(headers.get(header::AUTHORIZATION)).or(query.token.as_deref());
    let auth = &front.shared.auth;
    let grant = auth.authenticate(token).map_err(Refused::Unauthorized)?;
    let channels = query.channels;
    let limits = front.shared.settings.limits;
    session::check_channels(&None, &channels, limits, &[], |name| {
        auth.allows(&grant, name)
    })
    .map_err(|refusal| match refusal.code {
        Code::Forbidden => Refused::Forbidden(refusal.message),
        _ => Refused::BadChannels(refusal.message),
    })?;
    // Proxies may append a header line of their own instead of extending the first one;
    // all lines together form the chain whose right-most entries are trustworthy.
    let forwarded_for: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let forwarded_for = forwarded_for.join(",");
    let forwarded_for = (!forwarded_for.is_empty()).then_some(forwarded_for.as_str());
    let ip = client_ip(peer.ip(), forwarded_for, &front.trusted_proxies);
    let slot = front.gate.try_enter(ip).map_err(Refused::Full)?;

    let on_upgrade = hyper::upgrade::on(&mut request);
    let shared = front.shared.clone();
    let config = front.ws_config;
    front.sessions.spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let ws = WebSocketStream::from_raw_socket(
            session::Gated::new(TokioIo::new(upgraded)),
            Role::Server,
            Some(config),
        )
        .await;
        session::run(ws, channels, grant, shared).await;
        drop(slot);
    });

    let mut response = Response::new(Full::default());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
    );
    Ok(response)
}

/// The upgrade's query parameters Herald reads.
#[derive(Debug, Default, PartialEq)]
struct Query {
    /// `channels=a,b,c`; absent or empty means none.
    channels: Vec<String>,
    /// `token=JWT`, for clients that cannot set headers.
    token: Option<String>,
}

impl Query {
    fn parse(query: Option<&str>) -> Self {
        let mut parsed = Query::default();
        for (key, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*key {
                "channels" if !value.is_empty() => {
                    parsed.channels.extend(value.split(',').map(str::to_owned))
                }
                "token" => parsed.token = Some(value.into_owned()),
                _ => {}
            }
        }
        parsed
    }
}

/// The token of an `Authorization: Bearer ...` header.
fn bearer(value: Option<&HeaderValue>) -> Option<&str> {
    let value = value?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Browsers always send Origin on WebSocket upgrades; other clients may not, and an
/// origin check protects browsers only, so a request without one passes.
fn origin_allowed(origin: Option<&HeaderValue>, allowed: &[String]) -> bool {
    match origin {
        _ if allowed.is_empty() => true,
        None => true,
        Some(origin) => origin.to_str().is_ok_and(|origin| {
            allowed
                .iter()
                .any(|a| a.eq_ignore_ascii_case(origin.trim_end_matches('/')))
        }),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_query() {
        assert_eq!(Query::parse(None), Query::default());
        assert!(Query::parse(Some("channels=")).channels.is_empty());
        let query = Query::parse(Some("channels=a,b%3Ac&token=x.y.z&other=1"));
        assert_eq!(query.channels, ["a", "b:c"]);
        assert_eq!(query.token.as_deref(), Some("x.y.z"));
        assert_eq!(Query::parse(Some("channels=a,,b")).channels, ["a", "", "b"]);
    }

    #[test]
    fn reads_bearer_tokens() {
        let value = HeaderValue::from_static;
        assert_eq!(bearer(Some(&value("Bearer abc"))), Some("abc"));
        assert_eq!(bearer(Some(&value("bearer abc"))), Some("abc"));
        assert_eq!(bearer(Some(&value("Basic abc"))), None);
        assert_eq!(bearer(None), None);
    }

    #[test]
    fn checks_origins_only_when_configured() {
        let origin = HeaderValue::from_static("https://app.example");
        let allowed = vec!["https://app.example".to_owned()];
        assert!(origin_allowed(Some(&origin), &[]));
        assert!(origin_allowed(Some(&origin), &allowed));
        assert!(origin_allowed(None, &allowed));
        let evil = HeaderValue::from_static("https://evil.example");
        assert!(!origin_allowed(Some(&evil), &allowed));
    }
}
