//! A component's metrics registry and the HTTP metrics every component exports.
//!
//! There is no global registry: each component builds its own [`Metrics`] with a
//! [`MetricsBuilder`], registers its own metrics through [`MetricsBuilder::registry`] (names are
//! prefixed with `shoal_` automatically), and serves the result on `GET /metrics`. Keeping it per
//! component lets tests run several components in one process without their numbers mixing.

use std::borrow::Cow;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// Prefix of every Shoal metric name.
const PREFIX: &str = "shoal";

/// Request duration buckets in seconds: 1 ms for `/health` and tag lookups up to 60 s for
/// multi-gigabyte blob transfers.
const DURATION_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0,
];

/// A route label: a static name from a handler, or the router's matched path pattern.
pub(crate) type Route = Cow<'static, str>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    pub route: Route,
    pub method: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RouteMethodLabels {
    pub route: Route,
    pub method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RouteLabels {
    pub route: Route,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildInfoLabels {
    component: &'static str,
    version: &'static str,
}

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// The HTTP metrics recorded by [`crate::http::with_common_routes`]' middleware.
#[derive(Debug)]
pub(crate) struct HttpMetrics {
    pub requests: Family<RequestLabels, Counter>,
    pub duration: Family<RouteMethodLabels, Histogram, fn() -> Histogram>,
    pub request_bytes: Family<RouteLabels, Counter>,
    pub response_bytes: Family<RouteLabels, Counter>,
}

/// Collects a component's metrics before they are frozen into a shareable [`Metrics`].
#[derive(Debug)]
pub struct MetricsBuilder {
    registry: Registry,
    http: HttpMetrics,
}

impl MetricsBuilder {
    /// Starts a registry for `component` (e.g. `"origin"`) with the HTTP metrics and
    /// `shoal_build_info{component,version} 1` already registered.
    pub fn new(component: &'static str) -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        let http = HttpMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            request_bytes: Family::default(),
            response_bytes: Family::default(),
        };
        registry.register(
            "http_requests",
            "HTTP requests answered, by route, method and status",
            http.requests.clone(),
        );
        registry.register_with_unit(
            "http_request_duration",
            "Time from receiving an HTTP request until its response body finished",
            Unit::Seconds,
            http.duration.clone(),
        );
        // The unit is appended to the name: these become `shoal_http_request_bytes_total` and
        // `shoal_http_response_bytes_total`.
        registry.register_with_unit(
            "http_request",
            "HTTP request body bytes read by handlers",
            Unit::Bytes,
            http.request_bytes.clone(),
        );
        registry.register_with_unit(
            "http_response",
            "HTTP response body bytes sent",
            Unit::Bytes,
            http.response_bytes.clone(),
        );
        let build_info = Family::<BuildInfoLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildInfoLabels {
                component,
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register(
            "build_info",
            "Always 1; labels name the component and its version",
            build_info,
        );
        Self { registry, http }
    }

    /// The registry to add the component's own metrics to (names get the `shoal_` prefix).
    pub fn registry(&mut self) -> &mut Registry {
        &mut self.registry
    }

    pub fn build(self) -> Arc<Metrics> {
        Arc::new(Metrics {
            registry: self.registry,
            http: self.http,
        })
    }
}

/// A component's frozen registry; cheap to share, metrics inside are updated lock-free.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub(crate) http: HttpMetrics,
}

impl Metrics {
    /// All metrics in the OpenMetrics text format, as served on `GET /metrics`.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail; only a broken metric's encoder could. A scrape must
        // not take the component down, so log it and serve what was encoded.
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!(%error, "encoding metrics failed");
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_prefix_and_build_info() {
        let mut builder = MetricsBuilder::new("origin");
        let uploads = Counter::<u64>::default();
        builder
            .registry()
            .register("uploads", "Uploads accepted", uploads.clone());
        let metrics = builder.build();
        uploads.inc();
        let text = metrics.encode();
        assert!(text.contains("shoal_uploads_total 1\n"), "{text}");
        assert!(
            text.contains(&format!(
                "shoal_build_info{{component=\"origin\",version=\"{}\"}} 1\n",
                env!("CARGO_PKG_VERSION")
            )),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn http_metrics_have_the_documented_names() {
        let metrics = MetricsBuilder::new("proxy").build();
        let labels = RouteLabels {
            route: Cow::Borrowed("/x"),
        };
        metrics.http.request_bytes.get_or_create(&labels).inc_by(3);
        metrics.http.response_bytes.get_or_create(&labels).inc_by(4);
        metrics
            .http
            .requests
            .get_or_create(&RequestLabels {
                route: Cow::Borrowed("/x"),
                method: "GET",
                status: 200,
            })
            .inc();
        metrics
            .http
            .duration
            .get_or_create(&RouteMethodLabels {
                route: Cow::Borrowed("/x"),
                method: "GET",
            })
            .observe(0.002);
        let text = metrics.encode();
        for line in [
            "shoal_http_request_bytes_total{route=\"/x\"} 3\n",
            "shoal_http_response_bytes_total{route=\"/x\"} 4\n",
            "shoal_http_requests_total{route=\"/x\",method=\"GET\",status=\"200\"} 1\n",
            "shoal_http_request_duration_seconds_bucket{le=\"0.0025\",route=\"/x\",method=\"GET\"} 1\n",
            "shoal_http_request_duration_seconds_bucket{le=\"60.0\",route=\"/x\",method=\"GET\"} 1\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}
