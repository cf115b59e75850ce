//! Channel names and Redis payloads: validation never panics, and every accepted name
//! with any payload (opened as a kept publication's envelope when it is one) encodes to
//! one valid JSON frame.
//!
//! Valid is checked as JSON syntax (RawValue), not as serde_json's Value: a payload such
//! as `1e999` is valid JSON and embedded as-is by contract, though it overflows an f64.
#![no_main]

use herald::history::offset::open_envelope;
use herald::{channel, payload};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.first().copied().unwrap_or(0) as usize;
    let (name, body) = data.get(1..).unwrap_or_default().split_at(split.min(data.len().saturating_sub(1)));
    let Ok(name) = std::str::from_utf8(name) else {
        return;
    };
    if channel::validate(name).is_ok() {
        let (offset, body) = open_envelope(body);
        let frame = payload::message(name, body, offset);
        let _: Box<serde_json::value::RawValue> =
            serde_json::from_str(frame.as_str()).expect("frame is JSON");
    }
});
