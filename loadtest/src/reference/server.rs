//! The one loop: accept, read client requests, read Redis batches and fan them out.
//!
//! Per Redis read batch: each `message` push is encoded once (Herald's own
//! `payload::message`) into one shared buffer, queued by reference to every subscriber,
//! and every client touched by the batch gets one `writev`. No timers, no tasks, no
//! threads: `poll` blocks until a socket is ready.

use std::io;
use std::net::SocketAddr;

use bytes::Bytes;
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};

use crate::client::{Client, Reading};
use crate::hub::{ClientId, Hub};
use crate::ops::{self, Op};
use crate::redis::Redis;
use crate::ws::{self, Request};

const LISTENER: Token = Token(0);
const REDIS: Token = Token(1);
/// Client slot `i` is `Token(i + FIRST_CLIENT)`.
const FIRST_CLIENT: usize = 2;
/// Pending connections the kernel queues before `accept`: Herald's (src/app.rs). mio's
/// `bind` listens with 128, which overflows when 500 connects are in flight, and each
/// overflow costs that client a 1 s SYN retry: connect would measure the backlog.
const LISTEN_BACKLOG: i32 = 4096;

/// A non-blocking listener on `addr` with [`LISTEN_BACKLOG`].
fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(TcpListener::from_std(socket.into()))
}

/// What the server counts; printed when a slow client is closed and at exit.
#[derive(Debug, Default)]
pub struct Stats {
    pub accepted: u64,
    pub publications: u64,
    pub deliveries: u64,
    /// Clients closed because their queue passed `max_queue` bytes.
    pub closed_slow: u64,
}

pub struct Server {
    poll: Poll,
    listener: TcpListener,
    redis: Redis,
    hub: Hub,
    clients: Vec<Option<Client>>,
    free: Vec<ClientId>,
    /// Clients queued to in the current Redis batch.
    touched: Vec<ClientId>,
    /// Bound on one client's outbound queue, in bytes.
    max_queue: usize,
    next_session: u64,
    pub stats: Stats,
}

