//! The Prometheus endpoint of the daemon and of the approval service (`[metrics] listen`).
//!
//! One source of truth: a scrape calls the very function `confgate stats` is answered
//! from (the daemon's `GetStats`, the service's counters), so the two never disagree.
//! Each value `name` is exported as `confgate_<name>_total` (a counter) or, when it is a
//! level ([`names::GAUGES`]), `confgate_<name>` (a gauge). The daemon adds the latency
//! [`histograms`]; both add `confgate_build_info` and `confgate_start_time_seconds`.
//!
//! The registry is [`prometheus_client`]'s; [`server`] serves it as the Prometheus text
//! format (0.0.4), or OpenMetrics when the scraper asks for it (`Accept`).
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

pub mod config;
pub mod histograms;
pub mod names;
pub mod server;

pub use config::MetricsSection;

/// What a scrape reads: the `confgate stats` values, by name.
pub type StatsSource = Arc<dyn Fn() -> Vec<(String, u64)> + Send + Sync>;

/// Which process exports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    /// The host daemon (its values and the latency histograms).
    Daemon,
    /// `confgate approver serve`.
    Approver,
}

impl Service {
    fn label(self) -> &'static str {
        match self {
            Service::Daemon => "daemon",
            Service::Approver => "approver",
        }
    }
}

/// The registry of one process.
pub struct Exporter {
    registry: Registry,
}

impl fmt::Debug for Exporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Exporter").finish_non_exhaustive()
    }
}

impl Exporter {
    /// The registry of `service`, reading its values from `stats` at each scrape.
    pub fn new(service: Service, stats: StatsSource) -> Exporter {
        let mut registry = Registry::with_prefix("confgate");
        registry.register(
            "build",
            "confgate's version and which of its services exports",
            Info::new(vec![
                ("version", env!("CARGO_PKG_VERSION")),
                ("service", service.label()),
            ]),
        );
        let started = Gauge::<f64, AtomicU64>::default();
        started.set(crate::os::clock::now_ns() as f64 / 1e9);
        registry.register_with_unit(
            "start_time",
            "when this process started, in seconds since the Unix epoch (a change is a restart)",
            Unit::Seconds,
            started,
        );
        if service == Service::Daemon {
            let h = [
                (
                    "gate_decision",
                    "time from a permission event to its answer, for operations the gate's \
                     engine decides (an approver's time included when one was asked)",
                    &histograms::GATE_DECISION,
                ),
                (
                    "approval_round_trip",
                    "time from filing an approval request to its decision reaching the gate",
                    &histograms::APPROVAL_ROUND_TRIP,
                ),
                (
                    "event_pipeline_delay",
                    "time from an operation (kernel timestamp) to its event being written out",
                    &histograms::EVENT_PIPELINE_DELAY,
                ),
            ];
            for (name, help, hist) in h {
                registry.register_with_unit(name, help, Unit::Seconds, (*hist).clone());
            }
        }
        registry.register_collector(Box::new(StatsCollector(stats)));
        Exporter { registry }
    }

    /// The registry in the Prometheus text format (0.0.4), or OpenMetrics (with `# EOF`).
    pub fn encode(&self, openmetrics: bool) -> Result<String, fmt::Error> {
        let mut out = String::with_capacity(16 * 1024);
        if openmetrics {
            prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
        }
        Ok(out)
    }
}

/// The `confgate stats` values, read at each scrape.
struct StatsCollector(StatsSource);

impl fmt::Debug for StatsCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StatsCollector")
    }
}

impl Collector for StatsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let mut seen = std::collections::HashSet::new();
        for (name, value) in (self.0)() {
            // A name that is not a metric name, or one seen already, would make the whole
            // scrape unparsable: left out (both are bugs, caught by the unit tests).
            if !names::is_valid(&name) || !seen.insert(name.clone()) {
                continue;
            }
            let help = names::help(&name);
            if names::is_gauge(&name) {
                let g = ConstGauge::new(value);
                g.encode(encoder.encode_descriptor(&name, &help, None, g.metric_type())?)?;
            } else {
                let c = ConstCounter::new(value);
                c.encode(encoder.encode_descriptor(&name, &help, None, c.metric_type())?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_become_counters_and_gauges() {
        let stats: StatsSource = Arc::new(|| {
            vec![
                ("kernel_ringbuf_drops".to_owned(), 3),
                ("uplink_connected".to_owned(), 1),
                ("kernel_ringbuf_drops".to_owned(), 9),
                ("Bad-Name".to_owned(), 1),
            ]
        });
        let e = Exporter::new(Service::Daemon, stats);
        let text = e.encode(false).unwrap();
        assert!(
            text.contains("# TYPE confgate_kernel_ringbuf_drops_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("\nconfgate_kernel_ringbuf_drops_total 3\n"),
            "{text}"
        );
        assert!(!text.contains("_total 9"), "{text}");
        assert!(
            text.contains("# TYPE confgate_uplink_connected gauge\nconfgate_uplink_connected 1\n"),
            "{text}"
        );
        assert!(!text.to_lowercase().contains("bad"), "{text}");
        assert!(
            text.contains("# TYPE confgate_gate_decision_seconds histogram"),
            "{text}"
        );
        assert!(text.contains("confgate_build_info{version="), "{text}");
        let om = e.encode(true).unwrap();
        assert!(om.ends_with("# EOF\n"), "{om}");
        let approver = Exporter::new(Service::Approver, Arc::new(Vec::new))
            .encode(false)
            .unwrap();
        assert!(!approver.contains("histogram"), "{approver}");
        assert!(approver.contains("service=\"approver\""), "{approver}");
    }
}
