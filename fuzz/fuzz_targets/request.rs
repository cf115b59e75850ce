//! Any bytes a client can put in a text frame: parsing must never panic, and a refusal
//! must encode to a valid `error` frame.
#![no_main]

use herald::protocol::{self, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Text frames are UTF-8 by the time Herald sees them (tungstenite checks).
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(refusal) = Request::parse(text) {
        let frame = protocol::error(&refusal);
        let _: serde_json::Value = serde_json::from_str(&frame).expect("error frame is JSON");
    }
});
