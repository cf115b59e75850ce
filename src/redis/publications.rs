//! The publication path, for one Redis and a Cluster alike: each publication the
//! connection (or a master's link) reads goes to the hub there and then, on the io
//! thread, never awaiting a client (see `intake`); the control channel's messages are
//! taken here too.

use std::sync::Arc;
use std::time::Instant;

use tracing::{debug, warn};

use super::intake::{Deliver, Intake};
use super::outage::Lost;
use super::Subscriber;
use crate::channel::Prefix;
use crate::disconnect::Disconnects;
use crate::hub::Hub;
use crate::metrics::Metrics;

/// What a publication needs on its way from the connection to the hub.
pub(super) struct Fanout {
    pub hub: Arc<Hub>,
    pub prefix: Prefix,
    /// `Prefix::control`, computed once.
    pub control: String,
    pub disconnects: Arc<Disconnects>,
    pub metrics: Metrics,
}

impl Fanout {
    /// The intake's fan-out, as a callback for the io thread.
    pub fn deliver(self: &Arc<Self>) -> Deliver {
        let fanout = self.clone();
        Box::new(move |channel, payload, at| fanout.publish(channel, payload, at))
    }

    /// Appends one publication to its channel's tape and tells the waiting subscribers.
    fn publish(&self, channel: &[u8], payload: &[u8], at: Instant) {
        let metrics = &self.metrics;
        metrics.redis_messages_total.inc();
        metrics
            .redis_lag_seconds
            .observe(at.elapsed().as_secs_f64());
        let redis_name = std::str::from_utf8(channel).unwrap_or_default();
        if redis_name == self.control {
            self.on_control(payload);
            return;
        }
        let Some(channel) = self.prefix.from_redis(redis_name) else {
            return;
        };
        let deliveries = self.hub.publish(channel, [payload]);
        metrics.deliveries_total.inc_by(deliveries);
        metrics.fanout_seconds.observe(at.elapsed().as_secs_f64());
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

impl Subscriber {
    /// A new connection's intake, fanning out to this subscriber's hub.
    pub(super) fn intake(&self) -> Arc<Intake> {
        Intake::new(self.fanout.deliver())
    }

    /// Resolves when the connection ends; its publications are fanned out as it reads
    /// them, meanwhile.
    pub(super) async fn read(&self, intake: &Intake) -> Lost {
        intake.ended().await;
        Lost::StreamEnded
    }
}