impl Server {
    pub fn new(
        listen_on: SocketAddr,
        redis: Redis,
        max_queue: usize,
    ) -> io::Result<(Server, SocketAddr)> {
        let poll = Poll::new()?;
        let mut listener = listen(listen_on)?;
        let addr = listener.local_addr()?;
        let mut redis = redis;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        poll.registry().register(
            &mut redis.stream,
            REDIS,
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let server = Server {
            poll,
            listener,
            redis,
            hub: Hub::default(),
            clients: Vec::new(),
            free: Vec::new(),
            touched: Vec::new(),
            max_queue,
            next_session: 0,
            stats: Stats::default(),
        };
        Ok((server, addr))
    }

    /// Runs until Redis is lost or polling fails; both are errors.
    pub fn run(&mut self) -> Result<(), String> {
        let mut events = Events::with_capacity(1024);
        loop {
            match self.poll.poll(&mut events, None) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("poll: {e}")),
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    REDIS => {
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.read_redis()?;
                        }
                    }
                    Token(t) => {
                        let id = t - FIRST_CLIENT;
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.read_client(id);
                        }
                        if event.is_writable() {
                            self.flush_client(id);
                        }
                    }
                }
            }
            self.redis.flush()?;
        }
    }

    fn accept(&mut self) {
        loop {
            let (mut stream, _) = match self.listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and the like: the pending connection waits in the backlog.
                    eprintln!("accept: {e}");
                    return;
                }
            };
            let _ = stream.set_nodelay(true);
            let id = self.free.pop().unwrap_or_else(|| {
                self.clients.push(None);
                self.clients.len() - 1
            });
            let interest = Interest::READABLE | Interest::WRITABLE;
            if let Err(e) =
                self.poll
                    .registry()
                    .register(&mut stream, Token(id + FIRST_CLIENT), interest)
            {
                eprintln!("register: {e}");
                self.free.push(id);
                continue;
            }
            self.stats.accepted += 1;
            self.clients[id] = Some(Client::new(stream));
        }
    }

    /// Reads Redis batch by batch; each batch is fanned out and flushed before the next.
    fn read_redis(&mut self) -> Result<(), String> {
        while self.redis.read()? {
            let Server {
                redis,
                hub,
                clients,
                touched,
                stats,
                max_queue,
                ..
            } = self;
            redis.messages(|channel, payload| {
                let Ok(channel) = std::str::from_utf8(channel) else {
                    return;
                };
                let Some(subscribers) = hub.subscribers(channel) else {
                    return;
                };
                stats.publications += 1;
                let frame = herald::payload::message(channel, payload, None);
                let frame = Bytes::copy_from_slice(frame.wire());
                for &id in subscribers {
                    let Some(client) = clients[id].as_mut() else {
                        continue;
                    };
                    client.push(frame.clone(), *max_queue);
                    stats.deliveries += 1;
                    if !client.touched {
                        client.touched = true;
                        touched.push(id);
                    }
                }
            })?;
            let mut batch = std::mem::take(&mut self.touched);
            for &id in &batch {
                if let Some(client) = self.clients[id].as_mut() {
                    client.touched = false;
                }
                self.flush_client(id);
            }
            batch.clear();
            self.touched = batch;
        }
        Ok(())
    }

    /// Writes what the client is owed; closes it when it overflowed, failed, or is done.
    fn flush_client(&mut self, id: ClientId) {
        let Some(client) = self.clients[id].as_mut() else {
            return;
        };
        if client.overflowed {
            self.stats.closed_slow += 1;
            eprintln!(
                "closed a slow client (queue past {} bytes); {} so far",
                self.max_queue, self.stats.closed_slow
            );
            self.close(id);
            return;
        }
        let failed = client.flush().is_err();
        if failed || (client.closing && client.is_drained()) {
            self.close(id);
        }
    }

    fn read_client(&mut self, id: ClientId) {
        let Some(client) = self.clients[id].as_mut() else {
            return;
        };
        let limit = if client.upgraded {
            ws::MAX_FRAME + 14
        } else {
            ws::MAX_HEAD
        };
        let gone = matches!(client.read(limit), Reading::Gone);
        if let Err(why) = self.handle(id) {
            eprintln!("closing a client: {why}");
            self.close(id);
            return;
        }
        if gone {
            self.close(id);
        } else {
            self.flush_client(id);
        }
    }

    /// Handles every complete request or frame the client sent.
    fn handle(&mut self, id: ClientId) -> Result<(), &'static str> {
        loop {
            let Some(client) = self.clients[id].as_mut() else {
                return Ok(());
            };
            if client.closing {
                client.inbuf.clear();
                return Ok(());
            }
            if !client.upgraded {
                let Some((request, len)) =
                    ws::request(&client.inbuf).map_err(|()| "bad request head")?
                else {
                    return Ok(());
                };
                client.inbuf.drain(..len);
                self.upgrade(id, request);
                continue;
            }
            let Some((frame, len)) = ws::client_frame(&client.inbuf)? else {
                if client.inbuf.is_empty() {
                    // Everything was handled: an idle client keeps no buffer.
                    client.inbuf = Vec::new();
                }
                return Ok(());
            };
            client.inbuf.drain(..len);
            match frame.opcode {
                ws::TEXT => self.request(id, &frame.payload),
                ws::PING => client.push(ws::frame(ws::PONG, &frame.payload), self.max_queue),
                ws::CLOSE => {
                    let code = frame.payload.get(..2).unwrap_or(&[]);
                    client.push(ws::frame(ws::CLOSE, code), self.max_queue);
                    client.closing = true;
                }
                ws::PONG => {}
                _ => {
                    let refusal = ops::error(None, "bad_request", "binary frames are not read");
                    client.push(ws::frame(ws::TEXT, refusal.as_bytes()), self.max_queue);
                }
            }
        }
    }

    fn upgrade(&mut self, id: ClientId, request: Request) {
        let client = self.clients[id].as_mut().expect("a live client");
        let (key, channels) = match request {
            Request::Plain(status) => {
                client.push(ws::plain(status), self.max_queue);
                client.closing = true;
                return;
            }
            Request::Upgrade { key, channels } => (key, channels),
        };
        client.upgraded = true;
        client.push(ws::switching(&key), self.max_queue);
        for channel in channels {
            if self.hub.join(&channel, id) {
                self.redis.subscribe(&channel);
            }
            client.channels.insert(channel);
        }
        self.next_session += 1;
        let welcome = ops::welcome(self.next_session, client.channels.iter().cloned());
        client.push(ws::frame(ws::TEXT, welcome.as_bytes()), self.max_queue);
    }

    fn request(&mut self, id: ClientId, text: &[u8]) {
        let client = self.clients[id].as_mut().expect("a live client");
        let reply = match ops::parse(text) {
            Op::Subscribe(id_, channels) => {
                for channel in channels {
                    if self.hub.join(&channel, id) {
                        self.redis.subscribe(&channel);
                    }
                    client.channels.insert(channel);
                }
                ops::ok(id_, client.channels.iter().cloned())
            }
            Op::Unsubscribe(id_, channels) => {
                for channel in channels {
                    if client.channels.remove(&channel) && self.hub.leave(&channel, id) {
                        self.redis.unsubscribe(&channel);
                    }
                }
                ops::ok(id_, client.channels.iter().cloned())
            }
            Op::Ping(id_) => ops::pong(id_),
            Op::Refused(id_, code, message) => ops::error(id_, code, message),
        };
        client.push(ws::frame(ws::TEXT, reply.as_bytes()), self.max_queue);
    }

    /// Drops the client: its channels (UNSUBSCRIBE the ones it was last on), its slot.
    fn close(&mut self, id: ClientId) {
        let Some(client) = self.clients[id].take() else {
            return;
        };
        for channel in client.channels.iter() {
            if self.hub.leave(channel, id) {
                self.redis.unsubscribe(channel);
            }
        }
        self.free.push(id);
        // Dropping the stream closes the socket, which takes it out of epoll.
    }
}
