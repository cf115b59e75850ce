//! Every setting Herald has: its flag, its `HERALD_*` variable, its default and unit.
//!
//! Parsed once in `main` and passed down; no other module reads the environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::history::Rules;

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Herald: a WebSocket fan-out gateway for Redis pub/sub.
///
/// Every flag can also be set through the environment variable named beside it.
/// Durations take a unit: `500ms`, `25s`, `2m`.
#[derive(Debug, Clone, Parser)]
#[command(name = "herald", version, about, long_about = None)]
pub struct Config {
    /// Address of the one HTTP listener serving /ws, /healthz, /readyz and /metrics.
    #[arg(long, env = "HERALD_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Redis to subscribe to: redis://[:password@]host[:port][/db] or rediss:// for TLS; or
    /// through Sentinel, redis+sentinel://[user:pass@]host:port[,host:port...]/<master-name>
    /// (rediss+sentinel:// for TLS to sentinels and nodes): the master is asked of the
    /// sentinels at every connect and followed across failovers. The user and password are
    /// for the master and replicas only; sentinels are asked without credentials. Or a
    /// Redis Cluster, redis+cluster://[user:pass@]host:port[,host:port...] (seed nodes;
    /// rediss+cluster:// for TLS): channels are subscribed with SSUBSCRIBE on their master.
    /// (Its live value, which may hold a password, is never echoed by --help.)
    #[arg(
        long,
        env = "HERALD_REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true
    )]
    pub redis_url: String,

    /// PEM file of the CA that signed the Redis server's certificate (rediss:// only), for
    /// a Redis with a private CA; without it the public web roots are trusted.
    #[arg(long, env = "HERALD_REDIS_CA_FILE")]
    pub redis_ca_file: Option<PathBuf>,

    /// PEM client certificate for mutual TLS with Redis (rediss:// only; with
    /// HERALD_REDIS_CLIENT_KEY).
    #[arg(long, env = "HERALD_REDIS_CLIENT_CERT")]
    pub redis_client_cert: Option<PathBuf>,

    /// PEM private key of HERALD_REDIS_CLIENT_CERT.
    #[arg(long, env = "HERALD_REDIS_CLIENT_KEY")]
    pub redis_client_key: Option<PathBuf>,

    /// Prefix put before a client channel name to form the Redis channel name.
    #[arg(long, env = "HERALD_CHANNEL_PREFIX", default_value = "")]
    pub channel_prefix: String,

    /// Interval of WebSocket pings to clients; a client silent for two intervals is closed.
    #[arg(long, env = "HERALD_HEARTBEAT", default_value = "25s", value_parser = duration)]
    pub heartbeat: Duration,

    /// Largest frame or message a client may send, in bytes; larger closes with 1009.
    #[arg(long, env = "HERALD_MAX_FRAME_SIZE", default_value_t = 65_536,
          value_parser = clap::value_parser!(u32).range(256..))]
    pub max_frame_size: u32,

    /// Most channels one connection may hold at once.
    #[arg(long, env = "HERALD_MAX_SUBSCRIPTIONS", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_subscriptions: u32,

    /// Most open WebSocket connections on this instance; more are refused with 503.
    #[arg(long, env = "HERALD_MAX_CONNECTIONS", default_value_t = 100_000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// How far a client may fall behind on one channel, in publications: a channel keeps
    /// its last this many frames, and a client further behind loses the oldest (and is
    /// told with `lagged`).
    #[arg(long, env = "HERALD_QUEUE_CAPACITY", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub queue_capacity: u32,

    /// History channels: comma-separated PATTERN=SIZE/TTL rules (`*` matches any run of
    /// characters; the first match wins), e.g. `chat:*=300/5m`. Their last SIZE
    /// publications, each for at most TTL, are kept in Redis, so clients can resume from an
    /// offset and Herald fills what it missed while its Redis connection was down. Every
    /// instance sharing a Redis must use the same rules.
    #[arg(long, env = "HERALD_HISTORY", default_value = "", value_parser = history_rules)]
    pub history: Rules,

    /// Longest a subscribe on a history channel waits for Redis before its `ok` (a first
    /// subscriber's anchor, a resume's history read), and the deadline of each history
    /// read. A resume reads up to SIZE publications at once.
    #[arg(long, env = "HERALD_HISTORY_TIMEOUT", default_value = "5s", value_parser = duration)]
    pub history_timeout: Duration,

    /// Bytes of frames one channel keeps for subscribers that are behind; beyond it the
    /// oldest go (they get `lagged`), whatever HERALD_QUEUE_CAPACITY allows.
    #[arg(long, env = "HERALD_CHANNEL_MAX_BYTES", default_value_t = 64 << 20,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub channel_max_bytes: u64,

    /// Bytes of frames all channels together keep for subscribers that are behind; beyond
    /// it the appending channel's oldest go.
    #[arg(long, env = "HERALD_MAX_QUEUED_BYTES", default_value_t = 1 << 30,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_queued_bytes: u64,

    /// No longer used: each publication is fanned out as the Redis connection is read, so
    /// none waits in Herald and a backlog waits in Redis, under its
    /// client-output-buffer-limit. Still accepted, so existing configurations start.
    #[arg(long, env = "HERALD_REDIS_INTAKE_MAX_BYTES", default_value_t = 8 << 20,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub redis_intake_max_bytes: u64,

    /// How long a write to a client may stay blocked before the client is closed with
    /// 1008 `slow consumer`.
    #[arg(long, env = "HERALD_WRITE_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub write_timeout: Duration,

    /// On SIGTERM/SIGINT, the period over which client closes are spread.
    #[arg(long, env = "HERALD_DRAIN_PERIOD", default_value = "10s", value_parser = duration)]
    pub drain_period: Duration,

    /// Interval of the liveness probe (a PING on the subscriber connection); an answer
    /// missing for one interval counts as a lost connection.
    #[arg(long, env = "HERALD_REDIS_PROBE_INTERVAL", default_value = "5s", value_parser = duration)]
    pub redis_probe_interval: Duration,

    /// Deadline for connecting to Redis and for each SUBSCRIBE/UNSUBSCRIBE batch.
    #[arg(long, env = "HERALD_REDIS_TIMEOUT", default_value = "5s", value_parser = duration)]
    pub redis_timeout: Duration,

    /// First reconnect delay ceiling; it doubles per failed attempt up to the maximum.
    /// Each wait is drawn uniformly below the ceiling (full jitter).
    #[arg(long, env = "HERALD_REDIS_BACKOFF_BASE", default_value = "50ms", value_parser = duration)]
    pub redis_backoff_base: Duration,

    /// Cap of the reconnect delay ceiling. It bounds how long after Redis is back the
    /// subscriber may still wait (full jitter draws below it): 500ms keeps recovery within
    /// a second while a fleet's reconnects stay spread.
    #[arg(long, env = "HERALD_REDIS_BACKOFF_MAX", default_value = "500ms", value_parser = duration)]
    pub redis_backoff_max: Duration,

    /// HS256 shared secret for client tokens; setting a key turns authentication on.
    /// (Its live value is never echoed by --help.)
    #[arg(long, env = "HERALD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// PEM file with an RSA (RS256) or P-256 (ES256) public key for client tokens.
    #[arg(long, env = "HERALD_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,

    /// JWKS file (RSA and P-256 keys); tokens choose a key with their `kid`.
    #[arg(long, env = "HERALD_JWT_JWKS")]
    pub jwt_jwks: Option<PathBuf>,

    /// When set, tokens must carry this `aud`.
    #[arg(long, env = "HERALD_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// When set, tokens must carry this `iss`.
    #[arg(long, env = "HERALD_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Clock skew allowed when checking `exp` and `nbf`.
    #[arg(long, env = "HERALD_JWT_LEEWAY", default_value = "0s", value_parser = duration)]
    pub jwt_leeway: Duration,

    /// Comma-separated channel patterns (`*` wildcard) any connected client may subscribe to
    /// when authentication is on.
    #[arg(long, env = "HERALD_PUBLIC_CHANNELS", value_delimiter = ',')]
    pub public_channels: Vec<String>,

    /// Comma-separated origins (e.g. https://app.example.com) browsers may connect from;
    /// empty means no check. Requests without an Origin header are not browsers and pass.
    #[arg(long, env = "HERALD_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Time a client has to send its complete HTTP request (the handshake) after connecting.
    #[arg(long, env = "HERALD_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub handshake_timeout: Duration,

    /// Most open WebSocket connections from one client IP; 0 means no limit.
    #[arg(long, env = "HERALD_MAX_CONNECTIONS_PER_IP", default_value_t = 1000)]
    pub max_connections_per_ip: u32,

    /// Comma-separated addresses or CIDRs of proxies whose X-Forwarded-For is believed
    /// when finding a client's IP; from anyone else the header is ignored.
    #[arg(long, env = "HERALD_TRUSTED_PROXIES", value_delimiter = ',', value_parser = net)]
    pub trusted_proxies: Vec<ipnet::IpNet>,

    /// Enables the server API (`/api/...`): requests must carry `Authorization: Bearer
    /// <key>`. Unset: every `/api/` path answers 404.
    #[arg(long, env = "HERALD_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Largest server API request body, in bytes; larger gets 413.
    #[arg(long, env = "HERALD_API_MAX_BODY", default_value_t = 1 << 20,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub api_max_body: u64,

    /// How often this instance writes its channel counts to Redis for the API's
    /// `scope=cluster`; an instance silent for 3 intervals stops counting.
    #[arg(long, env = "HERALD_PRESENCE_INTERVAL", default_value = "2s", value_parser = duration)]
    pub presence_interval: Duration,

    /// Expect a PROXY protocol header (v1 or v2) on connections from HERALD_TRUSTED_PROXIES
    /// and take the client's IP from it; a trusted peer that sends none is dropped.
    #[arg(long, env = "HERALD_PROXY_PROTOCOL")]
    pub proxy_protocol: bool,

    /// Requests (frames) one connection may send per second, on average.
    #[arg(long, env = "HERALD_RATE_LIMIT", default_value_t = 50,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_limit: u32,

    /// Requests one connection may send at once above the average rate.
    #[arg(long, env = "HERALD_RATE_BURST", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_burst: u32,

    /// Requests refused as `rate_limited` after which the connection is closed with 1008.
    #[arg(long, env = "HERALD_RATE_LIMIT_STRIKES", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_limit_strikes: u32,

    /// Most channels one subscribe or unsubscribe request (or the `channels` query) may name.
    #[arg(long, env = "HERALD_MAX_CHANNELS_PER_REQUEST", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_channels_per_request: u32,

    /// Runtime worker threads; 0 means one per CPU this process may use.
    #[arg(long, env = "HERALD_WORKER_THREADS", default_value_t = 0)]
    pub worker_threads: u16,

    /// Log line format.
    #[arg(long, env = "HERALD_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Log filter in tracing's EnvFilter syntax.
    #[arg(long, env = "HERALD_LOG", default_value = "info")]
    pub log: String,
}

