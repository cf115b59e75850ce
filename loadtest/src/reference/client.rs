//! One client socket: what it sent us that is not handled yet, what we owe it, and its
//! channels.
//!
//! The outbound queue holds shared frames (`Bytes`: a publication is encoded once and
//! each client holds a reference) and is written with one `writev` per flush. A client
//! whose socket would block keeps its queue, up to `max_queue` bytes; past that it is
//! closed and counted as slow, never silently skipped.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};

use bytes::{Buf, Bytes};
use mio::net::TcpStream;

/// Frames handed to one `writev`: well under IOV_MAX (1024 on Linux).
const SLICES: usize = 256;
/// Bytes read per `read` call.
const READ_CHUNK: usize = 4096;

pub struct Client {
    pub stream: TcpStream,
    /// Received bytes not yet parsed.
    pub inbuf: Vec<u8>,
    /// Upgraded to a WebSocket (else still reading the HTTP request).
    pub upgraded: bool,
    pub channels: Channels,
    /// In the current Redis batch's list of clients to flush.
    pub touched: bool,
    /// Close once the queue is written (after a plain HTTP answer or a close frame).
    pub closing: bool,
    /// The queue went past its bound: to be closed as a slow consumer.
    pub overflowed: bool,
    queue: VecDeque<Bytes>,
    queued: usize,
}

/// A client's channels: a sorted list (a `BTreeSet`'s first entry allocates a whole node,
/// ~200 bytes, for the one channel most clients hold).
#[derive(Default)]
pub struct Channels(Vec<String>);

impl Channels {
    /// Adds `channel`; false if it was there.
    pub fn insert(&mut self, channel: String) -> bool {
        match self.0.binary_search(&channel) {
            Ok(_) => false,
            Err(at) => {
                self.0.insert(at, channel);
                true
            }
        }
    }

    /// Removes `channel`; false if it was not there.
    pub fn remove(&mut self, channel: &str) -> bool {
        match self.0.binary_search_by(|held| held.as_str().cmp(channel)) {
            Ok(at) => {
                self.0.remove(at);
                true
            }
            Err(_) => false,
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &String> {
        self.0.iter()
    }
}

/// How reading ended.
pub enum Reading {
    /// Nothing more to read for now.
    Blocked,
    /// End of stream or a read error.
    Gone,
}

impl Client {
    pub fn new(stream: TcpStream) -> Client {
        Client {
            stream,
            inbuf: Vec::new(),
            upgraded: false,
            channels: Channels::default(),
            touched: false,
            closing: false,
            overflowed: false,
            queue: VecDeque::new(),
            queued: 0,
        }
    }

    /// Queues bytes to send; past `max_queue` bytes the client is marked overflowed and
    /// nothing more is queued.
    pub fn push(&mut self, bytes: Bytes, max_queue: usize) {
        if self.overflowed {
            return;
        }
        if self.queued + bytes.len() > max_queue {
            self.overflowed = true;
            return;
        }
        self.queued += bytes.len();
        self.queue.push_back(bytes);
    }

    pub fn is_drained(&self) -> bool {
        self.queue.is_empty()
    }

    /// Reads everything the socket has (edge-triggered readiness needs that), up to
    /// `limit` unparsed bytes. Reads go through a buffer on the stack, so an idle client
    /// holds no read buffer (with one of READ_CHUNK per client, the reference's idle
    /// clients cost more memory than Herald's, which would flatter Herald).
    pub fn read(&mut self, limit: usize) -> Reading {
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            if self.inbuf.len() >= limit {
                return Reading::Gone;
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => return Reading::Gone,
                Ok(n) => self.inbuf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Reading::Blocked,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Reading::Gone,
            }
        }
    }

    /// Writes the queue: one `writev`, another only if that one took all it was given
    /// and more is queued. Stops at WouldBlock; the writable event resumes it.
    pub fn flush(&mut self) -> io::Result<()> {
        while !self.queue.is_empty() {
            let mut slices = [IoSlice::new(&[]); SLICES];
            let mut count = 0;
            for (slot, bytes) in slices.iter_mut().zip(&self.queue) {
                *slot = IoSlice::new(bytes);
                count += 1;
            }
            let mut written = match self.stream.write_vectored(&slices[..count]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.queued -= written;
            while written > 0 {
                let front = self.queue.front_mut().expect("written bytes were queued");
                if written >= front.len() {
                    written -= front.len();
                    self.queue.pop_front();
                } else {
                    front.advance(written);
                    written = 0;
                }
            }
        }
        Ok(())
    }
}
