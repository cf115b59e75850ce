//! The server API (contract 1.1, "The server API"): publish over HTTP, channel counts
//! (this instance's, or every live instance's through Redis), and disconnecting a user on
//! every instance.
//!
//! Every `/api/` request is checked here in one order: enabled (else 404), the key (else
//! 401), a known path (else 404), the method (else 405), then the body (size 413, shape
//! 400). A refusal is `{"error":"<reason>"}`; the key is compared in constant time and
//! never logged.

mod counts;
mod publish;

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use crate::channel::Prefix;
use crate::history::Rules;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::presence::Presence;

pub struct Api {
    /// `None`: the API is off.
    pub key: Option<String>,
    pub max_body: usize,
    pub redis: crate::redis::Commands,
    pub prefix: Prefix,
    pub history: Rules,
    pub hub: Arc<Hub>,
    pub presence: Arc<Presence>,
    pub metrics: Metrics,
}

#[derive(Clone, Copy)]
enum Endpoint {
    Publish,
    Channels,
    Channel,
    Disconnect,
    Other,
}

impl Endpoint {
    fn of(path: &str) -> Endpoint {
        match path {
            "/api/publish" => Endpoint::Publish,
            "/api/channels" => Endpoint::Channels,
            "/api/channel" => Endpoint::Channel,
            "/api/disconnect" => Endpoint::Disconnect,
            _ => Endpoint::Other,
        }
    }

    /// The metric's label: a fixed set.
    fn label(self) -> &'static str {
        match self {
            Endpoint::Publish => "publish",
            Endpoint::Channels => "channels",
            Endpoint::Channel => "channel",
            Endpoint::Disconnect => "disconnect",
            Endpoint::Other => "other",
        }
    }

    fn method(self) -> Option<Method> {
        match self {
            Endpoint::Publish | Endpoint::Disconnect => Some(Method::POST),
            Endpoint::Channels | Endpoint::Channel => Some(Method::GET),
            Endpoint::Other => None,
        }
    }
}

/// An answer that is not 200.
pub struct Refusal {
    status: StatusCode,
    reason: String,
    /// The method to use instead (405's `Allow`).
    allow: Option<Method>,
}

impl Refusal {
    pub fn new(status: StatusCode, reason: impl Into<String>) -> Refusal {
        Refusal {
            status,
            reason: reason.into(),
            allow: None,
        }
    }

    pub fn bad_request(reason: impl Into<String>) -> Refusal {
        Refusal::new(StatusCode::BAD_REQUEST, reason)
    }

    /// Redis could not be asked: nothing the caller sent was wrong.
    pub fn redis(error: ::redis::RedisError) -> Refusal {
        Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("redis unavailable: {error}"),
        )
    }
}

impl Api {
    /// Answers one `/api/` request.
    pub async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let endpoint = Endpoint::of(request.uri().path());
        let response = match self.answer(endpoint, request).await {
            Ok(body) => json_response(StatusCode::OK, &body),
            Err(refusal) => refused(refusal),
        };
        let code = response.status().as_u16().to_string();
        self.metrics
            .api_requests
            .with_label_values(&[endpoint.label(), &code])
            .inc();
        response
    }

    async fn answer(
        &self,
        endpoint: Endpoint,
        request: Request<Incoming>,
    ) -> Result<Value, Refusal> {
        let Some(key) = &self.key else {
            return Err(Refusal::new(StatusCode::NOT_FOUND, "the server API is off"));
        };
        if !authorized(&request, key) {
            return Err(Refusal::new(
                StatusCode::UNAUTHORIZED,
                "missing or wrong API key (Authorization: Bearer <key>)",
            ));
        }
        let Some(method) = endpoint.method() else {
            return Err(Refusal::new(StatusCode::NOT_FOUND, "no such endpoint"));
        };
        if request.method() != method {
            return Err(Refusal {
                allow: Some(method.clone()),
                ..Refusal::new(StatusCode::METHOD_NOT_ALLOWED, format!("use {method}"))
            });
        }
        let query = request.uri().query().unwrap_or_default().to_owned();
        match endpoint {
            Endpoint::Publish => self.publish(&self.body(request).await?).await,
            Endpoint::Disconnect => self.disconnect(&self.body(request).await?).await,
            Endpoint::Channels => self.channels(&query).await,
            Endpoint::Channel => self.channel(&query).await,
            Endpoint::Other => unreachable!("no method"),
        }
    }

    /// The whole body, at most `max_body` bytes.
    async fn body(&self, request: Request<Incoming>) -> Result<Bytes, Refusal> {
        let too_large = || {
            Refusal::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is larger than {} bytes", self.max_body),
            )
        };
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
        if declared.is_some_and(|len| len > self.max_body) {
            return Err(too_large());
        }
        match Limited::new(request.into_body(), self.max_body)
            .collect()
            .await
        {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
            Err(e) => Err(Refusal::bad_request(format!(
                "could not read the body: {e}"
            ))),
        }
    }
}

/// Whether the request carries `Authorization: Bearer <key>`, compared in constant time.
fn authorized(request: &Request<Incoming>, key: &str) -> bool {
    let Some(value) = request.headers().get(header::AUTHORIZATION) else {
        return false;
    };
    // The scheme is case-insensitive (RFC 9110, 11.1).
    let given = match value.as_bytes().split_at_checked(7) {
        Some((scheme, given)) if scheme.eq_ignore_ascii_case(b"bearer ") => given,
        _ => return false,
    };
    given.ct_eq(key.as_bytes()).into()
}

/// The JSON object in `body`, or a 400 saying what is wrong with it.
pub fn object(body: &[u8]) -> Result<serde_json::Map<String, Value>, Refusal> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(Refusal::bad_request("the body must be a JSON object")),
        Err(e) => Err(Refusal::bad_request(format!("malformed JSON: {e}"))),
    }
}

/// A valid channel name from field `field`, or a 400.
pub fn channel_name<'a>(value: Option<&'a Value>, field: &str) -> Result<&'a str, Refusal> {
    let name = match value {
        None => return Err(Refusal::bad_request(format!("missing \"{field}\""))),
        Some(Value::String(name)) => name,
        Some(_) => {
            return Err(Refusal::bad_request(format!(
                "\"{field}\" must be a string"
            )))
        }
    };
    match crate::channel::validate(name) {
        Ok(()) => Ok(name),
        Err(e) => Err(Refusal::bad_request(format!(
            "\"{field}\": {}",
            e.describe()
        ))),
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn refused(refusal: Refusal) -> Response<Full<Bytes>> {
    let mut response = json_response(refusal.status, &json!({"error": refusal.reason}));
    let headers = response.headers_mut();
    if refusal.status == StatusCode::UNAUTHORIZED {
        headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    if let Some(allow) = refusal
        .allow
        .and_then(|m| HeaderValue::from_str(m.as_str()).ok())
    {
        headers.insert(header::ALLOW, allow);
    }
    response
}