/// A setting that parsed but makes no sense together with the others.
#[derive(Debug, PartialEq, Eq)]
pub struct Invalid(pub String);

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Config {
    /// Checks what clap's per-flag parsers cannot: values that must agree.
    pub fn validate(&self) -> Result<(), Invalid> {
        let positive = [
            ("HERALD_HEARTBEAT", self.heartbeat),
            ("HERALD_WRITE_TIMEOUT", self.write_timeout),
            ("HERALD_REDIS_PROBE_INTERVAL", self.redis_probe_interval),
            ("HERALD_REDIS_TIMEOUT", self.redis_timeout),
            ("HERALD_REDIS_BACKOFF_BASE", self.redis_backoff_base),
            ("HERALD_HISTORY_TIMEOUT", self.history_timeout),
            ("HERALD_PRESENCE_INTERVAL", self.presence_interval),
        ];
        for (name, value) in positive {
            if value.is_zero() {
                return Err(Invalid(format!("{name} must be greater than zero")));
            }
        }
        if self.redis_backoff_max < self.redis_backoff_base {
            return Err(Invalid(
                "HERALD_REDIS_BACKOFF_MAX must be at least HERALD_REDIS_BACKOFF_BASE".into(),
            ));
        }
        if !crate::channel::is_valid_prefix(&self.channel_prefix) {
            return Err(Invalid(
                "HERALD_CHANNEL_PREFIX may hold only A-Z a-z 0-9 _ - : . @ / =".into(),
            ));
        }
        let keys = [
            self.jwt_secret.is_some(),
            self.jwt_public_key.is_some(),
            self.jwt_jwks.is_some(),
        ];
        if keys.iter().filter(|set| **set).count() > 1 {
            return Err(Invalid(
                "set at most one of HERALD_JWT_SECRET, HERALD_JWT_PUBLIC_KEY, HERALD_JWT_JWKS"
                    .into(),
            ));
        }
        if self.jwt_secret.as_deref().is_some_and(|s| s.len() < 32) {
            return Err(Invalid(
                "HERALD_JWT_SECRET must be at least 32 bytes (HS256 keys shorter than the hash are weak)".into(),
            ));
        }
        for pattern in &self.public_channels {
            if pattern.is_empty() || !crate::channel::is_valid_prefix(&pattern.replace('*', "")) {
                return Err(Invalid(format!(
                    "HERALD_PUBLIC_CHANNELS: {pattern:?} may hold only channel characters and *"
                )));
            }
        }
        if self
            .api_key
            .as_deref()
            .is_some_and(|key| key.trim().is_empty())
        {
            return Err(Invalid("HERALD_API_KEY must not be empty".into()));
        }
        if self.redis_client_cert.is_some() != self.redis_client_key.is_some() {
            return Err(Invalid(
                "set both HERALD_REDIS_CLIENT_CERT and HERALD_REDIS_CLIENT_KEY, or neither".into(),
            ));
        }
        let tls_files = self.redis_ca_file.is_some() || self.redis_client_cert.is_some();
        let tls = ["rediss://", "rediss+sentinel://"];
        if tls_files && !tls.iter().any(|s| self.redis_url.starts_with(s)) {
            return Err(Invalid(
                "HERALD_REDIS_CA_FILE and HERALD_REDIS_CLIENT_CERT need a rediss:// (or \
                 rediss+sentinel://) HERALD_REDIS_URL"
                    .into(),
            ));
        }
        crate::redis::target::Target::parse(&self.redis_url)
            .map(drop)
            .map_err(Invalid)
    }

    /// A copy fit for logs: the Redis password and the JWT secret masked.
    pub fn masked(&self) -> Config {
        let mut shown = self.clone();
        shown.redis_url = self.redis_url_masked();
        if shown.api_key.is_some() {
            shown.api_key = Some("***".into());
        }
        if shown.jwt_secret.is_some() {
            shown.jwt_secret = Some("***".into());
        }
        shown
    }

    /// The Redis URL with any password replaced, fit for logs.
    pub fn redis_url_masked(&self) -> String {
        crate::redis::target::Target::masked(&self.redis_url)
    }
}

