//! Wiring only: build the parts, serve, and run the shutdown sequence.
//!
//! Shutdown, in order: readiness 503 (load balancers stop sending) -> new WebSockets refused
//! with 503 -> sessions close with 1001, spread over the drain period -> wait for them
//! (bounded) -> stop the Redis subscriber -> exit 0. hyper's graceful shutdown does not see
//! upgraded connections, so sessions drain on our own token.

use std::num::NonZeroU32;
use std::sync::Arc;

use prometheus::Registry;
use tokio::net::{TcpListener, TcpSocket};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::api::Api;
use crate::auth::{Auth, KeyError, KeySource, Patterns, Settings as AuthSettings};
use crate::channel::Prefix;
use crate::config::Config;
use crate::disconnect::Disconnects;
use crate::fd_limit;
use crate::gate::Gate;
use crate::http::{self, Front};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::presence::Presence;
use crate::readiness::Readiness;
use crate::redis::{Commands, Settings as RedisSettings, Subscriber, TlsFiles};
use crate::session::{self, Shared};
use crate::tape::Budget;

/// Read buffer per connection, in bytes. tungstenite allocates it eagerly for every
/// connection and grows it on demand for a larger frame; clients send little (requests,
/// pongs). Measured with `herald-loadtest idle --clients 10000`: 7.9 KiB of RSS per idle
/// subscribed connection at 4096, 4.2 KiB at 512, 3.9 KiB at 256 (tungstenite's default,
/// 128 KiB, would cost that much per client).
const READ_BUFFER: usize = 256;
/// Bytes gathered before tungstenite writes to the socket; a batch is flushed anyway.
const WRITE_BUFFER: usize = 64 * 1024;

/// A failure that stops the process before or while serving.
#[derive(Debug)]
pub enum AppError {
    Bind(std::io::Error),
    Redis(::redis::RedisError),
    Metrics(prometheus::Error),
    Signal(std::io::Error),
    Auth(KeyError),
    KeyFile(&'static str, std::io::Error),
    Thread(std::io::Error),
    /// The Redis subscriber thread ended (a panic, a bug) while the instance was serving.
    SubscriberEnded,
}

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppError::Bind(e) => write!(f, "cannot listen: {e}"),
            AppError::Redis(e) => write!(f, "bad redis settings: {e}"),
            AppError::Metrics(e) => write!(f, "cannot register metrics: {e}"),
            AppError::Signal(e) => write!(f, "cannot install signal handlers: {e}"),
            AppError::Auth(e) => write!(f, "{e}"),
            AppError::KeyFile(var, e) => write!(f, "cannot read the file named by {var}: {e}"),
            AppError::Thread(e) => write!(f, "cannot start the redis subscriber thread: {e}"),
            AppError::SubscriberEnded => f.write_str(
                "the redis subscriber thread ended unexpectedly; clients were drained and the \
                 process exits so that it is replaced",
            ),
        }
    }
}

