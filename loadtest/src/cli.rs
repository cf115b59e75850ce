//! Every scenario and every flag, with its default; `herald-loadtest SCENARIO --help`
//! prints them. Small values (`--clients 50 --duration 1s`) make each scenario a smoke test.

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Load-test instrument for Herald: fan-out latency, saturation, memory per connection,
/// connect rate and Redis-outage recovery.
///
/// Start the server with a long heartbeat (Herald: `--heartbeat 300s`) so server pings do
/// not add noise; the clients answer pings anyway. Raise the open-files limit in the shell
/// first (`ulimit -n 19000`): each client is one socket.
#[derive(Debug, Parser)]
#[command(name = "herald-loadtest", version)]
pub struct Cli {
    #[command(subcommand)]
    pub scenario: Scenario,
}

#[derive(Debug, Subcommand)]
pub enum Scenario {
    /// N clients on one channel; one measured phase per publication rate.
    Fanout(Fanout),
    /// N clients on one channel; raise the rate stepwise until p99 passes the limit or a
    /// delivery is lost; reports the highest sustained deliveries/s.
    Saturate(Saturate),
    /// N clients, each on its own channel plus one shared channel.
    Channels(Channels),
    /// N idle subscribed connections held open; reports server KiB of RSS per connection.
    Idle(Idle),
    /// Time for N clients to connect and be confirmed subscribed.
    Connect(Connect),
    /// N clients over C channels; Redis is shut down and restarted; reports the time until
    /// every channel is resubscribed and a publication reaches every client.
    Outage(Outage),
    /// N clients on one history channel, publications through FCALL herald_publish; every
    /// client drops its connection and comes back with `since` within a second; reports
    /// the time until all caught up, losses, duplicates, recovered counts and the Redis
    /// commands the resume cost. Start Herald with `--history 'lt.*=1000/5m'`.
    Resume(Resume),
    /// Herald's server API: C keep-alive connections each POST one publication at a time
    /// to /api/publish for a fixed time, beside the same from C connections straight to
    /// Redis (PUBLISH); then on a history channel (API beside FCALL herald_publish).
    /// Reports publications/s and per-request p50/p99/p99.9 of each, and checks that a
    /// few WebSocket subscribers received every publication. Start Herald with
    /// `--api-key KEY --history 'hist.*=1000/5m'`.
    #[command(name = "api_publish", alias = "api-publish")]
    ApiPublish(ApiPublish),
    /// Internal: one generator process, driven by the coordinator over stdin/stdout.
    #[command(hide = true)]
    Worker,
    /// Not a scenario: one line per JSON report (from `--json`); with --strict, fails when
    /// a report is not clean or any phase lost a delivery. Used by loadtest/smoke.sh.
    Summary(Summary),
    /// Not a scenario: the benchmark page (Markdown tables of medians, and an SVG plot) from
    /// the raw JSON reports loadtest/run.sh keeps.
    Table(Table),
}

/// Which server is under test; decides the subscriber URL, the frames and the publisher.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PeerKind {
    /// Herald: `channels=` query, `welcome` frame, envelopes; publications via Redis.
    Herald,
    /// Nchan: `{channel}` in the URL, raw bodies; publications by HTTP POST.
    Nchan,
}

/// How the publisher hands publications to Redis (Herald peer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PublishVia {
    /// `PUBLISH <channel> <payload>`: live delivery only, no history, no offset.
    Publish,
    /// `FCALL herald_publish 1 <channel> <payload>` (contract 1.1): on a history channel
    /// the publication is kept and carries an offset; elsewhere it is a plain PUBLISH.
    /// Herald loads the function into Redis at start.
    Fcall,
}

impl PublishVia {
    pub fn name(self) -> &'static str {
        match self {
            PublishVia::Publish => "publish",
            PublishVia::Fcall => "fcall",
        }
    }
}

