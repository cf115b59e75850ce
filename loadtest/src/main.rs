//! herald-loadtest: the load-test instrument for Herald (and Nchan, side by side).
//!
//! ```text
//!  coordinator (this process, `herald-loadtest SCENARIO`)
//!   │ spawns K workers = this binary, `worker` subcommand; plan on stdin, events on stdout
//!   ├──► worker 0: clients [0, N/K)   ─┐ one current_thread runtime each, raw WebSocket
//!   ├──► worker 1: clients [N/K, 2N/K) ┼─► reader per connection: latency into an HDR
//!   │                                  ┘   histogram, sequence gaps = losses
//!   ├── publisher: PUBLISH or FCALL herald_publish to Redis (Cluster: SPUBLISH or FCALL
//!   │   on each channel's master), or POST to Nchan, at a fixed, smooth rate; api_publish: C connections to Herald's API (or to Redis),
//!   │   one request in flight each
//!   └── probes: /proc/PID of the server (CPU, RSS), /proc/self of every generator process
//! ```
//!
//! - `cli`        every scenario and flag, with defaults
//! - `scenario/`  one file per scenario: what it publishes and what it reports
//! - `run`        the set-up every scenario shares: workers, readiness, Redis subscriptions
//! - `phase`      one measured publishing window: publish, drain, collect, compute
//! - `fleet`      the coordinator's side of the worker processes
//! - `worker/`    a worker process: connect its slice of clients, answer commands
//! - `client`     one subscriber connection: sequence and latency bookkeeping
//! - `conn`       socket, handshake and the frame reader under `client`
//! - `wire`       WebSocket frame header rules (RFC 6455 §5.2)
//! - `peer`       what differs between Herald and Nchan on the subscriber side
//! - `decode`     a received text frame -> stamp (+ offset) / welcome / lagged / ok / error
//! - `stamp`      the publication payload `{"t":ns,"s":seq,"c":channel}`
//! - `wave`       the reconnect wave of `resume`: each client's turn, what the workers count
//! - `publish/`   Redis and Nchan publishers and the rate pacer; the closed loop of
//!   `api_publish` (Herald's POST /api/publish with hyper, or Redis directly)
//! - `cluster`    a Redis Cluster's masters (`--redis redis+cluster://`), each channel's master
//! - `redis_ops`  PUBSUB NUMSUB (Cluster: SHARDNUMSUB) waits, SHUTDOWN NOSAVE, waiting for Redis to come back,
//!   INFO commandstats
//! - `tally`      counters and the latency histogram, mergeable across processes
//! - `events`     the worker <-> coordinator line protocol
//! - `plan`       what a worker is told: layout of clients over channels, target, limits
//! - `sources`    local source addresses for many connections
//! - `procfs`     reading /proc: CPU ticks, RSS, open-file limit
//! - `usage`      server and generator CPU/RSS over a measured window
//! - `report`     results as text or one JSON line
//! - `bench/`     after the runs, from the JSON reports: one-line summaries (smoke.sh),
//!   the benchmark page of medians and its SVG plot (run.sh)

#![forbid(unsafe_code)]

mod bench;
mod cli;
mod client;
mod cluster;
mod conn;
mod decode;
mod events;
mod fleet;
mod peer;
mod phase;
mod plan;
mod procfs;
mod publish;
mod redis_ops;
mod report;
mod run;
mod scenario;
mod sources;
mod stamp;
mod tally;
mod usage;
mod wave;
mod wire;
mod wire_length;
mod worker;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli.scenario {
        cli::Scenario::Worker => worker::main(),
        cli::Scenario::Summary(args) => bench::summary(&args),
        cli::Scenario::Table(args) => bench::table(&args),
        scenario => scenario::main(scenario),
    }
}