pub async fn run(config: Config) -> Result<(), AppError> {
    let metrics = Metrics::new(Registry::new()).map_err(AppError::Metrics)?;
    let readiness = Arc::new(Readiness::default());
    let hub = Arc::new(Hub::new(
        metrics.clone(),
        config.queue_capacity as usize,
        config.history.clone(),
        Arc::new(Budget::new(
            config.channel_max_bytes as usize,
            config.max_queued_bytes as usize,
        )),
    ));
    let (history_requests, history_queue) = crate::history::request::queue();
    let drain = CancellationToken::new();
    let stop_accepting = CancellationToken::new();
    let stop_redis = CancellationToken::new();
    let sessions = TaskTracker::new();

    let redis_settings = RedisSettings {
        url: config.redis_url.clone(),
        tls: redis_tls(&config)?,
        prefix: Prefix::new(config.channel_prefix.clone()),
        history: config.history.clone(),
        history_timeout: config.history_timeout,
        probe_interval: config.redis_probe_interval,
        timeout: config.redis_timeout,
        backoff_base: config.redis_backoff_base,
        backoff_max: config.redis_backoff_max,
    };
    let disconnects = Arc::new(Disconnects::default());
    let locator = Arc::new(crate::redis::locator(&redis_settings).map_err(AppError::Redis)?);
    // Commands for the server API and the channel counts: connected when first used and
    // again, to the master of the moment, after a failure; apart from the subscriber.
    let commands = Commands::new(locator.clone(), config.redis_timeout);
    let presence = Arc::new(Presence::new(
        hub.clone(),
        readiness.clone(),
        commands.clone(),
        &redis_settings.prefix,
        config.presence_interval,
    ));
    let api = Api {
        key: config.api_key.clone(),
        max_body: config.api_max_body as usize,
        redis: commands,
        prefix: redis_settings.prefix.clone(),
        history: config.history.clone(),
        hub: hub.clone(),
        presence: presence.clone(),
        metrics: metrics.clone(),
    };
    let subscriber = Subscriber::new(
        redis_settings,
        locator,
        hub.clone(),
        metrics.clone(),
        readiness.clone(),
        disconnects.clone(),
    );

    let auth = Arc::new(Auth::new(auth_settings(&config)?).map_err(AppError::Auth)?);
    let settings = session::Settings {
        heartbeat: config.heartbeat,
        limits: session::Limits {
            held: config.max_subscriptions as usize,
            per_request: config.max_channels_per_request as usize,
        },
        write_timeout: config.write_timeout,
        drain_period: config.drain_period,
        history_wait: config.history_timeout,
        rate: session::RateSettings {
            per_second: NonZeroU32::new(config.rate_limit).unwrap_or(NonZeroU32::MIN),
            burst: NonZeroU32::new(config.rate_burst).unwrap_or(NonZeroU32::MIN),
            strikes: config.rate_limit_strikes,
        },
    };
    let max_frame = config.max_frame_size as usize;
    let front = Arc::new(Front {
        shared: Arc::new(Shared::new(
            hub,
            auth,
            metrics.clone(),
            settings,
            drain.clone(),
            history_requests,
            disconnects,
        )),
        api,
        readiness: readiness.clone(),
        gate: Gate::new(
            fd_limit::connection_budget(config.max_connections) as usize,
            config.max_connections_per_ip as usize,
            metrics,
        ),
        allowed_origins: config
            .allowed_origins
            .iter()
            .map(|o| o.trim_end_matches('/').to_lowercase())
            .collect(),
        trusted_proxies: config.trusted_proxies.clone(),
        handshake_timeout: config.handshake_timeout,
        proxy_protocol: config.proxy_protocol,
        sessions: sessions.clone(),
        ws_config: WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER)
            .write_buffer_size(WRITE_BUFFER)
            .max_frame_size(Some(max_frame))
            .max_message_size(Some(max_frame)),
    });

    let listener = listen(config.listen).map_err(AppError::Bind)?;
    let addr = listener.local_addr().map_err(AppError::Bind)?;
    let mut redis_stopped = subscriber
        .spawn(history_queue, stop_redis.clone())
        .map_err(AppError::Thread)?;
    let http_task = tokio::spawn(http::serve(listener, front, stop_accepting.clone()));
    let stop_presence = CancellationToken::new();
    let presence_task = {
        let stop = stop_presence.clone();
        tokio::spawn(async move { presence.run(stop).await })
    };
    info!(%addr, "listening");

    // Without its subscriber the instance would live on as a zombie: connected clients
    // receiving nothing. If the thread ends first, drain as for a signal, then fail.
    let outcome = until_stop(wait_for_signal(), &mut redis_stopped).await?;

    info!(drain_period = ?config.drain_period, "draining");
    readiness.start_draining();
    drain.cancel();
    sessions.close();
    // Each session closes within the drain period, then gets one write timeout for the
    // close handshake; past that the process exits regardless.
    let deadline = config.drain_period + config.write_timeout * 2;
    if tokio::time::timeout(deadline, sessions.wait())
        .await
        .is_err()
    {
        warn!(
            left = sessions.len(),
            "drain deadline passed with sessions still open"
        );
    }
    stop_accepting.cancel();
    // This instance's counts leave Redis before it does.
    stop_presence.cancel();
    let _ = presence_task.await;
    stop_redis.cancel();
    let _ = http_task.await;
    if outcome.is_ok() {
        let _ = redis_stopped.await;
    }
    info!("stopped");
    outcome
}

