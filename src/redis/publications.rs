//! The publication path, for one Redis and a Cluster alike: what the connection (or the
//! masters' links) read into the intake goes to the hub, never awaiting a client; the
//! control channel's messages are taken here too.

use std::time::Instant;

use tracing::{debug, warn};

use super::intake::Intake;
use super::outage::Lost;
use super::Subscriber;

impl Subscriber {
    /// The publication path: intake -> hub, never awaiting a client.
    ///
    /// Every publication waiting is taken at once, and consecutive ones on the same
    /// channel go to the hub together: under load a burst then costs each subscriber one
    /// lock and one wake, not one per publication. Order is Redis's order throughout.
    pub(super) async fn read(&self, intake: &Intake) -> Lost {
        let mut batch = Vec::new();
        while intake.take(&mut batch).await {
            let taken = Instant::now();
            self.metrics.redis_messages_total.inc_by(batch.len() as u64);
            for arrived in &batch {
                let waited = taken.saturating_duration_since(arrived.at);
                self.metrics.redis_lag_seconds.observe(waited.as_secs_f64());
            }
            for run in batch.chunk_by(|a, b| a.channel == b.channel) {
                let redis_name = std::str::from_utf8(&run[0].channel).unwrap_or_default();
                if redis_name == self.control {
                    run.iter()
                        .for_each(|arrived| self.on_control(&arrived.payload));
                    continue;
                }
                let Some(channel) = self.settings.prefix.from_redis(redis_name) else {
                    continue;
                };
                let payloads = run.iter().map(|arrived| arrived.payload.as_slice());
                let deliveries = self.hub.publish(channel, payloads);
                self.metrics.deliveries_total.inc_by(deliveries);
                let took = taken.elapsed().as_secs_f64();
                for _ in run {
                    self.metrics.fanout_seconds.observe(took);
                }
            }
            batch.clear();
            // While the intake refills at once (a backlog in Redis), taking never waits:
            // without a turn here the control branch beside this one (hub changes, the
            // probe) would not run until the backlog is gone.
            tokio::task::yield_now().await;
        }
        Lost::StreamEnded
    }

    /// A message between instances: `{"disconnect":"<subject>"}` closes that user's
    /// sessions here. Anything else is ignored (a newer instance's message).
    fn on_control(&self, payload: &[u8]) {
        #[derive(serde::Deserialize)]
        struct Control {
            disconnect: Option<String>,
        }
        match serde_json::from_slice::<Control>(payload) {
            Ok(Control {
                disconnect: Some(subject),
            }) => {
                let closed = self.disconnects.disconnect(&subject);
                debug!(closed, "disconnect requested through the server API");
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "ignored a malformed control message"),
        }
    }
}
