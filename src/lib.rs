//! Herald: a WebSocket fan-out gateway for Redis pub/sub.
//!
//! ```text
//!  publishers ──PUBLISH──► Redis ──one pub/sub connection──► redis/ io thread, as it
//!   (or FCALL herald_publish: kept in history, with an offset)  │ reads (nothing queued):
//!                                                               │ hub.publish: encode once,
//!                                                               ▼ append to its tape once
//!  clients ◄──WebSocket── session/ (a task each) ◄── inbox ◄── hub (channel -> tape)
//!                              │ subscribe/unsubscribe            │ first in / last out
//!                              └──────────────► hub ──dirty set──► redis/ reconciles
//! ```
//!
//! - `config`     every flag with its `HERALD_*` variable, default and unit
//! - `app`        wiring and the shutdown sequence
//! - `http`       the listener: /ws /healthz /readyz /metrics /api/, refusals before the upgrade
//! - `session`    one task per connection: requests, vectored writes under a deadline, heartbeat;
//!   each wake looks only at what may have news (the socket's readiness gate, one timer)
//! - `tape`       a channel's last frames, read by each subscriber from its own cursor
//!   (on a history channel, where fills and resumes join the live stream)
//! - `history`    history channels: rules, offsets, the Redis function library's source,
//!   and the ordering of live publications and history reads (no I/O)
//! - `inbox`      which tapes have news for a session, and its one wake
//! - `hub`        channel -> tape; the record of what Redis should carry
//! - `redis`      the subscriber connection (own thread; read on another, which fans
//!   each publication out as it reads it): reconnect, resubscribe, reconcile, probe; the
//!   command connection beside it for history reads; the target (one node, a master named by Sentinel and followed
//!   across failovers, or a Redis Cluster: a link per master, channels SSUBSCRIBEd on
//!   their slot's owner, the topology followed) and the API's command handle that
//!   follows it too
//! - `api`        the server API: publish over HTTP, channel counts, disconnect a user
//! - `presence`   each instance's channel counts in Redis, for the API's cluster scope
//! - `disconnect` each token subject's sessions, for the API's disconnect
//! - `gate`       the connection limits, per instance and per client IP
//! - `fd_limit`   the connection limit the open-files limit really allows
//! - `auth`       JWT verification and channel grants
//! - `client_ip`  the client address behind trusted proxies
//! - `readiness`  what `/readyz` answers
//! - `protocol`   wire frames and close codes
//! - `channel`    the channel-name rule and the prefix mapping
//! - `payload`    a Redis payload -> the one shared `message` WebSocket frame
//! - `backoff`    capped exponential backoff with full jitter
//! - `metrics`    every `herald_*` family on a handed-in registry

#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod auth;
pub mod backoff;
pub mod channel;
pub mod client_ip;
pub mod config;
pub mod disconnect;
pub mod fd_limit;
pub mod gate;
pub mod history;
pub mod http;
pub mod hub;
pub mod inbox;
pub mod metrics;
pub mod payload;
pub mod presence;
#[cfg(test)]
mod props;
pub mod protocol;
pub mod proxy_protocol;
pub mod readiness;
pub mod redis;
pub mod session;
pub mod tape;
