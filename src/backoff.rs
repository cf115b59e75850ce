//! Capped exponential backoff with full jitter.
//!
//! Full jitter (a wait drawn uniformly below the ceiling) keeps a fleet of instances that
//! lost the same Redis from reconnecting in lockstep.

use std::time::Duration;

use rand::Rng;

pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max,
            attempt: 0,
        }
    }

    /// The ceiling for the next wait: base * 2^attempt, capped.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32 << self.attempt.min(20);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The next wait, drawn uniformly from [0, ceiling]; raises the ceiling for the one after.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        ceiling.mul_f64(rand::rng().random_range(0.0..=1.0))
    }

    /// Called once a connection is fully back.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_up_to_the_cap_and_resets() {
        let ms = Duration::from_millis;
        let mut backoff = Backoff::new(ms(50), ms(1000));
        let mut ceilings = vec![];
        for _ in 0..7 {
            ceilings.push(backoff.ceiling().as_millis());
            assert!(backoff.next_delay() <= ms(1000));
        }
        assert_eq!(ceilings, [50, 100, 200, 400, 800, 1000, 1000]);
        backoff.reset();
        assert_eq!(backoff.ceiling(), ms(50));
    }

    #[test]
    fn waits_are_jittered() {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
        let waits: std::collections::HashSet<Duration> =
            (0..20).map(|_| backoff.next_delay()).collect();
        assert!(waits.len() > 1, "20 draws all equal: no jitter");
    }
}