/// Says what is wrong with the command line or environment (clap's refusal), naming what
/// the user actually set: the flag when it is among `args`, otherwise its `HERALD_*`
/// variable (clap names the flag either way).
pub fn describe_refusal(error: &clap::Error, args: &[String]) -> String {
    use clap::error::{ContextKind, ContextValue};
    use clap::CommandFactory;
    let text = error.to_string();
    let first = text.lines().next().unwrap_or_default();
    let first = first.strip_prefix("error: ").unwrap_or(first).to_owned();
    let Some(ContextValue::String(shown)) = error.get(ContextKind::InvalidArg) else {
        return first;
    };
    let long = shown.split_whitespace().next().unwrap_or_default();
    let on_command_line = args
        .iter()
        .any(|a| a == long || a.starts_with(&format!("{long}=")));
    let variable = Config::command()
        .get_arguments()
        .find(|arg| arg.get_long().is_some_and(|l| format!("--{l}") == long))
        .and_then(|arg| arg.get_env().map(|env| env.to_string_lossy().into_owned()));
    match variable {
        Some(variable) if !on_command_line => first.replace(&format!("'{shown}'"), &variable),
        _ => first,
    }
}

/// A CIDR, or a bare address meaning just that host.
fn net(raw: &str) -> Result<ipnet::IpNet, String> {
    let raw = raw.trim();
    raw.parse::<ipnet::IpNet>()
        .or_else(|_| raw.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{raw:?} is neither an IP address nor a CIDR"))
}

fn history_rules(raw: &str) -> Result<Rules, String> {
    Rules::parse(raw)
}

fn duration(raw: &str) -> Result<Duration, String> {
    humantime::parse_duration(raw).map_err(|e| format!("{e} (write e.g. 500ms, 25s, 2m)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        let mut all = vec!["herald"];
        all.extend_from_slice(args);
        Config::try_parse_from(all).expect("parses")
    }

    #[test]
    fn defaults_are_valid() {
        let config = parse(&[]);
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(config.max_frame_size, 65_536);
        assert_eq!(config.heartbeat, Duration::from_secs(25));
    }

    #[test]
    fn history_rules_parse_from_the_flag() {
        let config = parse(&["--history", "chat:*=300/5m"]);
        assert_eq!(config.history.find("chat:1").map(|r| r.size), Some(300));
        assert!(parse(&[]).history.is_empty());
        assert!(Config::try_parse_from(["herald", "--history", "chat:*=300"]).is_err());
    }

    #[test]
    fn refusals_name_what_the_user_set() {
        let from_flag = Config::try_parse_from(["herald", "--heartbeat", "abc"]).unwrap_err();
        let args = ["herald".to_owned(), "--heartbeat".into(), "abc".into()];
        let text = describe_refusal(&from_flag, &args);
        assert!(
            text.contains("--heartbeat") && text.contains("abc"),
            "{text}"
        );
        // The same value from the environment: clap still says --heartbeat.
        let text = describe_refusal(&from_flag, &["herald".to_owned()]);
        assert!(
            text.contains("HERALD_HEARTBEAT") && !text.contains("--heartbeat"),
            "{text}"
        );
    }

    #[test]
    fn durations_take_units() {
        let config = parse(&["--heartbeat", "750ms"]);
        assert_eq!(config.heartbeat, Duration::from_millis(750));
        assert!(Config::try_parse_from(["herald", "--heartbeat", "5"]).is_err());
    }

    #[test]
    fn rejects_what_cannot_work() {
        assert!(parse(&["--redis-url", "http://x"]).validate().is_err());
        let sentinel = "redis+sentinel://:pw@s1:26379,s2:26379/mymaster";
        assert_eq!(parse(&["--redis-url", sentinel]).validate(), Ok(()));
        let no_master = parse(&["--redis-url", "redis+sentinel://s1:26379"]).validate();
        assert!(no_master.is_err_and(|e| e.0.contains("names no master")));
        let cluster = parse(&["--redis-url", "redis+cluster://c1:7000,c2:7001"]).validate();
        assert_eq!(cluster, Ok(()));
        let no_port = parse(&["--redis-url", "redis+cluster://c1:x"]).validate();
        assert!(no_port.is_err_and(|e| e.0.contains("no valid port")));
        assert!(parse(&["--channel-prefix", "a b"]).validate().is_err());
        assert!(parse(&["--write-timeout", "0s"]).validate().is_err());
        let config = parse(&["--redis-backoff-base", "2s", "--redis-backoff-max", "1s"]);
        assert!(config.validate().is_err());
        let tls = ["--redis-url", "rediss://r:6380"];
        let half = parse(&[tls[0], tls[1], "--redis-client-cert", "/c.pem"]);
        assert!(half.validate().is_err(), "a certificate without its key");
        assert!(
            parse(&["--redis-ca-file", "/ca.pem"]).validate().is_err(),
            "CA without TLS"
        );
        let full = [tls[0], tls[1], "--redis-ca-file", "/ca.pem"];
        assert_eq!(parse(&full).validate(), Ok(()));
    }

    #[test]
    fn masks_secrets_for_logs() {
        let secret = "a-very-long-jwt-secret-of-32-bytes!!";
        let config = parse(&[
            "--redis-url",
            "rediss://:hunter2@example:6380/0",
            "--jwt-secret",
            secret,
            "--api-key",
            "api-key-not-to-be-shown",
        ]);
        let shown = format!("{:?}", config.masked());
        assert!(!shown.contains("api-key-not-to-be-shown"), "{shown}");
        assert!(
            !shown.contains("hunter2") && !shown.contains(secret),
            "{shown}"
        );
        assert!(shown.contains("***"), "{shown}");
    }

    #[test]
    fn auth_settings_must_be_usable() {
        let both = parse(&["--jwt-secret", &"x".repeat(32), "--jwt-jwks", "/k.json"]);
        assert!(both.validate().is_err(), "two key sources");
        assert!(parse(&["--jwt-secret", "short"]).validate().is_err());
        assert!(parse(&["--public-channels", "lobby,room:*"])
            .validate()
            .is_ok());
        assert!(parse(&["--public-channels", "a b"]).validate().is_err());
        let lists = parse(&["--allowed-origins", "https://a.example,https://b.example"]);
        assert_eq!(lists.allowed_origins.len(), 2);
        assert!(
            Config::try_parse_from(["herald", "--trusted-proxies", "10.0.0.0/8,not-an-ip"])
                .is_err()
        );
        let proxies = parse(&["--trusted-proxies", "10.0.0.0/8, 127.0.0.1"]).trusted_proxies;
        assert!(proxies[1].contains(&"127.0.0.1".parse::<std::net::IpAddr>().unwrap()));
    }
}