/// Flags every scenario takes.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Subscriber endpoint. Herald: its /ws URL (may carry a query). Nchan: a websocket
    /// location where `{channel}` stands for the channel (several joined by commas).
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub target: String,

    /// Redis to PUBLISH to and to query with PUBSUB (Herald peer). A Redis Cluster as
    /// `redis+cluster://h:p,h:p,...` (Herald's own form): publications then go by SPUBLISH
    /// (or FCALL) to the master owning each channel, and PUBSUB SHARDNUMSUB checks them;
    /// fanout, channels, saturate, idle and connect only.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    pub redis: String,

    /// Server under test.
    #[arg(long, value_enum, default_value = "herald")]
    pub peer: PeerKind,

    /// Nchan publisher location; `{channel}` stands for the channel (nchan peer only).
    #[arg(long, default_value = "http://127.0.0.1:8081/pub/{channel}")]
    pub nchan_pub: String,

    /// How publications reach Redis (Herald peer): `publish` (PUBLISH) or `fcall`
    /// (FCALL herald_publish, for channels Herald keeps history on: start it with
    /// `--history 'PREFIX*=SIZE/TTL'`). Default: publish; resume: fcall.
    #[arg(long, value_enum)]
    pub publish: Option<PublishVia>,

    /// PID of the server: CPU seconds from /proc/PID/stat, RSS from /proc/PID/status.
    #[arg(long)]
    pub server_pid: Option<u32>,

    /// Client channel names are PREFIX + a number.
    #[arg(long, default_value = "lt.")]
    pub channel_prefix: String,

    /// The server's own channel prefix (Herald's HERALD_CHANNEL_PREFIX), put before every
    /// name published to or queried on Redis.
    #[arg(long, default_value = "")]
    pub redis_channel_prefix: String,

    /// Token sent as `token=` on the upgrade, for a server with authentication on.
    #[arg(long)]
    pub token: Option<String>,

    /// Generator processes; 0 = enough to keep each under the open-files limit.
    #[arg(long, default_value_t = 0)]
    pub workers: usize,

    /// Local addresses to connect from, round-robin: a range `127.0.0.2-127.0.0.9` or a
    /// comma list. Each address gives one ephemeral port range (~28,000 connections).
    /// Default: the kernel picks (one address).
    #[arg(long)]
    pub source_addrs: Option<String>,

    /// Connection attempts in flight at once, over all workers.
    #[arg(long, default_value_t = 500)]
    pub connect_concurrency: usize,

    /// Deadline for one client to connect and be confirmed (Herald: `welcome`).
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub connect_timeout: Duration,

    /// After publishing stops, how long deliveries may stall before the missing ones
    /// count as lost.
    #[arg(long, default_value = "2s", value_parser = duration)]
    pub settle: Duration,

    /// Deadline for Redis to show every channel subscribed before publishing starts.
    #[arg(long, default_value = "30s", value_parser = duration)]
    pub subscribe_timeout: Duration,

    /// Print one JSON result line on stdout instead of the text report.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct Fanout {
    #[command(flatten)]
    pub common: Common,
    /// Subscribed clients, all on one channel.
    #[arg(long, default_value_t = 5000)]
    pub clients: u32,
    /// Publication rates, per second, one phase each (comma list).
    #[arg(long, value_delimiter = ',', default_value = "20,200")]
    pub rates: Vec<f64>,
    /// Publishing time per rate.
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub duration: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct Saturate {
    #[command(flatten)]
    pub common: Common,
    /// Subscribed clients, all on one channel.
    #[arg(long, default_value_t = 2000)]
    pub clients: u32,
    /// Publication rate of the first step, per second.
    #[arg(long, default_value_t = 50.0)]
    pub start_rate: f64,
    /// Each step publishes at the previous rate times this.
    #[arg(long, default_value_t = 1.5)]
    pub step_factor: f64,
    /// Publishing time per step.
    #[arg(long, default_value = "5s", value_parser = duration)]
    pub step_duration: Duration,
    /// Most steps; the run stops there even if no step failed.
    #[arg(long, default_value_t = 20)]
    pub max_steps: u32,
    /// A step whose p99 latency exceeds this fails.
    #[arg(long, default_value = "100ms", value_parser = duration)]
    pub p99_limit: Duration,
    /// After the first failed step, this many more steps bisect (geometrically) between
    /// it and the last passed one; each halves the uncertainty of the answer.
    #[arg(long, default_value_t = 0)]
    pub refine: u32,
    /// A step that failed on p99 alone (nothing lost) is measured again this many times
    /// before the failure counts; the report lists every repeat.
    #[arg(long, default_value_t = 0)]
    pub retries: u32,
}

