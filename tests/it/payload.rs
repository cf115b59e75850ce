//! `data` carries the Redis payload: JSON as-is, other UTF-8 as a string, anything else
//! as base64 with `"encoding":"base64"`.

use serde_json::{json, Value};

use crate::delivery::wait_channels;
use crate::support::{secs, start, Client};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_are_carried_by_kind() {
    let (redis, gw) = start(&[]).await;
    let mut client = Client::connect(&gw.ws_url("channels=p")).await;
    wait_channels(&redis, &["p"], secs(5)).await;

    let cases: Vec<(Vec<u8>, Value, Option<&str>)> = vec![
        // Valid JSON: embedded as the value it is, not as a string.
        (
            br#"{"a":[1,2,{"b":null}],"s":"x"}"#.to_vec(),
            json!({"a": [1, 2, {"b": null}], "s": "x"}),
            None,
        ),
        (b"42".to_vec(), json!(42), None),
        (b"-1.5e3".to_vec(), json!(-1.5e3), None),
        (br#"[1,"two",true]"#.to_vec(), json!([1, "two", true]), None),
        (br#""quoted""#.to_vec(), json!("quoted"), None),
        (b"  {\"ws\" : 1}\n".to_vec(), json!({"ws": 1}), None),
        // UTF-8 but not JSON: a JSON string, escaped as needed.
        (
            "hello wörld".as_bytes().to_vec(),
            json!("hello wörld"),
            None,
        ),
        (br#"{"broken":"#.to_vec(), json!(r#"{"broken":"#), None),
        (
            b"tab\tquote\"nl\n".to_vec(),
            json!("tab\tquote\"nl\n"),
            None,
        ),
        (b"".to_vec(), json!(""), None),
        // Not UTF-8: base64, flagged.
        (
            vec![0xff, 0x00, 0xfe, 0x80],
            json!("/wD+gA=="),
            Some("base64"),
        ),
        (vec![b'a', 0xc3], json!("YcM="), Some("base64")),
    ];
    for (payload, _, _) in &cases {
        redis.publish("p", payload).await;
    }
    for (payload, data, encoding) in &cases {
        let frame = client.expect_message("p", secs(5)).await;
        let shown = String::from_utf8_lossy(payload);
        assert_eq!(&frame["data"], data, "payload {shown:?} gave {frame}");
        assert_eq!(
            frame.get("encoding").and_then(Value::as_str),
            *encoding,
            "payload {shown:?} gave {frame}"
        );
    }
}
