//! `/metrics` (Prometheus text), `/healthz` (the process runs) and `/readyz` (topics exist,
//! the producer is up and MQTT accepts connections).

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The process-wide Prometheus recorder (installed on first use).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("telegate_kafka_delivery_seconds".into()),
                    &[
                        0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
                    ],
                )
                .unwrap_or_else(|_| PrometheusBuilder::new());
            match builder.install_recorder() {
                Ok(h) => h,
                // Another recorder is installed (only possible in tests): keep a private one.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            }
        })
        .clone()
}

#[derive(Clone)]
struct AppState {
    metrics: PrometheusHandle,
    ready: Arc<AtomicBool>,
}

/// Serves the endpoints, on a task of `tasks`, until `stop` is cancelled; returns the bound
/// address.
pub async fn serve(
    listen: SocketAddr,
    ready: Arc<AtomicBool>,
    stop: CancellationToken,
    tasks: &TaskTracker,
) -> std::io::Result<SocketAddr> {
    let state = AppState {
        metrics: metrics_handle(),
        ready,
    };
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(s): State<AppState>| async move { s.metrics.render() }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(|State(s): State<AppState>| async move {
                if s.ready.load(Ordering::Acquire) {
                    (StatusCode::OK, "ready\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                }
            }),
        )
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    tasks.spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
        {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    });
    Ok(addr)
}

/// `(labels, value)` of every sample of a counter in Prometheus text format: for the tests and
/// tools that scrape a gateway's `/metrics` from outside. The gateway itself reads its counts
/// typed ([`crate::FrameStats`], the edge's and the sink's stats).
pub fn samples<'a>(text: &'a str, name: &str) -> Vec<(&'a str, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            (n == name).then(|| (labels, value.parse().unwrap_or(0.0)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn prometheus_samples_parse() {
        let text = "# TYPE a counter\na{x=\"1\",y=\"2\"} 3\nb 4\na{x=\"9\"} 0\n";
        assert_eq!(
            super::samples(text, "a"),
            vec![("x=\"1\",y=\"2\"", 3.0), ("x=\"9\"", 0.0)]
        );
        assert_eq!(super::samples(text, "b"), vec![("", 4.0)]);
    }
}
