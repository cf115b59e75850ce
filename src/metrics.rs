//! Every `herald_*` family, registered on a registry that is handed in (no globals).
//!
//! No label takes its values from channel names or clients: cardinality stays fixed.

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Handles to every family; cheap to clone (each is an `Arc` inside).
#[derive(Clone)]
pub struct Metrics {
    pub connections: IntGauge,
    pub connections_total: IntCounter,
    pub subscriptions: IntGauge,
    pub channels: IntGauge,
    pub redis_messages_total: IntCounter,
    pub deliveries_total: IntCounter,
    /// Publications dropped for a client that fell more than the queue capacity behind on
    /// a channel (it is told with `lagged`).
    pub dropped_queue_full: IntCounter,
    /// Publications a client closed as a slow consumer never got: unread on its channels
    /// (also those that fell off a tape since its last read), waiting in its write, or
    /// cut by the close. With `queue_full` and what clients received, they add up to
    /// `deliveries_total`.
    pub dropped_slow_consumer: IntCounter,
    pub redis_connected: IntGauge,
    pub redis_reconnects_total: IntCounter,
    pub fanout_seconds: Histogram,
    /// How long publications waited in the intake, from read off the Redis connection to
    /// taken for the fan-out.
    pub redis_lag_seconds: Histogram,
    /// Resumes (`subscribe` with `since`) that delivered everything after the offset.
    pub recoveries_recovered: IntCounter,
    /// Resumes answered `recovered: false`.
    pub recoveries_not_recovered: IntCounter,
    /// Publications re-read from history after the subscriber connection was lost.
    pub gapfill_publications_total: IntCounter,
    /// `gap` frames sent (one per subscriber told).
    pub gaps_total: IntCounter,
    /// Server API requests by endpoint (`publish`, `channels`, `channel`, `disconnect`,
    /// `other`) and HTTP status: both label sets are fixed.
    pub api_requests: IntCounterVec,
    /// On a Redis Cluster, 1 per master (`node`: host:port) while Herald's link to it is
    /// up: bounded by the number of masters.
    pub redis_node_connected: IntGaugeVec,
    registry: Registry,
}

impl Metrics {
    pub fn new(registry: Registry) -> prometheus::Result<Self> {
        let gauge = |name: &str, help: &str| -> prometheus::Result<IntGauge> {
            let gauge = IntGauge::new(name, help)?;
            registry.register(Box::new(gauge.clone()))?;
            Ok(gauge)
        };
        let counter = |name: &str, help: &str| -> prometheus::Result<IntCounter> {
            let counter = IntCounter::new(name, help)?;
            registry.register(Box::new(counter.clone()))?;
            Ok(counter)
        };
        let dropped = IntCounterVec::new(
            Opts::new(
                "herald_dropped_total",
                "Publications dropped for clients, by reason.",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(dropped.clone()))?;
        // Spans 50µs (a few local subscribers) to 2.5s (a very large fan-out on a busy core).
        let buckets = prometheus::exponential_buckets(0.000_05, 2.5, 13)?;
        let fanout_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "herald_fanout_seconds",
                "Time from read off the Redis connection to queued for every local subscriber.",
            )
            .buckets(buckets.clone()),
        )?;
        registry.register(Box::new(fanout_seconds.clone()))?;
        let redis_lag_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "herald_redis_lag_seconds",
                "Time from a publication read off the Redis connection to the start of its fan-out.",
            )
            .buckets(buckets),
        )?;
        registry.register(Box::new(redis_lag_seconds.clone()))?;
        let recoveries = IntCounterVec::new(
            Opts::new(
                "herald_history_recoveries_total",
                "Resumes from an offset, by result.",
            ),
            &["result"],
        )?;
        registry.register(Box::new(recoveries.clone()))?;
        let api_requests = IntCounterVec::new(
            Opts::new(
                "herald_api_requests_total",
                "Server API requests, by endpoint and HTTP status.",
            ),
            &["endpoint", "code"],
        )?;
        registry.register(Box::new(api_requests.clone()))?;

        let redis_node_connected = IntGaugeVec::new(
            Opts::new(
                "herald_redis_node_connected",
                "On a Redis Cluster: 1 while the subscriber link to this master is up.",
            ),
            &["node"],
        )?;
        registry.register(Box::new(redis_node_connected.clone()))?;
        Ok(Metrics {
            connections: gauge("herald_connections", "Open WebSocket connections.")?,
            connections_total: counter(
                "herald_connections_total",
                "Accepted WebSocket connections.",
            )?,
            subscriptions: gauge("herald_subscriptions", "Connection-channel pairs.")?,
            channels: gauge("herald_channels", "Channels subscribed on Redis.")?,
            redis_messages_total: counter(
                "herald_redis_messages_total",
                "Publications received from Redis.",
            )?,
            deliveries_total: counter(
                "herald_deliveries_total",
                "Publications queued to clients.",
            )?,
            dropped_queue_full: dropped.with_label_values(&["queue_full"]),
            dropped_slow_consumer: dropped.with_label_values(&["slow_consumer"]),
            redis_connected: gauge(
                "herald_redis_connected",
                "1 while the Redis subscriber connection is up.",
            )?,
            redis_reconnects_total: counter(
                "herald_redis_reconnects_total",
                "Reconnections of the Redis subscriber connection.",
            )?,
            fanout_seconds,
            redis_lag_seconds,
            recoveries_recovered: recoveries.with_label_values(&["recovered"]),
            recoveries_not_recovered: recoveries.with_label_values(&["not_recovered"]),
            gapfill_publications_total: counter(
                "herald_gapfill_publications_total",
                "Publications re-read from history after the Redis subscriber connection was lost.",
            )?,
            gaps_total: counter("herald_gaps_total", "gap frames sent to clients.")?,
            api_requests,
            redis_node_connected,
            registry,
        })
    }

    /// Records whether the cluster link to `node` is up.
    pub fn set_node_connected(&self, node: &str, up: bool) {
        self.redis_node_connected
            .with_label_values(&[node])
            .set(i64::from(up));
    }

    /// The Prometheus text exposition (format 0.0.4) of every family.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_contract_family() {
        let metrics = Metrics::new(Registry::new()).unwrap();
        metrics.fanout_seconds.observe(0.001);
        let text = metrics.render();
        for family in [
            "herald_connections ",
            "herald_connections_total ",
            "herald_subscriptions ",
            "herald_channels ",
            "herald_redis_messages_total ",
            "herald_deliveries_total ",
            "herald_dropped_total{reason=\"queue_full\"} ",
            "herald_dropped_total{reason=\"slow_consumer\"} ",
            "herald_redis_connected ",
            "herald_redis_reconnects_total ",
            "herald_fanout_seconds_count ",
            "herald_redis_lag_seconds_count ",
            "herald_history_recoveries_total{result=\"recovered\"} ",
            "herald_history_recoveries_total{result=\"not_recovered\"} ",
            "herald_gapfill_publications_total ",
            "herald_gaps_total ",
        ] {
            assert!(text.contains(family), "missing {family:?} in\n{text}");
        }
    }
}
