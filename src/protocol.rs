//! The wire contract's frames: parsing client requests and encoding server replies.
//!
//! Publications are encoded in `payload`; this file owns every other frame and the close
//! codes, so a refusal maps to its code in exactly one place.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::history::Position;

/// Close codes the server sends, with the reason text clients see.
pub mod close {
    /// Shutdown or drain: the client should reconnect elsewhere.
    pub const GOING_AWAY: (u16, &str) = (1001, "going away");
    /// The client's queue stayed full past the write timeout.
    pub const SLOW_CONSUMER: (u16, &str) = (1008, "slow consumer");
    /// Nothing arrived from the client for two heartbeats.
    pub const HEARTBEAT_TIMEOUT: (u16, &str) = (1008, "heartbeat timeout");
    /// A frame or message above the configured size limit.
    pub const TOO_BIG: (u16, &str) = (1009, "frame too large");
    /// A text frame that is not UTF-8.
    pub const BAD_UTF8: (u16, &str) = (1007, "text frame is not valid UTF-8");
    /// A frame that breaks RFC 6455 (bad opcode, unmasked, bad fragmentation...).
    pub const PROTOCOL_ERROR: (u16, &str) = (1002, "protocol error");
    /// The client kept sending after its requests were refused as `rate_limited`.
    pub const RATE_LIMITED: (u16, &str) = (1008, "rate limit exceeded");
    /// The token's `exp` passed without a `refresh`. In the 4000-4999 range the RFC leaves
    /// to applications, so no WebSocket library reads it as a transport failure.
    pub const TOKEN_EXPIRED: (u16, &str) = (4001, "token expired");
    /// The server API disconnected the token's user (`POST /api/disconnect`).
    pub const DISCONNECTED: (u16, &str) = (4003, "disconnected");
}

/// A request's `id`, echoed verbatim in its reply: a JSON number or string.
pub type Id = Option<Value>;

/// What a client asked for.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Channels, and for some of them the offset to resume after (contract 1.1).
    Subscribe(Vec<String>, Vec<(String, Position)>),
    Unsubscribe(Vec<String>),
    Ping,
    /// Replaces the connection's token before it expires (an extension of contract v1).
    Refresh(String),
}

/// A parsed client request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub id: Id,
    pub op: Op,
}

/// The contract's error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    BadRequest,
    BadChannel,
    Forbidden,
    TooManySubscriptions,
    RateLimited,
}

/// A refused request: becomes an `error` frame; the connection stays open.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub id: Id,
    pub code: Code,
    pub message: String,
}

impl Refusal {
    pub fn new(id: Id, code: Code, message: impl Into<String>) -> Self {
        Refusal {
            id,
            code,
            message: message.into(),
        }
    }
}

impl Request {
    /// Parses one text frame. Every failure names what was wrong and keeps the `id`
    /// when one could be read, so the client can match the error to its request.
    pub fn parse(text: &str) -> Result<Request, Refusal> {
        let bad = |id: &Id, message: &str| Refusal::new(id.clone(), Code::BadRequest, message);
        let value: Value =
            serde_json::from_str(text).map_err(|_| bad(&None, "frame is not valid JSON"))?;
        let Value::Object(object) = value else {
            return Err(bad(&None, "frame is not a JSON object"));
        };
        let id = match object.get("id") {
            None => None,
            Some(id @ (Value::Number(_) | Value::String(_))) => Some(id.clone()),
            Some(_) => return Err(bad(&None, "id must be a number or a string")),
        };
        let op = match object.get("op") {
            None => return Err(bad(&id, "missing op")),
            Some(Value::String(op)) => op.as_str(),
            Some(_) => return Err(bad(&id, "op must be a string")),
        };
        let op = match op {
            "subscribe" => {
                let names = channels(&object).map_err(|m| bad(&id, m))?;
                let since = since(&object, &names).map_err(|m| bad(&id, &m))?;
                Op::Subscribe(names, since)
            }
            "unsubscribe" => Op::Unsubscribe(channels(&object).map_err(|m| bad(&id, m))?),
            "ping" => Op::Ping,
            "refresh" => match object.get("token") {
                Some(Value::String(token)) => Op::Refresh(token.clone()),
                Some(_) => return Err(bad(&id, "token must be a string")),
                None => return Err(bad(&id, "missing token")),
            },
            _ => return Err(bad(&id, "unknown op")),
        };
        Ok(Request { id, op })
    }
}

/// The `id` of a request, when it has a valid one, without judging the rest: what a
/// refusal that comes before parsing (`rate_limited`) still owes the client.
pub fn request_id(text: &str) -> Id {
    serde_json::from_str::<Map<String, Value>>(text)
        .ok()?
        .remove("id")
        .filter(|id| id.is_number() || id.is_string())
}

