//! herald-reference: the practical limit Herald's fan-out is measured against (issue 14).
//!
//! One thread; one raw-RESP SUBSCRIBE connection to Redis; each publication encoded once
//! into a shared buffer as Herald's `message` frame; one `writev` per client touched by a
//! Redis read batch; no timers, no tasks. It speaks the part of Herald's wire format the
//! load generator uses (`/ws?channels=`, `welcome`, `subscribe`/`unsubscribe`/`ping`,
//! `message`), so the same scenarios run against it. See loadtest/README.md.
//!
//! - `server`  the epoll loop: accept, client requests, Redis batches, fan-out
//! - `client`  one socket: its bounded outbound queue and `writev` flush
//! - `hub`     channel -> subscribers; when to SUBSCRIBE and UNSUBSCRIBE
//! - `redis`   the subscriber connection: commands out, read batches in
//! - `resp`    RESP2 pushes and commands
//! - `ws`      HTTP request heads, the upgrade answer, WebSocket frames
//! - `ops`     client requests and JSON replies

#![forbid(unsafe_code)]

mod client;
mod hub;
mod ops;
mod redis;
mod resp;
mod server;
mod ws;
// The frame-length rule, shared with the generator (one file, no shared library).
#[path = "../wire_length.rs"]
mod wire_length;

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;

/// The reference fan-out server (one thread, epoll, writev).
#[derive(Parser)]
#[command(name = "herald-reference")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    /// Redis to subscribe on: plain redis://HOST:PORT only.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis: String,
    /// Bound on one client's outbound queue, in bytes; a client past it is closed and
    /// counted as slow. Default 16 MiB.
    #[arg(long, default_value_t = 16 << 20)]
    max_queue_bytes: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Redis first: once listening, the server is ready (/readyz answers 200).
    let redis = match redis::Redis::connect(&args.redis) {
        Ok(redis) => redis,
        Err(e) => {
            eprintln!("herald-reference: {e}");
            return ExitCode::from(1);
        }
    };
    let (mut server, addr) = match server::Server::new(args.listen, redis, args.max_queue_bytes) {
        Ok(started) => started,
        Err(e) => {
            eprintln!("herald-reference: listening on {}: {e}", args.listen);
            return ExitCode::from(1);
        }
    };
    eprintln!("listening on {addr}");
    let outcome = server.run();
    eprintln!("herald-reference: {:?}", server.stats);
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald-reference: {e}");
            ExitCode::from(1)
        }
    }
}
