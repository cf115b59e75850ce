//! How many connections this process can really hold: one descriptor each, under the
//! open-files limit. Past it `accept` fails with EMFILE and clients wait in the backlog
//! with no answer at all; capped below it, they get a clean 503.

use tracing::warn;

/// Descriptors kept for everything but WebSocket sessions: the listener, Redis, epoll and
/// timers, stdio, metrics scrapes, and sockets accepted only to be refused with 503.
pub const RESERVED: u64 = 64;

/// Raises the soft open-files limit to the hard one and returns the connection limit to
/// use: `requested`, or less when the descriptors cannot cover it.
pub fn connection_budget(requested: u32) -> u32 {
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(e) => {
            warn!(error = %e, "cannot read the open-files limit; not capping connections");
            return requested;
        }
    };
    let budget = cap(requested, limit);
    if budget < requested {
        warn!(
            requested,
            open_files_limit = limit,
            max_connections = budget,
            "HERALD_MAX_CONNECTIONS is above what the open-files limit allows; capped"
        );
    }
    budget
}

fn cap(requested: u32, open_files: u64) -> u32 {
    let available = open_files.saturating_sub(RESERVED).max(1);
    requested.min(u32::try_from(available).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_below_the_descriptor_limit() {
        assert_eq!(cap(100_000, 20_000), 19_936);
        assert_eq!(cap(500, 20_000), 500);
        assert_eq!(cap(100, 10), 1, "a tiny limit still allows one");
    }
}
