//! Writes to one client: every ready frame in as few syscalls as possible, all under a
//! deadline.
//!
//! Publications are already complete WebSocket frames shared by every subscriber
//! (`payload::Frame`), so they go to the socket as they are, gathered into vectored
//! writes; replies and control frames go through tungstenite, whose buffer is always
//! flushed before raw bytes follow it.
//!
//! The deadline is the slow-consumer verdict: a client that does not take its bytes within
//! the write timeout is closed, and what waits for it stays bounded meanwhile because a
//! channel's tape keeps only its last frames (see `tape`).

use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::payload::Frame;

/// Frames gathered into one vectored write (Linux takes up to 1024); the slices live on
/// the stack only during a poll, never in the session's future.
const GATHER: usize = 128;

/// Why a write did not complete.
#[derive(Debug)]
pub enum WriteError {
    /// The client did not take its bytes within the deadline.
    Stuck,
    /// The connection is gone.
    Broken,
}

/// Writes `messages` with one flush at the end, within `deadline`.
pub async fn send_all<S, I>(
    ws: &mut WebSocketStream<S>,
    messages: I,
    deadline: Duration,
) -> Result<(), WriteError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    I: IntoIterator<Item = Message>,
{
    // Built pinned where it lies: a future moved into `within` would be held twice, and
    // every session's future is sized for its largest await (idle 4.09 -> 3.87 KiB per
    // connection).
    within(deadline, std::pin::pin!(feed_all(ws, messages))).await
}

/// Writes the shared frames in `frames` (taking each out once written) within `deadline`.
pub async fn send_batch<S>(
    ws: &mut WebSocketStream<S>,
    frames: &mut VecDeque<Frame>,
    deadline: Duration,
) -> Result<(), WriteError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    within(deadline, std::pin::pin!(write_raw(ws, frames))).await
}

/// Feeds `messages` through tungstenite and flushes once, if there were any.
async fn feed_all<S, I>(ws: &mut WebSocketStream<S>, messages: I) -> Result<(), WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    I: IntoIterator<Item = Message>,
{
    let mut fed = false;
    for message in messages {
        ws.feed(message).await?;
        fed = true;
    }
    if !fed {
        return Ok(());
    }
    ws.flush().await
}

/// Writes shared frames straight to the socket, after whatever tungstenite holds: it may
/// hold part of a frame (a pong it queued while reading), and raw bytes must not land in
/// the middle of it.
async fn write_raw<S>(
    ws: &mut WebSocketStream<S>,
    frames: &mut VecDeque<Frame>,
) -> Result<(), WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    ws.flush().await?;
    write_frames(ws.get_mut(), frames)
        .await
        .map_err(WsError::Io)
}

/// Writes every frame's bytes, popping each once it is fully written. A frame cut by a
/// partial write stays at the front holding only its unwritten tail, so a write abandoned
/// at the deadline can still be finished before a close frame follows it.
async fn write_frames<S>(io: &mut S, frames: &mut VecDeque<Frame>) -> io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    while !frames.is_empty() {
        let mut written = std::future::poll_fn(|cx| {
            let mut slices = [IoSlice::new(&[]); GATHER];
            for (slot, frame) in slices.iter_mut().zip(frames.iter()) {
                *slot = IoSlice::new(frame.wire());
            }
            let count = frames.len().min(GATHER);
            Pin::new(&mut *io).poll_write_vectored(cx, &slices[..count])
        })
        .await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while let Some(front) = frames.front_mut() {
            let len = front.wire().len();
            if written < len {
                front.consume(written);
                break;
            }
            written -= len;
            frames.pop_front();
        }
    }
    Ok(())
}

/// Runs a write under the slow-consumer deadline.
async fn within<F>(deadline: Duration, mut write: Pin<&mut F>) -> Result<(), WriteError>
where
    F: Future<Output = Result<(), WsError>>,
{
    // Most batches complete at once into the socket buffer; arm the deadline (a timer
    // insert and removal, 3.5% of server CPU in a 5,000-client fan-out profile) only for
    // a write that has to wait. Polling again under the timeout registers the real waker.
    if let Some(result) = write.as_mut().now_or_never() {
        return result.map_err(|_| WriteError::Broken);
    }
    match tokio::time::timeout(deadline, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(WriteError::Broken),
        Err(_) => Err(WriteError::Stuck),
    }
}

/// Sends a close frame and waits (within `deadline`) for the client to answer or leave,
/// so the close frame is not lost to a reset caused by unread input. `unfinished` is the
/// tail of a publication a timed-out write cut short; it goes first, or the close frame
/// would land inside it. Returns whether that tail was written whole.
pub async fn close<S>(
    ws: &mut WebSocketStream<S>,
    unfinished: Option<Frame>,
    (code, reason): (u16, &str),
    deadline: Duration,
) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    };
    let mut tail: VecDeque<Frame> = unfinished.into_iter().collect();
    let finish = async {
        if write_raw(ws, &mut tail).await.is_err() {
            return;
        }
        if ws.send(Message::Close(Some(frame))).await.is_err() {
            return;
        }
        // Read until the client's close reply or the end of the stream.
        while let Some(Ok(_)) = ws.next().await {}
    };
    let _ = tokio::time::timeout(deadline, finish).await;
    discard_input(ws.get_mut());
    tail.is_empty()
}

/// Reads and drops whatever input is already here. A socket closed with unread input is
/// reset (RFC 2525 2.17; Linux does), which discards what the kernel still holds for the
/// client: a slow consumer that had sent one request the server never read received 5 of
/// the 2,580 publications already written to its socket (tests/it/slow_consumer.rs).
fn discard_input<S: AsyncRead + Unpin>(io: &mut S) {
    let mut sink = [0u8; 4096];
    // Bounded: a client that keeps sending while it reads nothing is reset regardless.
    for _ in 0..256 {
        match tokio::io::AsyncReadExt::read(io, &mut sink).now_or_never() {
            Some(Ok(n)) if n > 0 => continue,
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A socket that takes a few bytes per write still gets every frame whole and in
    /// order, and a write cut short leaves exactly the unwritten tail queued.
    #[tokio::test]
    async fn partial_writes_resume_mid_frame() {
        let texts: Vec<String> = (0..300)
            .map(|i| format!("frame {i} {}", "x".repeat(i % 7)))
            .collect();
        let expected: Vec<u8> = texts
            .iter()
            .flat_map(|t| Frame::from(t.clone()).wire().to_vec())
            .collect();
        let mut frames: VecDeque<Frame> = texts.into_iter().map(Frame::from).collect();

        let (mut near, mut far) = tokio::io::duplex(7);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            far.read_to_end(&mut got).await.map(|_| got)
        });
        write_frames(&mut near, &mut frames).await.expect("written");
        drop(near);
        assert!(frames.is_empty());
        assert_eq!(reader.await.unwrap().unwrap(), expected);

        // Nobody reads: the write stalls after 7 bytes, inside the first frame.
        let (mut near, _far) = tokio::io::duplex(7);
        let mut frames: VecDeque<Frame> = ["0123456789".to_string()].map(Frame::from).into();
        // One poll: the duplex takes 7 bytes, then has no room until someone reads.
        let stalled = write_frames(&mut near, &mut frames).now_or_never();
        assert!(stalled.is_none(), "the write waits for the reader");
        assert!(frames[0].started());
        assert_eq!(
            frames[0].wire(),
            b"56789",
            "2 header bytes and 01234 were taken"
        );
    }
}
