//! Waiting on outside state that sends no event (Redis's channel list, a metric, /readyz).

use std::fmt::Debug;
use std::ops::AsyncFnMut;
use std::time::Duration;

use tokio::time::Instant;

/// How often a condition is checked again.
const POLL: Duration = Duration::from_millis(25);

/// Polls `probe` until it returns `Ok`, for at most `timeout`. On timeout it panics with
/// `what` and the last value the probe saw (its `Err`), so a failure shows how far it got.
pub async fn eventually<T, E: Debug>(
    what: &str,
    timeout: Duration,
    mut probe: impl AsyncFnMut() -> Result<T, E>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match probe().await {
            Ok(value) => return value,
            Err(seen) => seen,
        };
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}; last saw: {last:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `Ok(seen)` when `seen == expected`, else `Err(seen)`: the usual probe result.
pub fn expect_eq<T: PartialEq>(seen: T, expected: &T) -> Result<T, T> {
    if &seen == expected {
        Ok(seen)
    } else {
        Err(seen)
    }
}