fn channels(object: &Map<String, Value>) -> Result<Vec<String>, &'static str> {
    let Some(value) = object.get("channels") else {
        return Err("missing channels");
    };
    let Value::Array(items) = value else {
        return Err("channels must be an array of strings");
    };
    items
        .iter()
        .map(|item| match item {
            Value::String(name) => Ok(name.clone()),
            _ => Err("channels must be an array of strings"),
        })
        .collect()
}

/// The `since` of a subscribe: each named channel must be among `names`, and each offset
/// one Herald could have given.
fn since(object: &Map<String, Value>, names: &[String]) -> Result<Vec<(String, Position)>, String> {
    let Some(value) = object.get("since") else {
        return Ok(Vec::new());
    };
    let Value::Object(entries) = value else {
        return Err("since must be an object mapping channels to offsets".into());
    };
    let mut since = Vec::with_capacity(entries.len());
    for (channel, offset) in entries {
        if !names.contains(channel) {
            let shown: String = channel.chars().take(64).collect();
            return Err(format!("since names {shown:?}, which channels does not"));
        }
        let position = offset
            .as_str()
            .and_then(Position::parse)
            .ok_or_else(|| format!("since[{channel:?}] is not a valid offset"))?;
        since.push((channel.clone(), position));
    }
    Ok(since)
}

#[derive(Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Reply<'a> {
    Welcome {
        session: &'a str,
        heartbeat: u64,
        channels: &'a [&'a str],
        /// As in `Ok`: where the connection stands on each history channel it holds.
        #[serde(skip_serializing_if = "Option::is_none")]
        offsets: Option<Map<String, Value>>,
    },
    Ok {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: &'a Id,
        channels: &'a [&'a str],
        /// Only in replies to a subscribe with `since`: one boolean per channel named there.
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<Map<String, Value>>,
        /// Only in replies to a subscribe that joined history channels: per channel, the
        /// offset the client's delivery starts after (an addition to contract 1.1 that
        /// older clients ignore; see `ok_subscribed`).
        #[serde(skip_serializing_if = "Option::is_none")]
        offsets: Option<Map<String, Value>>,
    },
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: &'a Id,
    },
    Lagged {
        channel: &'a str,
        missed: u64,
    },
    Gap {
        channel: &'a str,
    },
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: &'a Id,
        code: Code,
        message: &'a str,
    },
}

fn encode(reply: &Reply<'_>) -> String {
    serde_json::to_string(reply).expect("replies hold only strings and numbers")
}

pub fn welcome(
    session: &str,
    heartbeat_secs: u64,
    channels: &[&str],
    offsets: &[(String, String)],
) -> String {
    encode(&Reply::Welcome {
        session,
        heartbeat: heartbeat_secs,
        channels,
        offsets: offset_map(offsets),
    })
}

fn offset_map(offsets: &[(String, String)]) -> Option<Map<String, Value>> {
    (!offsets.is_empty()).then(|| {
        offsets
            .iter()
            .map(|(channel, offset)| (channel.clone(), Value::String(offset.clone())))
            .collect()
    })
}

pub fn ok(id: &Id, channels: &[&str]) -> String {
    encode(&Reply::Ok {
        id,
        channels,
        recovered: None,
        offsets: None,
    })
}

/// The `ok` to a subscribe: `recovered` per channel named in `since` (when any was), and
/// `offsets` per history channel it joined whose position is known. The offset is where
/// the client stands once the `ok` arrives: what it has (`since`, when recovered) or the
/// last publication before its live stream. Without it a client that lost its connection
/// before the first publication arrived had no offset to resume from, and lost what was
/// published meanwhile without being told.
pub fn ok_subscribed(
    id: &Id,
    channels: &[&str],
    recovered: &[(String, bool)],
    offsets: &[(String, String)],
) -> String {
    let recovered = (!recovered.is_empty()).then(|| {
        recovered
            .iter()
            .map(|(channel, ok)| (channel.clone(), Value::Bool(*ok)))
            .collect()
    });
    encode(&Reply::Ok {
        id,
        channels,
        recovered,
        offsets: offset_map(offsets),
    })
}

/// Publications on `channel` may have been missed (contract 1.1, "Gaps").
pub fn gap(channel: &str) -> String {
    encode(&Reply::Gap { channel })
}

pub fn pong(id: &Id) -> String {
    encode(&Reply::Pong { id })
}

pub fn lagged(channel: &str, missed: u64) -> String {
    encode(&Reply::Lagged { channel, missed })
}

