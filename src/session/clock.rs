//! A session's deadlines, served by one timer: the heartbeat, the token's expiry, and the
//! drain's close.
//!
//! One timer instead of a heartbeat `Interval` beside a sleep per deadline: each was
//! polled on every wake of the session (the interval alone was 4.4% of the server's
//! instructions in a callgrind profile of `channels`), and each held its own timer entry
//! in every session's future.

use std::time::Duration;

use tokio::time::Instant;

/// What came due, in the order the session acts on them.
#[derive(Debug, PartialEq, Eq)]
pub enum Due {
    /// The drain's spread-out close.
    Close,
    /// The token expired.
    Expired,
    /// Time to ping (and to judge the client's silence).
    Heartbeat,
}

pub struct Deadlines {
    heartbeat: Duration,
    next_beat: Instant,
    pub close_at: Option<Instant>,
    pub expires_at: Option<Instant>,
}

impl Deadlines {
    pub fn new(heartbeat: Duration, expires_at: Option<Instant>) -> Self {
        Deadlines {
            heartbeat,
            next_beat: Instant::now() + heartbeat,
            close_at: None,
            expires_at,
        }
    }

    /// The earliest deadline: where the timer is set.
    pub fn next(&self) -> Instant {
        [self.close_at, self.expires_at]
            .into_iter()
            .flatten()
            .fold(self.next_beat, Instant::min)
    }

    /// The first deadline passed at `now`, if any.
    pub fn due(&self, now: Instant) -> Option<Due> {
        let passed = |at: Option<Instant>| at.is_some_and(|at| at <= now);
        if passed(self.close_at) {
            Some(Due::Close)
        } else if passed(self.expires_at) {
            Some(Due::Expired)
        } else if passed(Some(self.next_beat)) {
            Some(Due::Heartbeat)
        } else {
            None
        }
    }

    /// The heartbeat was served at `now`: the next is one period later (a late one delays
    /// the rest, as `MissedTickBehavior::Delay` did).
    pub fn beat(&mut self, now: Instant) {
        self.next_beat = now + self.heartbeat;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_earliest_deadline_is_served_first_in_order() {
        let start = Instant::now();
        let mut clock = Deadlines::new(
            Duration::from_secs(10),
            Some(start + Duration::from_secs(30)),
        );
        assert_eq!(clock.next(), clock.next_beat);
        assert_eq!(clock.due(start), None);
        let at = clock.next_beat;
        assert_eq!(clock.due(at), Some(Due::Heartbeat));
        clock.beat(at);
        assert_eq!(clock.next(), at + Duration::from_secs(10));

        clock.close_at = Some(start + Duration::from_secs(1));
        assert_eq!(clock.next(), start + Duration::from_secs(1));
        // Everything passed: the close comes first, then the expiry.
        let late = start + Duration::from_secs(60);
        assert_eq!(clock.due(late), Some(Due::Close));
        clock.close_at = None;
        assert_eq!(clock.due(late), Some(Due::Expired));
    }
}
