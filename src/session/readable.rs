//! Whether the client's socket may have input, so a session polls its WebSocket reader
//! only then.
//!
//! Polling tungstenite's reader when the socket has nothing costs far more than the
//! readiness check under it: tungstenite readies its buffer, the read fails with
//! `WouldBlock`, and the error is built and dropped. The session's loop used to do that on
//! every wake, and nearly every wake is a publication: in a callgrind profile of the
//! `channels` scenario (500 clients, 2,700 deliveries/s) the reader's poll was 19.6% of
//! the server's instructions, more than the writes. `Gated` sits under tungstenite and
//! gives the socket a waker of its own; `Readable::poll` lets the reader be polled only
//! once the socket's last read was not refused, or it has woken since.
//!
//! What this gives up: tungstenite also flushes a queued pong from its reader; if that
//! flush found the socket full, the pong now waits for the client's next input or the
//! session's next write (every write flushes tungstenite first), instead of for the
//! socket to drain. A client that stops reading is closed by the write timeout anyway.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The socket's side of the gate: set when its read readiness fires.
#[derive(Default)]
pub struct Readable {
    /// False from a read that found nothing until the socket wakes.
    may: AtomicBool,
    /// The session, polling the gate.
    session: AtomicWaker,
    /// Whoever read last (tungstenite's own waker, also when the session is closing and
    /// reads outside the gate).
    reader: AtomicWaker,
}

impl Wake for Readable {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.may.store(true, Ordering::Release);
        self.session.wake();
        self.reader.wake();
    }
}

impl Readable {
    /// Ready when the reader is worth polling; otherwise the task in `cx` is woken when
    /// the socket is.
    pub fn poll(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.may.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        self.session.register(cx.waker());
        // A wake between the check and the registration woke no one: look again.
        match self.may.load(Ordering::Acquire) {
            true => Poll::Ready(()),
            false => Poll::Pending,
        }
    }
}

/// The client's socket, telling its `Readable` when a read finds nothing and when it may
/// find something again. Writes pass through.
pub struct Gated<S> {
    io: S,
    readable: Arc<Readable>,
    /// `readable` as a waker, made once.
    waker: Waker,
}

impl<S> Gated<S> {
    pub fn new(io: S) -> Self {
        let readable = Arc::new(Readable {
            may: AtomicBool::new(true),
            ..Readable::default()
        });
        Gated {
            io,
            waker: Waker::from(readable.clone()),
            readable,
        }
    }

    pub fn readable(&self) -> &Arc<Readable> {
        &self.readable
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Gated<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.readable.reader.register(cx.waker());
        // Cleared before the read, so a wake that lands during it is not overwritten.
        this.readable.may.store(false, Ordering::Release);
        let polled = Pin::new(&mut this.io).poll_read(&mut Context::from_waker(&this.waker), buf);
        if polled.is_ready() {
            this.readable.may.store(true, Ordering::Release);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Gated<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The gate closes on a read that finds nothing and opens when input arrives, waking
    /// the task that polled it.
    #[tokio::test]
    async fn opens_when_the_socket_has_input() {
        let (near, mut far) = tokio::io::duplex(64);
        let mut gated = Gated::new(near);
        let readable = gated.readable().clone();
        let poll_gate = || std::future::poll_fn(|cx| readable.poll(cx));
        assert!(poll_gate().now_or_never().is_some(), "open before any read");

        let mut buf = [0u8; 8];
        assert!(gated.read(&mut buf).now_or_never().is_none(), "nothing yet");
        assert!(
            poll_gate().now_or_never().is_none(),
            "closed after an empty read"
        );

        let gate = tokio::spawn({
            let readable = readable.clone();
            async move { std::future::poll_fn(|cx| readable.poll(cx)).await }
        });
        tokio::task::yield_now().await;
        far.write_all(b"hi").await.unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), gate)
            .await
            .expect("the gate's task is woken by the input")
            .unwrap();
        assert_eq!(gated.read(&mut buf).await.unwrap(), 2);
        assert!(
            poll_gate().now_or_never().is_some(),
            "open after a read that took bytes"
        );
    }
}
