//! Property tests over everything that reads client or Redis input: no input panics, and
//! what the parser accepts is exactly what the contract allows.

use proptest::prelude::*;
use serde_json::{json, Value};

use crate::channel;
use crate::payload;
use crate::protocol::{Code, Op, Request};

/// Any name in the channel alphabet, 1 to 255 bytes.
fn valid_name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_:.@/=-]{1,255}"
}

fn json_id() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        Just(None),
        any::<i64>().prop_map(|n| Some(json!(n))),
        ".{0,20}".prop_map(|s| Some(json!(s))),
    ]
}

proptest! {
    #[test]
    fn parsing_any_text_never_panics(text in ".{0,300}") {
        let _ = Request::parse(&text);
    }

    #[test]
    fn parsing_json_like_text_never_panics(text in r#"[{}\[\]":,0-9a-z ]{0,200}"#) {
        let _ = Request::parse(&text);
    }

    #[test]
    fn well_formed_requests_parse_to_what_was_sent(
        id in json_id(),
        op in 0..3u8,
        channels in proptest::collection::vec(".{0,30}", 0..10),
    ) {
        let name = ["subscribe", "unsubscribe", "ping"][op as usize];
        let mut request = json!({ "op": name });
        if op < 2 {
            request["channels"] = json!(channels);
        }
        if let Some(id) = &id {
            request["id"] = id.clone();
        }
        let parsed = Request::parse(&request.to_string()).expect("well-formed");
        prop_assert_eq!(&parsed.id, &id);
        let expected = match op {
            0 => Op::Subscribe(channels, vec![]),
            1 => Op::Unsubscribe(channels),
            _ => Op::Ping,
        };
        prop_assert_eq!(parsed.op, expected);
    }

    #[test]
    fn mistyped_fields_are_bad_requests(channels in prop_oneof![
        any::<i64>().prop_map(|n| json!(n)),
        ".*".prop_map(|s| json!(s)),
        proptest::collection::vec(any::<i64>(), 1..4).prop_map(|v| json!(v)),
    ]) {
        let request = json!({"op": "subscribe", "channels": channels, "id": 9});
        let refusal = Request::parse(&request.to_string()).unwrap_err();
        prop_assert_eq!(refusal.code, Code::BadRequest);
        prop_assert_eq!(refusal.id, Some(json!(9)));
    }

    #[test]
    fn names_in_the_alphabet_are_valid(name in valid_name()) {
        prop_assert!(channel::validate(&name).is_ok());
    }

    #[test]
    fn validation_matches_the_rule(name in ".{0,300}") {
        let by_rule = !name.is_empty()
            && name.len() <= 255
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-:.@/=".contains(&b));
        prop_assert_eq!(channel::validate(&name).is_ok(), by_rule);
    }

    #[test]
    fn every_payload_becomes_one_valid_frame(name in valid_name(), data in proptest::collection::vec(any::<u8>(), 0..200)) {
        let frame = payload::message(&name, &data, None);
        let value: Value = serde_json::from_str(frame.as_str()).expect("frame is JSON");
        prop_assert_eq!(&value["op"], "message");
        prop_assert_eq!(value["channel"].as_str(), Some(name.as_str()));
        prop_assert!(value.get("data").is_some());
    }

    #[test]
    fn a_kept_publication_opens_to_its_payload_and_offset(
        epoch in "[0-9]{1,20}", n in 1..u64::MAX / 2, data in proptest::collection::vec(any::<u8>(), 0..200)
    ) {
        let mut wrapped = crate::history::offset::ENVELOPE.to_vec();
        wrapped.extend_from_slice(format!("{epoch}:{n}\0").as_bytes());
        wrapped.extend_from_slice(&data);
        let (offset, payload) = crate::history::offset::open_envelope(&wrapped);
        prop_assert_eq!(offset, Some((epoch.as_str(), n)));
        prop_assert_eq!(payload, &data[..]);
        let frame = payload::message("c", payload, offset);
        let value: Value = serde_json::from_str(frame.as_str()).expect("frame is JSON");
        let text = format!("{epoch}:{n}");
        prop_assert_eq!(value["offset"].as_str(), Some(text.as_str()));
    }
}
