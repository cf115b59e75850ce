//! The client requests the reference answers (`subscribe`, `unsubscribe`, `ping`) and its
//! JSON replies, in Herald's wire format.

use serde_json::Value;

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

// Replies are written with `op` first, as Herald writes them (serde_json's `json!` would
// sort the keys).

/// `{"op":"welcome",...}`: heartbeat 0, since the reference sends no pings.
pub fn welcome(session: u64, channels: impl Iterator<Item = String>) -> String {
    let channels = list(channels);
    format!(r#"{{"op":"welcome","session":"{session}","heartbeat":0,"channels":{channels}}}"#)
}

/// The reply to subscribe/unsubscribe: the client's full set after it.
pub fn ok(id: Option<Value>, channels: impl Iterator<Item = String>) -> String {
    let (id, channels) = (id_member(id), list(channels));
    format!(r#"{{"op":"ok"{id},"channels":{channels}}}"#)
}

pub fn pong(id: Option<Value>) -> String {
    format!(r#"{{"op":"pong"{}}}"#, id_member(id))
}

pub fn error(id: Option<Value>, code: &str, message: &str) -> String {
    let id = id_member(id);
    let message = Value::from(message);
    format!(r#"{{"op":"error"{id},"code":"{code}","message":{message}}}"#)
}

/// `,"id":<id>` when the request had one.
fn id_member(id: Option<Value>) -> String {
    id.map_or_else(String::new, |id| format!(r#","id":{id}"#))
}

fn list(channels: impl Iterator<Item = String>) -> Value {
    Value::from(channels.collect::<Vec<String>>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
        assert_eq!(pong(None), r#"{"op":"pong"}"#);
        assert_eq!(
            welcome(1, ["a".to_owned()].into_iter()),
            r#"{"op":"welcome","session":"1","heartbeat":0,"channels":["a"]}"#
        );
        let refusal: Value =
            serde_json::from_str(&error(Some(json!("x")), "bad_request", "no")).unwrap();
        assert_eq!(
            refusal,
            json!({"op":"error","id":"x","code":"bad_request","message":"no"})
        );
    }
}