#[derive(Debug, Clone, Args)]
pub struct Channels {
    #[command(flatten)]
    pub common: Common,
    /// Clients; each has its own channel and also subscribes to the shared one.
    #[arg(long, default_value_t = 5000)]
    pub clients: u32,
    /// Publications per second spread round-robin over the own channels.
    #[arg(long, default_value_t = 2000.0)]
    pub own_rate: f64,
    /// Publications per second on the shared channel.
    #[arg(long, default_value_t = 5.0)]
    pub shared_rate: f64,
    /// Publishing time.
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub duration: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct Idle {
    #[command(flatten)]
    pub common: Common,
    /// Idle subscribed connections.
    #[arg(long, default_value_t = 20000)]
    pub clients: u32,
    /// Channels the clients are spread over (client i on channel i mod C).
    #[arg(long, default_value_t = 1)]
    pub channels: u32,
    /// How long the connections are held before RSS is read.
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub hold: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct Connect {
    #[command(flatten)]
    pub common: Common,
    /// Clients to connect.
    #[arg(long, default_value_t = 10000)]
    pub clients: u32,
    /// Channels the clients are spread over (client i on channel i mod C).
    #[arg(long, default_value_t = 1)]
    pub channels: u32,
}

#[derive(Debug, Clone, Args)]
pub struct Outage {
    #[command(flatten)]
    pub common: Common,
    /// Subscribed clients.
    #[arg(long, default_value_t = 5000)]
    pub clients: u32,
    /// Channels the clients are spread over (client i on channel i mod C).
    #[arg(long, default_value_t = 2000)]
    pub channels: u32,
    /// Shell command (run with `sh -c`) that starts Redis again on the same address after
    /// the tool has shut it down with SHUTDOWN NOSAVE; it should daemonize, e.g.
    /// `redis-server --port 6379 --save '' --appendonly no --daemonize yes`.
    #[arg(long)]
    pub redis_start_cmd: String,
    /// How long Redis stays down before the start command runs.
    #[arg(long, default_value = "1s", value_parser = duration)]
    pub down_for: Duration,
    /// Deadline for resubscription and delivery to every client after Redis is back.
    #[arg(long, default_value = "30s", value_parser = duration)]
    pub recover_timeout: Duration,
}

/// Herald only (contract 1.1): start it with `--history 'PREFIX*=SIZE/TTL'` covering the
/// channel, e.g. `--history 'lt.*=1000/5m'` (SIZE at least rate × the longest time a
/// client is away; 1000 covers 200/s with seconds to spare).
#[derive(Debug, Clone, Args)]
pub struct Resume {
    #[command(flatten)]
    pub common: Common,
    /// Clients, all on channel PREFIX0.
    #[arg(long, default_value_t = 5000)]
    pub clients: u32,
    /// Publications per second, through FCALL herald_publish, from the warm-up until the
    /// tail ends.
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// Publishing before the wave: every client has received an offset, and Redis's
    /// commands per publication in steady state are measured.
    #[arg(long, default_value = "5s", value_parser = duration)]
    pub warmup: Duration,
    /// The clients drop their connections over this long, uniformly; each reconnects at
    /// once and subscribes with `since`.
    #[arg(long, default_value = "1s", value_parser = duration)]
    pub spread: Duration,
    /// Deadline, from the wave's start, for every client to be back on the live stream.
    #[arg(long, default_value = "30s", value_parser = duration)]
    pub catch_up_timeout: Duration,
    /// Publishing goes on this long after the last client caught up, so the live stream
    /// after the seam is checked too.
    #[arg(long, default_value = "1s", value_parser = duration)]
    pub tail: Duration,
    /// Clients come back to this /ws URL instead of --target: another Herald instance on
    /// the same Redis (same --history rules), so the resume reads Redis's history rather
    /// than what the first instance holds in memory.
    #[arg(long)]
    pub rejoin_target: Option<String>,
}

/// Herald only (issue 11): the server API's publish path against Redis directly.
#[derive(Debug, Clone, Args)]
pub struct ApiPublish {
    #[command(flatten)]
    pub common: Common,
    /// Herald's API key (its `--api-key` / HERALD_API_KEY), sent as `Authorization:
    /// Bearer KEY`.
    #[arg(long)]
    pub api_key: String,
    /// The publish endpoint. Default: /api/publish on --target's host and port.
    #[arg(long)]
    pub api_url: Option<String>,
    /// Publishing connections, each with one request in flight, on its own channel
    /// (PREFIX + i), for the API and for Redis alike. 16: a backend's connection pool
    /// (16 workers with one keep-alive connection each), enough requests in flight to
    /// show queueing behind Herald's one Redis command connection while the generator,
    /// which shares a core with Redis in run.sh, still keeps up.
    #[arg(long, default_value_t = 16)]
    pub connections: u32,
    /// Publishing time per leg (API, Redis; plain, then history: four legs). 10 s: the
    /// other scenarios' window; at thousands of publications/s a p99.9 then rests on
    /// hundreds of requests.
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub duration: Duration,
    /// WebSocket subscribers, each on every publishing channel, so Herald delivers what
    /// is published (each publication reaches all of them) and losses are counted. A few
    /// are enough for that and keep delivery small beside the publish path.
    #[arg(long, default_value_t = 4)]
    pub subscribers: u32,
    /// Size of each publication's JSON payload (the stamp, padded): a small real
    /// message, e.g. a chat line or a price tick.
    #[arg(long, default_value_t = 100)]
    pub payload_bytes: usize,
    /// Channel prefix of the history legs; Herald needs a history rule on it
    /// (`--history 'hist.*=1000/5m'`). The plain legs use --channel-prefix, which must
    /// have none.
    #[arg(long, default_value = "hist.")]
    pub history_prefix: String,
}

#[derive(Debug, Clone, Args)]
pub struct Summary {
    /// Files holding one `--json` report each.
    #[arg(required = true)]
    pub reports: Vec<std::path::PathBuf>,
    /// Exit 1 when a report is not clean or any of its phases lost, lagged, duplicated or
    /// misrouted a delivery (saturate's failing last step included).
    #[arg(long)]
    pub strict: bool,
}

#[derive(Debug, Clone, Args)]
pub struct Table {
    /// Directory of `PEER-SCENARIO-RUN.json` reports (`.failed` for runs that measured
    /// nothing) and `meta.txt` (`Key: value` lines describing the run).
    #[arg(long)]
    pub raw: std::path::PathBuf,
    /// Markdown page to write.
    #[arg(long)]
    pub markdown: std::path::PathBuf,
    /// SVG plot to write (latency percentiles per scenario, KiB per idle connection).
    #[arg(long)]
    pub svg: std::path::PathBuf,
}

fn duration(raw: &str) -> Result<Duration, String> {
    humantime::parse_duration(raw).map_err(|e| format!("{e} (write e.g. 500ms, 10s, 2m)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn flags_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_match_the_scenarios() {
        let cli = Cli::try_parse_from(["t", "fanout"]).expect("parses");
        let Scenario::Fanout(fanout) = cli.scenario else {
            panic!("not fanout")
        };
        assert_eq!(fanout.clients, 5000);
        assert_eq!(fanout.rates, vec![20.0, 200.0]);
        assert_eq!(fanout.duration, Duration::from_secs(10));
        assert_eq!(fanout.common.target, "ws://127.0.0.1:8080/ws");
        assert_eq!(fanout.common.publish, None);
        let cli = Cli::try_parse_from(["t", "resume"]).expect("parses");
        let Scenario::Resume(resume) = cli.scenario else {
            panic!("not resume")
        };
        assert_eq!((resume.clients, resume.rate), (5000, 200.0));
        assert_eq!(resume.spread, Duration::from_secs(1));
        let cli = Cli::try_parse_from(["t", "fanout", "--publish", "fcall"]).expect("parses");
        let Scenario::Fanout(fanout) = cli.scenario else {
            panic!("not fanout")
        };
        assert_eq!(fanout.common.publish, Some(PublishVia::Fcall));
        let cli = Cli::try_parse_from(["t", "api_publish", "--api-key", "k"]).expect("parses");
        let Scenario::ApiPublish(api) = cli.scenario else {
            panic!("not api_publish")
        };
        assert_eq!((api.connections, api.subscribers), (16, 4));
        assert_eq!(api.duration, Duration::from_secs(10));
        assert_eq!(
            (api.payload_bytes, api.history_prefix.as_str()),
            (100, "hist.")
        );
        assert!(
            Cli::try_parse_from(["t", "api_publish"]).is_err(),
            "the key is required"
        );
    }
}