pub fn error(refusal: &Refusal) -> String {
    encode(&Reply::Error {
        id: &refusal.id,
        code: refusal.code,
        message: &refusal.message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn refused(text: &str) -> Refusal {
        Request::parse(text).expect_err(text)
    }

    #[test]
    fn parses_each_op() {
        let sub = Request::parse(r#"{"op":"subscribe","id":7,"channels":["a","b"]}"#).unwrap();
        assert_eq!(sub.id, Some(json!(7)));
        assert_eq!(sub.op, Op::Subscribe(vec!["a".into(), "b".into()], vec![]));
        let resume =
            Request::parse(r#"{"op":"subscribe","channels":["a","b"],"since":{"b":"17:4"}}"#)
                .unwrap();
        let position = Position::parse("17:4").unwrap();
        assert_eq!(
            resume.op,
            Op::Subscribe(vec!["a".into(), "b".into()], vec![("b".into(), position)])
        );
        let unsub = Request::parse(r#"{"op":"unsubscribe","channels":[]}"#).unwrap();
        assert_eq!(unsub.op, Op::Unsubscribe(vec![]));
        let ping = Request::parse(r#"{"op":"ping","id":"x"}"#).unwrap();
        assert_eq!((ping.id, ping.op), (Some(json!("x")), Op::Ping));
        let refresh = Request::parse(r#"{"op":"refresh","token":"t"}"#).unwrap();
        assert_eq!(refresh.op, Op::Refresh("t".into()));
    }

    #[test]
    fn refusals_keep_the_id_when_readable() {
        for text in ["nope", "[1]", "3", r#"{"id":{}}"#] {
            let refusal = refused(text);
            assert_eq!(
                (refusal.code, refusal.id),
                (Code::BadRequest, None),
                "{text}"
            );
        }
        for text in [
            r#"{"id":1}"#,
            r#"{"id":1,"op":3}"#,
            r#"{"id":1,"op":"dance"}"#,
            r#"{"id":1,"op":"subscribe"}"#,
            r#"{"id":1,"op":"subscribe","channels":"a"}"#,
            r#"{"id":1,"op":"subscribe","channels":["a",2]}"#,
            r#"{"id":1,"op":"subscribe","channels":["a"],"since":[]}"#,
            r#"{"id":1,"op":"subscribe","channels":["a"],"since":{"b":"1:1"}}"#,
            r#"{"id":1,"op":"subscribe","channels":["a"],"since":{"a":"nope"}}"#,
            r#"{"id":1,"op":"subscribe","channels":["a"],"since":{"a":7}}"#,
            r#"{"id":1,"op":"refresh"}"#,
            r#"{"id":1,"op":"refresh","token":5}"#,
        ] {
            let refusal = refused(text);
            assert_eq!(refusal.code, Code::BadRequest, "{text}");
            assert_eq!(refusal.id, Some(json!(1)), "{text}");
        }
    }

    #[test]
    fn request_ids_are_read_without_the_rest() {
        assert_eq!(request_id(r#"{"op":"ping","id":"q7"}"#), Some(json!("q7")));
        assert_eq!(
            request_id(r#"{"id":3,"op":"nope","x":[1]}"#),
            Some(json!(3))
        );
        for none in ["nope", r#"{"op":"ping"}"#, r#"{"id":{}}"#, "[1]"] {
            assert_eq!(request_id(none), None, "{none}");
        }
    }

    #[test]
    fn replies_match_the_contract() {
        assert_eq!(
            welcome("s1", 25, &["a"], &[]),
            r#"{"op":"welcome","session":"s1","heartbeat":25,"channels":["a"]}"#
        );
        assert_eq!(
            ok(&Some(json!(1)), &[]),
            r#"{"op":"ok","id":1,"channels":[]}"#
        );
        assert_eq!(pong(&None), r#"{"op":"pong"}"#);
        assert_eq!(
            ok_subscribed(&Some(json!(2)), &["a"], &[("a".into(), true)], &[]),
            r#"{"op":"ok","id":2,"channels":["a"],"recovered":{"a":true}}"#
        );
        assert_eq!(
            ok_subscribed(
                &Some(json!(3)),
                &["a", "b"],
                &[],
                &[("b".into(), "7:0".into())]
            ),
            r#"{"op":"ok","id":3,"channels":["a","b"],"offsets":{"b":"7:0"}}"#
        );
        assert_eq!(gap("a"), r#"{"op":"gap","channel":"a"}"#);
        assert_eq!(
            lagged("a", 3),
            r#"{"op":"lagged","channel":"a","missed":3}"#
        );
        let refusal = Refusal::new(Some(json!("q")), Code::TooManySubscriptions, "max 2");
        assert_eq!(
            error(&refusal),
            r#"{"op":"error","id":"q","code":"too_many_subscriptions","message":"max 2"}"#
        );
    }
}
