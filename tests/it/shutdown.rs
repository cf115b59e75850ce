//! Leaving well: SIGTERM drains clients with 1001 and exits 0; a client that stops
//! answering pings is closed after two heartbeats.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::support::client::{refused_status, Frame};
use crate::support::{secs, start, Client};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_clients_and_exits_zero() {
    // A drain period long enough to observe the draining state from outside.
    let (_redis, mut gw) = start(&["--drain-period", "3s"]).await;
    let mut clients = Vec::new();
    for i in 0..3 {
        clients.push(Client::connect(&gw.ws_url(&format!("channels=c{i}"))).await);
    }

    gw.sigterm();
    let signalled = Instant::now();
    gw.wait_readyz(503, secs(3)).await;
    // Sessions stay until their close handshake, which needs our clients to read, so the
    // listener is still up here and must refuse new WebSockets.
    assert_eq!(refused_status(&gw.ws_url("")).await, 503);
    // Every close is sent within the drain period (plus slack for a loaded machine).
    let deadline = signalled + secs(3) + secs(1);
    for client in &mut clients {
        let left = deadline.saturating_duration_since(Instant::now());
        let close = client.expect_close(left).await;
        assert_eq!(close, (1001, "going away".to_owned()));
    }
    let status = gw.wait_exit(secs(10)).await;
    assert_eq!(status.code(), Some(0), "exit status {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_is_closed_after_two_heartbeats() {
    // The write timeout also bounds how long the server waits for the close reply that a
    // silent client never sends, which keeps herald_connections prompt here.
    let (_redis, gw) = start(&["--heartbeat", "1s", "--write-timeout", "1s"]).await;
    let mut silent = Client::connect(&gw.ws_url("channels=quiet")).await;
    assert_eq!(silent.welcome["heartbeat"], 1);
    let talker = Client::connect(&gw.ws_url("channels=chatty")).await;
    // The talker is read all along, so tungstenite answers the server's pings for it.
    let stop = CancellationToken::new();
    let talking = tokio::spawn(keep_reading(talker, stop.clone()));

    let started = Instant::now();
    gw.wait_metric("herald_connections", 1.0, secs(6)).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1500),
        "closed after {took:?}: sooner than two heartbeats"
    );
    // What the silent client finds now: pings, then the end of its connection.
    match silent.next_frame(secs(5)).await {
        Frame::Close(_) | Frame::Ended(_) => {}
        Frame::Json(frame) => panic!("silent client got {frame} instead of a close"),
    }

    stop.cancel();
    let mut talker = talking.await.expect("talker task");
    talker.ping(1).await;
}

/// Reads (so pings get answered) until `stop`; any frame other than ping/pong fails.
async fn keep_reading(mut client: Client, stop: CancellationToken) -> Client {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return client,
            frame = client.ws.next() => match frame {
                Some(Ok(m)) if m.is_ping() || m.is_pong() => {}
                other => panic!("the talking client got {other:?}"),
            },
        }
    }
}
