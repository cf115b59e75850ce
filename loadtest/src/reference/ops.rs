//! The client requests the reference answers (`subscribe`, `unsubscribe`, `ping`) and its
//! JSON replies, in Herald's wire format.

use serde_json::{json, Value};

/// A client request, read from a text frame.
#[derive(Debug, PartialEq)]
pub enum Op {
    Subscribe(Option<Value>, Vec<String>),
    Unsubscribe(Option<Value>, Vec<String>),
    Ping(Option<Value>),
    /// Refused with this error code and message.
    Refused(Option<Value>, &'static str, &'static str),
}

pub fn parse(text: &[u8]) -> Op {
    let Ok(Value::Object(request)) = serde_json::from_slice::<Value>(text) else {
        return Op::Refused(None, "bad_request", "not a JSON object");
    };
    let id = request.get("id").cloned();
    let channels = || -> Result<Vec<String>, Op> {
        let list = request.get("channels").and_then(Value::as_array);
        let names: Option<Vec<String>> =
            list.and_then(|list| list.iter().map(|c| c.as_str().map(str::to_owned)).collect());
        let names = names.ok_or_else(|| {
            Op::Refused(
                id.clone(),
                "bad_request",
                "channels must be an array of strings",
            )
        })?;
        if names.iter().any(|c| herald::channel::validate(c).is_err()) {
            return Err(Op::Refused(
                id.clone(),
                "bad_channel",
                "invalid channel name",
            ));
        }
        Ok(names)
    };
    match request.get("op").and_then(Value::as_str) {
        Some("subscribe") => channels().map_or_else(|e| e, |c| Op::Subscribe(id.clone(), c)),
        Some("unsubscribe") => channels().map_or_else(|e| e, |c| Op::Unsubscribe(id.clone(), c)),
        Some("ping") => Op::Ping(id),
        _ => Op::Refused(id, "bad_request", "unknown op"),
    }
}

/// `{"op":"welcome",...}`: no heartbeat, since the reference sends no pings.
pub fn welcome(session: u64, channels: impl Iterator<Item = String>) -> String {
    let channels: Vec<String> = channels.collect();
    json!({"op": "welcome", "session": session.to_string(), "heartbeat": 0, "channels": channels})
        .to_string()
}

/// The reply to subscribe/unsubscribe: the client's full set after it.
pub fn ok(id: Option<Value>, channels: impl Iterator<Item = String>) -> String {
    let channels: Vec<String> = channels.collect();
    with_id(json!({"op": "ok", "channels": channels}), id)
}

pub fn pong(id: Option<Value>) -> String {
    with_id(json!({"op": "pong"}), id)
}

pub fn error(id: Option<Value>, code: &str, message: &str) -> String {
    with_id(json!({"op": "error", "code": code, "message": message}), id)
}

fn with_id(mut reply: Value, id: Option<Value>) -> String {
    if let Some(id) = id {
        reply["id"] = id;
    }
    reply.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests() {
        assert_eq!(
            parse(br#"{"op":"subscribe","id":1,"channels":["a","b"]}"#),
            Op::Subscribe(Some(json!(1)), vec!["a".into(), "b".into()])
        );
        assert_eq!(parse(br#"{"op":"ping"}"#), Op::Ping(None));
        assert!(matches!(
            parse(br#"{"op":"subscribe","channels":["a b"]}"#),
            Op::Refused(None, "bad_channel", _)
        ));
        assert!(matches!(parse(b"[]"), Op::Refused(None, "bad_request", _)));
    }

    #[test]
    fn replies_echo_the_id() {
        let reply: Value =
            serde_json::from_str(&ok(Some(json!(7)), ["a".to_owned()].into_iter())).unwrap();
        assert_eq!(reply, json!({"op":"ok","id":7,"channels":["a"]}));
    }
}
