//! The one listener: `/ws`, `/healthz`, `/readyz`, `/metrics`, and every refusal, which
//! happens here as plain HTTP before any upgrade.

use std::collections::BTreeSet;
use std::convert::Infallible;
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
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::gate::Gate;
use crate::readiness::Readiness;
use crate::session;

/// A client that has not sent its request headers by then is dropped (slowloris).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything the front needs to answer and to start sessions.
pub struct Front {
    pub shared: Arc<session::Shared>,
    pub readiness: Arc<Readiness>,
    pub gate: Arc<Gate>,
    /// Tracks sessions so shutdown can wait for them.
    pub sessions: TaskTracker,
    pub ws_config: WebSocketConfig,
}

/// Why a request did not become a WebSocket. The one place refusals map to statuses.
enum Refused {
    NotFound,
    NotUpgrade,
    BadHandshake(&'static str),
    BadChannels(String),
    Draining,
    Full,
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
            Refused::Draining => (
                StatusCode::SERVICE_UNAVAILABLE,
                "draining; connect to another instance".to_owned(),
            ),
            Refused::Full => (
                StatusCode::SERVICE_UNAVAILABLE,
                "connection limit reached".to_owned(),
            ),
        };
        let mut response = text(status, body);
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
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Typically EMFILE: back off briefly instead of spinning on the error.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let front = front.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let response = route(request, &front);
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            let _ = connection.await;
        });
    }
}

fn route(request: Request<Incoming>, front: &Arc<Front>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET {
        return Refused::NotFound.response();
    }
    match request.uri().path() {
        "/ws" => upgrade(request, front).unwrap_or_else(Refused::response),
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
    let channels = query_channels(request.uri().query());
    let max = front.shared.settings.max_subscriptions;
    session::check_channels(&None, &channels, max, &BTreeSet::new())
        .map_err(|refusal| Refused::BadChannels(refusal.message))?;
    let slot = front.gate.try_enter().ok_or(Refused::Full)?;

    let on_upgrade = hyper::upgrade::on(&mut request);
    let shared = front.shared.clone();
    let config = front.ws_config;
    front.sessions.spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        session::run(ws, channels, shared).await;
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

/// The `channels=a,b,c` query parameter; absent or empty means none.
fn query_channels(query: Option<&str>) -> Vec<String> {
    let Some(query) = query else {
        return Vec::new();
    };
    url::form_urlencoded::parse(query.as_bytes())
        .filter(|(key, _)| key == "channels")
        .filter(|(_, value)| !value.is_empty())
        .flat_map(|(_, value)| value.split(',').map(str::to_owned).collect::<Vec<_>>())
        .collect()
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::query_channels;

    #[test]
    fn reads_the_channels_parameter() {
        assert!(query_channels(None).is_empty());
        assert!(query_channels(Some("channels=")).is_empty());
        assert_eq!(
            query_channels(Some("channels=a,b%3Ac&token=x")),
            ["a", "b:c"]
        );
        assert_eq!(query_channels(Some("channels=a,,b")), ["a", "", "b"]);
    }
}
