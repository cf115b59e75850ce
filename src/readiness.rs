//! Whether this instance should receive new clients: `/readyz`.

use std::sync::atomic::{AtomicBool, Ordering};

/// Ready while the Redis subscriber connection is up and the instance is not draining.
#[derive(Debug, Default)]
pub struct Readiness {
    redis_up: AtomicBool,
    draining: AtomicBool,
}

impl Readiness {
    pub fn set_redis_up(&self, up: bool) {
        self.redis_up.store(up, Ordering::Release);
    }

    /// Draining is one-way: an instance that began shutting down never becomes ready again.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Whether the subscriber connection is up (draining or not).
    pub fn is_redis_up(&self) -> bool {
        self.redis_up.load(Ordering::Acquire)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn is_ready(&self) -> bool {
        self.redis_up.load(Ordering::Acquire) && !self.is_draining()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_with_redis_and_not_draining() {
        let readiness = Readiness::default();
        assert!(!readiness.is_ready(), "starts unready until Redis is up");
        readiness.set_redis_up(true);
        assert!(readiness.is_ready());
        readiness.set_redis_up(false);
        assert!(!readiness.is_ready());
        readiness.set_redis_up(true);
        readiness.start_draining();
        assert!(!readiness.is_ready());
    }
}
