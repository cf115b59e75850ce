//! A TCP proxy between Herald and Redis that can fail silently: `freeze` stops forwarding
//! on open connections while keeping them open (no FIN, no RST), like a wedged middlebox
//! or a half-open connection. Only a liveness probe can notice that.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

struct Shared {
    upstream: SocketAddr,
    /// The freeze flag of every connection opened since the last `freeze`.
    open: Mutex<Vec<Arc<AtomicBool>>>,
    /// While set, connections are frozen from the moment they open.
    freeze_new: AtomicBool,
    opened: AtomicUsize,
}

impl Proxy {
    /// Listens on 127.0.0.1:0 and forwards each connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let shared = Arc::new(Shared {
            upstream,
            open: Mutex::default(),
            freeze_new: AtomicBool::new(false),
            opened: AtomicUsize::new(0),
        });
        let stop = CancellationToken::new();
        tokio::spawn(accept(listener, shared.clone(), stop.clone()));
        Proxy { addr, shared, stop }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    /// Connections accepted so far.
    pub fn opened(&self) -> usize {
        self.shared.opened.load(Ordering::SeqCst)
    }

    /// Every connection open now stops forwarding both ways and stays open.
    pub fn freeze(&self) {
        for flag in self.shared.open.lock().unwrap().drain(..) {
            flag.store(true, Ordering::SeqCst);
        }
    }

    /// While `on`, new connections are accepted but frozen from the start (the network is
    /// down for new connections too); when off, new connections forward normally.
    pub fn freeze_new(&self, on: bool) {
        self.shared.freeze_new.store(on, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn accept(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let client = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => client,
                Err(_) => continue,
            },
        };
        shared.opened.fetch_add(1, Ordering::SeqCst);
        let frozen = Arc::new(AtomicBool::new(shared.freeze_new.load(Ordering::SeqCst)));
        shared.open.lock().unwrap().push(frozen.clone());
        let (upstream, stop) = (shared.upstream, stop.clone());
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(upstream).await else {
                return; // dropping `client` closes it, as a refused upstream would
            };
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::join!(
                forward(client_read, server_write, &frozen, &stop),
                forward(server_read, client_write, &frozen, &stop),
            );
        });
    }
}

/// Copies until EOF or error; once frozen it stops and holds both halves open until the
/// proxy is dropped, so the peers see neither data nor a close.
async fn forward(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    frozen: &AtomicBool,
    stop: &CancellationToken,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if frozen.load(Ordering::SeqCst) {
            stop.cancelled().await;
            return;
        }
        let read = tokio::select! {
            _ = stop.cancelled() => return,
            read = from.read(&mut buf) => read,
        };
        // What arrives after a freeze, data or a close, is swallowed: the loop parks above.
        if frozen.load(Ordering::SeqCst) {
            continue;
        }
        let n = match read {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
