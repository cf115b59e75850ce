//! A hostile client floods its connection with garbage, bad UTF-8, fragmented frames and
//! pings; the instance stays healthy and other clients keep receiving everything.

use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{secs, start, Client};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_client_harms_no_one_else() {
    let (redis, gateway) = start(&["--rate-limit", "1000", "--rate-burst", "1000"]).await;
    let mut bystander = Client::connect(&gateway.ws_url("channels=news")).await;

    // Garbage of every kind the protocol tolerates: each gets an error, the link stays up.
    let mut noisy = Client::connect(&gateway.ws_url("channels=news")).await;
    for i in 0..200u32 {
        let message = match i % 5 {
            0 => Message::Text("}{ not json".into()),
            1 => Message::Binary(vec![0xff; 64].into()),
            2 => Message::Ping(vec![1, 2, 3].into()),
            3 => Message::Text(
                json!({"op": "subscribe", "channels": ["bad name"]})
                    .to_string()
                    .into(),
            ),
            _ => Message::Text("[1,2,3]".into()),
        };
        noisy.send(message).await;
        redis.publish("news", json!({ "seq": i }).to_string()).await;
    }
    // A message split over many fragments is reassembled and answered.
    let parts = [r#"{"op":"pi"#, r#"ng","#, r#""id":"frag"}"#];
    for (i, part) in parts.iter().enumerate() {
        let opcode = if i == 0 {
            OpCode::Data(Data::Text)
        } else {
            OpCode::Data(Data::Continue)
        };
        let frame = Frame::message(part.as_bytes().to_vec(), opcode, i == parts.len() - 1);
        noisy.ws.send(Message::Frame(frame)).await.unwrap();
    }
    let mut pong = None;
    for _ in 0..1000 {
        let frame = noisy.recv_json(secs(5)).await;
        if frame["op"] == "pong" && frame["id"] == "frag" {
            pong = Some(frame);
            break;
        }
    }
    assert!(pong.is_some(), "the fragmented ping was never answered");

    // Bad UTF-8 in a text frame is fatal for that connection only, with 1007.
    let bad = Frame::message(vec![b'"', 0xc3, 0x28, b'"'], OpCode::Data(Data::Text), true);
    noisy.ws.send(Message::Frame(bad)).await.unwrap();
    let (code, _) = noisy.expect_close(secs(5)).await;
    assert_eq!(code, 1007);

    // The bystander got every publication, in order, and the instance is healthy.
    for i in 0..200u32 {
        let frame = bystander.expect_message("news", secs(5)).await;
        assert_eq!(
            frame["data"]["seq"], i,
            "bystander lost or reordered: {frame}"
        );
    }
    bystander.ping(1).await;
    assert_eq!(gateway.get("/readyz").await.0, 200);
    assert_eq!(gateway.get("/healthz").await.0, 200);
    Client::connect(&gateway.ws_url("")).await;
}

/// The size limit holds for whole messages too: fragments each under the limit that add up
/// to more than it close the connection with 1009, like one oversized frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragments_adding_up_past_the_limit_close_with_1009() {
    let (_redis, gateway) = start(&["--max-frame-size", "4096"]).await;
    let mut client = Client::connect(&gateway.ws_url("")).await;
    let chunk = vec![b' '; 3000];
    let first = Frame::message(chunk.clone(), OpCode::Data(Data::Text), false);
    let last = Frame::message(chunk, OpCode::Data(Data::Continue), true);
    client.ws.send(Message::Frame(first)).await.unwrap();
    client.ws.send(Message::Frame(last)).await.unwrap();
    let (code, _) = client.expect_close(secs(5)).await;
    assert_eq!(code, 1009);
}