fn redis_tls(config: &Config) -> Result<TlsFiles, AppError> {
    let read = |var: &'static str, path: &Option<std::path::PathBuf>| {
        path.as_ref()
            .map(|path| std::fs::read(path).map_err(|e| AppError::KeyFile(var, e)))
            .transpose()
    };
    let cert = read("HERALD_REDIS_CLIENT_CERT", &config.redis_client_cert)?;
    let key = read("HERALD_REDIS_CLIENT_KEY", &config.redis_client_key)?;
    Ok(TlsFiles {
        ca: read("HERALD_REDIS_CA_FILE", &config.redis_ca_file)?,
        client: cert.zip(key),
    })
}

fn auth_settings(config: &Config) -> Result<AuthSettings, AppError> {
    let read = |var: &'static str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| AppError::KeyFile(var, e))
    };
    let key = if let Some(secret) = &config.jwt_secret {
        KeySource::Secret(secret.clone())
    } else if let Some(path) = &config.jwt_public_key {
        KeySource::PublicKeyPem(read("HERALD_JWT_PUBLIC_KEY", path)?)
    } else if let Some(path) = &config.jwt_jwks {
        let bytes = read("HERALD_JWT_JWKS", path)?;
        KeySource::Jwks(String::from_utf8_lossy(&bytes).into_owned())
    } else {
        KeySource::None
    };
    Ok(AuthSettings {
        key,
        audience: config.jwt_audience.clone(),
        issuer: config.jwt_issuer.clone(),
        leeway: config.jwt_leeway,
        public_channels: Patterns::new(config.public_channels.iter().cloned()),
    })
}

/// Pending connections the kernel queues before `accept`. tokio's default (128) overflows
/// in a reconnect storm of a few hundred clients (TcpExtListenOverflows rose by 631 in a
/// 5,000-client connect test); each overflow costs the client a 1 s SYN retry.
const LISTEN_BACKLOG: u32 = 4096;

fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serves until a shutdown signal (`Ok(Ok)`), or until the subscriber thread ends first
/// (`Ok(Err)`: drain, then fail).
async fn until_stop(
    signal: impl std::future::Future<Output = Result<(), AppError>>,
    redis_stopped: &mut tokio::sync::oneshot::Receiver<()>,
) -> Result<Result<(), AppError>, AppError> {
    tokio::select! {
        signal = signal => signal.map(Ok),
        _ = redis_stopped => {
            tracing::error!("redis subscriber thread ended; draining and exiting");
            Ok(Err(AppError::SubscriberEnded))
        }
    }
}

async fn wait_for_signal() -> Result<(), AppError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(AppError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(AppError::Signal)?;
    tokio::select! {
        _ = term.recv() => info!(signal = "SIGTERM", "shutdown requested"),
        _ = int.recv() => info!(signal = "SIGINT", "shutdown requested"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A subscriber thread that dies (here by panicking) ends serving, as a failure.
    #[tokio::test]
    async fn a_dead_subscriber_thread_stops_the_instance() {
        let (stopped, mut on_stop) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let _held = stopped;
            panic!("forced end of the subscriber thread");
        });
        assert!(thread.join().is_err());
        let never = std::future::pending::<Result<(), AppError>>();
        let outcome = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            until_stop(never, &mut on_stop),
        )
        .await
        .expect("noticed at once");
        assert!(matches!(outcome, Ok(Err(AppError::SubscriberEnded))));
    }
}
