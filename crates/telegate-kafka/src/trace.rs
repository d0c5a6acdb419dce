//! Traces across a topic: the W3C `traceparent` header the gateway writes on the records it
//! traces and the reference consumers continue, and the OTLP export both ends share.

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceId};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::time::Duration;

/// The record header (and MQTT 5 user property) that carries W3C trace context.
pub const TRACEPARENT: &str = "traceparent";

/// The `traceparent` value naming `span` of `trace`: written on every record of a traced
/// frame, so without the formatting machinery.
pub fn traceparent(trace: TraceId, span: SpanId, sampled: bool) -> String {
    let mut text = *b"00-00000000000000000000000000000000-0000000000000000-00";
    let ids = hex::encode_to_slice(trace.to_bytes(), &mut text[3..35])
        .and_then(|()| hex::encode_to_slice(span.to_bytes(), &mut text[36..52]));
    debug_assert!(ids.is_ok(), "the slices fit the ids");
    if sampled {
        text[54] = b'1';
    }
    String::from_utf8(text.to_vec()).expect("hex digits and dashes are ASCII")
}

/// The span a `traceparent` value names, if it is valid W3C trace context (the propagator's
/// own checks: version, lengths, hex, ids not all zero).
pub fn parse_traceparent(value: &str) -> Option<SpanContext> {
    struct One<'a>(&'a str);
    impl Extractor for One<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            (key == TRACEPARENT).then_some(self.0)
        }
        fn keys(&self) -> Vec<&str> {
            vec![TRACEPARENT]
        }
    }
    let cx = TraceContextPropagator::new().extract_with_context(&Context::new(), &One(value));
    let span = cx.span().span_context().clone();
    span.is_valid().then_some(span)
}

#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error("the OTLP endpoint {0:?} is not an http:// or https:// URL without credentials")]
    Endpoint(String),
    #[error("cannot create the OTLP exporter: {0}")]
    Exporter(String),
}

/// Spans sent as OTLP/HTTP (protobuf) to `endpoint` (a collector's base URL, `/v1/traces`
/// added when it has no path), batched on the provider's own thread, as `service`.
///
/// Call from outside the async runtime (or in `spawn_blocking`): the exporter's HTTP client
/// is a blocking one, and so are the provider's shutdown and flush.
pub fn otlp_provider(
    endpoint: &str,
    service: &'static str,
) -> Result<SdkTracerProvider, OtlpError> {
    let url = otlp_traces_url(endpoint)?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(url)
        .with_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| OtlpError::Exporter(e.to_string()))?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(service).build())
        .build())
}

/// Sends the spans `provider` still holds and stops it, within `timeout`, off the async
/// runtime's threads (the exporter blocks); what it could not send is logged.
pub async fn shutdown(provider: SdkTracerProvider, timeout: Duration) {
    let done = tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(timeout));
    match done.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "spans not all exported at shutdown"),
        Err(e) => tracing::warn!(error = %e, "the span exporter did not stop"),
    }
}

/// The traces URL of a collector named by its base URL (or by its traces URL itself).
pub fn otlp_traces_url(endpoint: &str) -> Result<String, OtlpError> {
    let refused = || OtlpError::Endpoint(redacted(endpoint));
    let url = url::Url::parse(endpoint).map_err(|_| refused())?;
    if !matches!(url.scheme(), "http" | "https")
        || !url.username().is_empty()
        || url.password().is_some()
        || url.host().is_none()
    {
        return Err(refused());
    }
    Ok(match url.path() {
        "" | "/" => format!("{}v1/traces", url.as_str()),
        _ => url.to_string(),
    })
}

/// An endpoint as it may be shown: without what comes before an `@` (credentials).
fn redacted(endpoint: &str) -> String {
    match endpoint.split_once('@') {
        Some((before, after)) => match before.split_once("://") {
            Some((scheme, _)) => format!("{scheme}://…@{after}"),
            None => format!("…@{after}"),
        },
        None => endpoint.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_is_written_and_read_back() {
        let trace = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("hex");
        let span = SpanId::from_hex("00f067aa0ba902b7").expect("hex");
        let value = traceparent(trace, span, true);
        assert_eq!(
            value,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        let read = parse_traceparent(&value).expect("valid");
        assert_eq!(
            (read.trace_id(), read.span_id(), read.is_sampled()),
            (trace, span, true)
        );
        assert!(
            !parse_traceparent(&traceparent(trace, span, false))
                .expect("valid")
                .is_sampled()
        );
    }

    #[test]
    fn invalid_trace_context_is_none() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-WMWZZZ3CZHE000000000000000000000-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn the_traces_url_is_the_base_url_and_its_path() {
        assert_eq!(
            otlp_traces_url("http://127.0.0.1:4318").expect("accepted"),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            otlp_traces_url("https://collector:4318/").expect("accepted"),
            "https://collector:4318/v1/traces"
        );
        assert_eq!(
            otlp_traces_url("http://collector/otlp/v1/traces").expect("accepted"),
            "http://collector/otlp/v1/traces"
        );
        for bad in [
            "collector:4318",
            "grpc://collector:4317",
            "http://user:secret@c:4318",
        ] {
            let e = otlp_traces_url(bad).expect_err("refused").to_string();
            assert!(!e.contains("secret"), "{e}");
        }
    }
}
