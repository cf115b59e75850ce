//! Why a subscriber connection ended, and the outage it belongs to: what decides how long
//! to wait and what the one log line per outage says.

use std::time::{Duration, Instant};

use super::reconcile::BatchError;

/// How long to wait between attempts while Redis refuses Herald's credentials: a wrong
/// password does not fix itself within milliseconds, and each attempt is one more failed
/// AUTH in Redis's log and ACL LOG.
pub const REFUSED_RETRY: Duration = Duration::from_secs(30);

/// Why a connection ended.
#[derive(Debug)]
pub enum Lost {
    Connect(String),
    /// Redis refused the credentials (WRONGPASS, NOAUTH): not transient.
    Refused(String),
    StreamEnded,
    Batch(BatchError),
    Probe(BatchError),
    /// No sentinel knows the master's name (a wrong name in the URL, most likely).
    UnknownMaster(String),
    /// The sentinels announced a new master (`+switch-master ...`).
    Switched(String),
}

impl Lost {
    /// A failed connect, told apart from refused credentials.
    pub fn connect(error: BatchError) -> Lost {
        match error {
            BatchError::Redis(e) if refused(&e) => Lost::Refused(e.to_string()),
            BatchError::Redis(e) => Lost::Connect(e.to_string()),
            BatchError::Timeout(t) => Lost::Connect(format!("no answer within {t:?}")),
        }
    }

    /// A refused batch; NOAUTH there means the credentials, not the batch.
    pub fn batch(error: BatchError) -> Lost {
        match error {
            BatchError::Redis(e) if refused(&e) => Lost::Refused(e.to_string()),
            e => Lost::Batch(e),
        }
    }

    pub fn is_refused(&self) -> bool {
        matches!(self, Lost::Refused(_))
    }
}

/// Whether Redis refused who Herald is, rather than what it asked.
fn refused(error: &redis::RedisError) -> bool {
    error.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(error.code(), Some("NOAUTH" | "WRONGPASS"))
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Lost::Connect(e) => write!(f, "connect failed: {e}"),
            Lost::Refused(e) => write!(f, "credentials refused: {e}"),
            Lost::StreamEnded => f.write_str("connection closed"),
            Lost::Batch(e) => write!(f, "{e}"),
            Lost::Probe(e) => write!(f, "liveness probe failed: {e}"),
            Lost::UnknownMaster(name) => write!(f, "no sentinel knows a master named {name:?}"),
            Lost::Switched(announced) => {
                write!(f, "the sentinels switched the master: {announced}")
            }
        }
    }
}

/// The current loss of the connection, for one log line per disconnect and per reconnect.
#[derive(Default)]
pub struct Outage {
    /// When the connection was lost; `None` while up (or before the first connect).
    since: Option<Instant>,
    attempts: u32,
    connected_once: bool,
}

impl Outage {
    /// Counts a failed connection; true when it starts a new outage.
    pub fn begin(&mut self) -> bool {
        self.attempts += 1;
        if self.since.is_some() {
            return false;
        }
        self.since = Some(Instant::now());
        true
    }

    /// The connection is back; returns how long it was down and after how many attempts,
    /// or `None` for the first connection of the process.
    pub fn end(&mut self) -> Option<(Duration, u32)> {
        let since = self.since.take();
        let attempts = std::mem::take(&mut self.attempts);
        if !std::mem::replace(&mut self.connected_once, true) {
            return None;
        }
        Some((since.map(|s| s.elapsed()).unwrap_or_default(), attempts))
    }
}
