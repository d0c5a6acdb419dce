//! Traces of frames, exported over OTLP: what happened to one frame, when, from the edge's read
//! to its acknowledgement, and the `traceparent` each record carries to its consumers.
//!
//! Off (no endpoint), nothing here runs: the pipeline holds no [`FrameTrace`]. On, every frame
//! gets one (ids and a few clock readings); its spans are built and exported only when it
//! ends, for the frames head sampling picked (`traces.sample_ratio`, drawn on the gateway's own
//! random span id, so a vehicle cannot choose to be traced) and for every rejected or failed
//! frame. Spans are built after the fact with the times recorded on the way, so an unexported
//! frame costs no span, attribute or allocation beyond its own record.
//!
//! What a trace may hold: kinds, purposes, services, verdicts, reasons, topics, subject forms,
//! timings. Never a VIN, a position or a pseudonym, and never a vehicle's `tracestate` (free
//! text; it is not read). A record whose subject form is not the VIN starts a trace of its
//! own: one trace id on a VIN-keyed record and on an anonymous one would link them again.

use opentelemetry::trace::{
    Span as _, SpanBuilder, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags,
    TraceId, TraceState, Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SdkTracer, SdkTracerProvider};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use telegate_frame::{FrameKind, RejectReason};
use telegate_kafka::Report;
use telegate_kafka::trace::{otlp_provider, otlp_traces_url, parse_traceparent, traceparent};
use telegate_policy::{Admission, Identity, OutRecord, Pack, Verdict, header};

/// `[traces]`: where spans go and how many frames are traced.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TraceConfig {
    /// An OTLP/HTTP collector's base URL (`/v1/traces` is added); `None`: no traces.
    pub otlp_endpoint: Option<String>,
    /// The share of frames traced, 0 to 1; rejected and failed frames are traced whatever it is.
    pub sample_ratio: f64,
}

impl Default for TraceConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            sample_ratio: 0.01,
        }
    }
}

impl TraceConfig {
    /// Every problem, with its key.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            problems.push((
                "traces.sample_ratio",
                format!("{} is not between 0 and 1", self.sample_ratio),
            ));
        }
        if let Some(endpoint) = &self.otlp_endpoint
            && let Err(e) = otlp_traces_url(endpoint)
        {
            problems.push(("traces.otlp_endpoint", e.to_string()));
        }
        problems
    }
}

/// The gateway's traces: off, or an exporter every frame's trace reports to.
#[derive(Debug, Clone, Default)]
pub struct Traces(Option<Arc<Exporter>>);

#[derive(Debug)]
struct Exporter {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    ids: RandomIdGenerator,
    /// A frame is sampled when its span id, as a number, is below this.
    threshold: u64,
    exported: metrics::Counter,
    kept_rejected: metrics::Counter,
    kept_failed: metrics::Counter,
    invalid_context: metrics::Counter,
}

impl Traces {
    /// Starts the exporter named in `cfg`, or nothing. Blocking (the exporter's HTTP client
    /// is a blocking one): call it off the async runtime's threads.
    pub fn start(cfg: &TraceConfig) -> anyhow::Result<Self> {
        let Some(endpoint) = &cfg.otlp_endpoint else {
            return Ok(Self(None));
        };
        let provider = otlp_provider(endpoint, "telegate")?;
        let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "telegate");
        let counter = |outcome: &'static str| metrics::counter!("telegate_traces_exported_total", "kept" => outcome);
        Ok(Self(Some(Arc::new(Exporter {
            provider,
            tracer,
            ids: RandomIdGenerator::default(),
            threshold: threshold(cfg.sample_ratio),
            exported: counter("sampled"),
            kept_rejected: counter("rejected"),
            kept_failed: counter("failed"),
            invalid_context: metrics::counter!("telegate_trace_context_invalid_total"),
        }))))
    }

    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// A frame's trace, when traces are on: it continues the vehicle's `traceparent` when that
    /// is valid W3C trace context, and starts a new trace otherwise.
    pub(crate) fn frame(
        &self,
        received: Instant,
        vehicle: Option<&str>,
    ) -> Option<Arc<FrameTrace>> {
        let exporter = self.0.as_ref()?;
        let parent = vehicle.and_then(|v| {
            let parsed = parse_traceparent(v);
            if parsed.is_none() {
                exporter.invalid_context.increment(1);
            }
            parsed
        });
        let span = exporter.ids.new_span_id();
        let trace = match &parent {
            Some(p) => p.trace_id(),
            None => exporter.ids.new_trace_id(),
        };
        let now = SystemTime::now();
        Some(Arc::new(FrameTrace {
            sampled: u64::from_be_bytes(span.to_bytes()) < exporter.threshold,
            exporter: exporter.clone(),
            trace,
            span,
            parent: parent.map(|p| p.span_id()),
            received: now.checked_sub(received.elapsed()).unwrap_or(now),
            steps: Mutex::default(),
        }))
    }

    /// Exports what is left and stops the exporter, within `timeout`.
    pub async fn shutdown(&self, timeout: Duration) {
        let Some(exporter) = self.0.clone() else {
            return;
        };
        let done =
            tokio::task::spawn_blocking(move || exporter.provider.shutdown_with_timeout(timeout));
        match done.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "spans not all exported at shutdown"),
            Err(e) => tracing::warn!(error = %e, "the span exporter did not stop"),
        }
    }
}

/// A ratio as a bound on 64-bit random numbers.
fn threshold(ratio: f64) -> u64 {
    if ratio >= 1.0 {
        u64::MAX
    } else {
        // Saturating: the cast clamps to 0..=u64::MAX.
        (ratio * u64::MAX as f64) as u64
    }
}

/// One frame's trace while it is under way: its ids and the times of its steps.
#[derive(Debug)]
pub(crate) struct FrameTrace {
    exporter: Arc<Exporter>,
    trace: TraceId,
    /// The frame's own span.
    span: SpanId,
    /// The vehicle's span, when its publish carried trace context.
    parent: Option<SpanId>,
    sampled: bool,
    received: SystemTime,
    steps: Mutex<Steps>,
}

#[derive(Debug, Default)]
struct Steps {
    kind: Option<FrameKind>,
    qos: u8,
    validate: Option<(SystemTime, SystemTime)>,
    rejected: Option<RejectReason>,
    decide: Option<(SystemTime, SystemTime)>,
    verdicts: Vec<Vec<KeyValue>>,
    records: Vec<Produce>,
    writes: Vec<Write>,
    /// A copy of a frame already written: acknowledged with the first.
    copy: bool,
    /// The vehicle is offline: nothing of the frame is kept, its trace neither.
    offline: bool,
}

#[derive(Debug)]
struct Produce {
    /// `Some`: the record's own trace (a subject form other than the VIN).
    own_trace: Option<TraceId>,
    span: SpanId,
    attributes: Vec<KeyValue>,
    start: SystemTime,
    /// The delivery report: when, and whether Kafka holds it.
    report: Option<(SystemTime, bool)>,
}

#[derive(Debug)]
struct Write {
    name: &'static str,
    start: SystemTime,
    end: Option<(SystemTime, bool)>,
}

impl FrameTrace {
    fn steps(&self) -> std::sync::MutexGuard<'_, Steps> {
        self.steps.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn received_qos(&self, qos: u8) {
        self.steps().qos = qos;
    }

    /// Validation ran from `start` to now, and accepted a frame of `kind` or refused it.
    pub(crate) fn validated(&self, start: SystemTime, outcome: Result<FrameKind, RejectReason>) {
        let mut steps = self.steps();
        steps.validate = Some((start, SystemTime::now()));
        match outcome {
            Ok(kind) => steps.kind = Some(kind),
            Err(reason) => steps.rejected = Some(reason),
        }
    }

    /// The edge refused the publish's topic.
    pub(crate) fn refused_at_the_edge(&self) {
        self.steps().rejected = Some(RejectReason::TopicNotPermitted);
    }

    pub(crate) fn copy(&self) {
        self.steps().copy = true;
    }

    /// The vehicle was offline when it captured the frame: the trace is not exported.
    pub(crate) fn offline(&self) {
        self.steps().offline = true;
    }

    /// Policy decided from `start` to now: one verdict per routed purpose.
    pub(crate) fn decided(&self, start: SystemTime, pack: &Pack, admission: &Admission) {
        let verdicts = admission
            .verdicts
            .iter()
            .map(|&(index, verdict)| {
                let purpose = &pack.purposes[index];
                let mut kv = vec![
                    KeyValue::new("telegate.service", pack.service_of(purpose).id.to_string()),
                    KeyValue::new("telegate.purpose", purpose.id.to_string()),
                    KeyValue::new("telegate.legal_basis", purpose.legal_basis.as_str()),
                ];
                match verdict {
                    Verdict::Forward(consent) => {
                        kv.push(KeyValue::new("telegate.verdict", "forward"));
                        kv.push(KeyValue::new("telegate.consent", consent.as_str()));
                        kv.push(KeyValue::new(
                            "telegate.subject_form",
                            purpose.identity.as_str(),
                        ));
                    }
                    Verdict::Drop(reason) => {
                        kv.push(KeyValue::new("telegate.verdict", "drop"));
                        kv.push(KeyValue::new("telegate.drop_reason", reason.as_str()));
                    }
                }
                kv
            })
            .collect();
        let mut steps = self.steps();
        steps.decide = Some((start, SystemTime::now()));
        steps.verdicts = verdicts;
    }

    /// Writes `rec`'s `traceparent` and returns what its delivery report must tell the trace.
    /// A VIN-keyed record continues the frame's trace; any other starts its own.
    pub(crate) fn record(self: &Arc<Self>, rec: &mut OutRecord) -> Report {
        let joins = rec.header(header::SUBJECT) == Some(Identity::Vin.as_str());
        let own_trace = (!joins).then(|| self.exporter.ids.new_trace_id());
        let span = self.exporter.ids.new_span_id();
        let attributes = vec![
            KeyValue::new("messaging.system", "kafka"),
            KeyValue::new("messaging.operation.type", "send"),
            KeyValue::new("messaging.destination.name", rec.topic.clone()),
            KeyValue::new(
                "telegate.purpose",
                rec.header(header::PURPOSE).unwrap_or("").to_owned(),
            ),
            KeyValue::new(
                "telegate.subject_form",
                rec.header(header::SUBJECT).unwrap_or("none").to_owned(),
            ),
        ];
        rec.headers.push((
            telegate_kafka::trace::TRACEPARENT,
            traceparent(own_trace.unwrap_or(self.trace), span, self.sampled),
        ));
        let index = {
            let mut steps = self.steps();
            steps.records.push(Produce {
                own_trace,
                span,
                attributes,
                start: SystemTime::now(),
                report: None,
            });
            steps.records.len() - 1
        };
        let trace = self.clone();
        Box::new(move |ok| {
            trace.steps().records[index].report = Some((SystemTime::now(), ok));
        })
    }

    /// A write the frame waits for (`telegate.state_write`, `telegate.ledger_write`) starts;
    /// the returned function ends it.
    pub(crate) fn write(
        self: &Arc<Self>,
        name: &'static str,
    ) -> impl FnOnce(bool) + Send + 'static {
        let index = {
            let mut steps = self.steps();
            steps.writes.push(Write {
                name,
                start: SystemTime::now(),
                end: None,
            });
            steps.writes.len() - 1
        };
        let trace = self.clone();
        move |ok| trace.steps().writes[index].end = Some((SystemTime::now(), ok))
    }

    /// The frame's end, once everything it waited for has reported (the last reference is
    /// gone): acknowledged, or failed if a record or a write did not succeed. Its spans are
    /// exported if it was sampled, rejected or failed.
    fn finish(&self) {
        let end = SystemTime::now();
        let steps = self.steps();
        if steps.offline {
            return;
        }
        let ok = steps
            .records
            .iter()
            .all(|r| matches!(r.report, Some((_, true))))
            && steps
                .writes
                .iter()
                .all(|w| matches!(w.end, Some((_, true))));
        let exporter = &self.exporter;
        let kept = match (self.sampled, steps.rejected.is_some(), ok) {
            (true, ..) => &exporter.exported,
            (false, true, _) => &exporter.kept_rejected,
            (false, false, false) => &exporter.kept_failed,
            (false, false, true) => return,
        };
        kept.increment(1);
        self.export(&steps, end, ok);
    }

    fn export(&self, steps: &Steps, end: SystemTime, ok: bool) {
        let tracer = &self.exporter.tracer;
        let outcome = match (steps.rejected, steps.copy, ok) {
            (Some(_), ..) => "rejected",
            (None, true, _) => "copy",
            (None, false, true) => "acknowledged",
            (None, false, false) => "failed",
        };
        let mut attributes = vec![
            KeyValue::new("messaging.system", "mqtt"),
            KeyValue::new("messaging.operation.type", "receive"),
            KeyValue::new("telegate.outcome", outcome),
            KeyValue::new("telegate.sampled", self.sampled),
            KeyValue::new("mqtt.qos", i64::from(steps.qos)),
            KeyValue::new("telegate.records", steps.records.len() as i64),
        ];
        if let Some(kind) = steps.kind {
            attributes.push(KeyValue::new("telegate.frame.kind", kind.as_str()));
        }
        if let Some(reason) = steps.rejected {
            attributes.push(KeyValue::new("telegate.reject_reason", reason.as_str()));
        }
        let parent = match self.parent {
            Some(vehicle) => context(self.trace, vehicle, true),
            None => Context::new(),
        };
        let mut frame = tracer.build_with_context(
            SpanBuilder {
                trace_id: Some(self.trace),
                span_id: Some(self.span),
                span_kind: Some(SpanKind::Consumer),
                start_time: Some(self.received),
                attributes: Some(attributes),
                status: if ok {
                    Status::Unset
                } else {
                    Status::error(outcome)
                },
                ..SpanBuilder::from_name("telegate.frame")
            },
            &parent,
        );
        let inside = context(self.trace, self.span, false);
        let child = |name: &'static str, (start, stop): (SystemTime, SystemTime), kv| {
            tracer
                .build_with_context(
                    SpanBuilder {
                        start_time: Some(start),
                        attributes: Some(kv),
                        ..SpanBuilder::from_name(name)
                    },
                    &inside,
                )
                .end_with_timestamp(stop);
        };
        if let Some(validate) = steps.validate {
            child("telegate.validate", validate, Vec::new());
        }
        if let Some(decide) = steps.decide {
            child(
                "telegate.decide",
                decide,
                vec![KeyValue::new(
                    "telegate.purposes",
                    steps.verdicts.len() as i64,
                )],
            );
            for verdict in &steps.verdicts {
                child("telegate.purpose", decide, verdict.clone());
            }
        }
        for w in &steps.writes {
            let (stop, done) = w.end.unwrap_or((end, false));
            child(
                w.name,
                (w.start, stop),
                vec![KeyValue::new("telegate.written", done)],
            );
        }
        for r in &steps.records {
            let (stop, held) = r.report.unwrap_or((end, false));
            let mut kv = r.attributes.clone();
            kv.push(KeyValue::new("telegate.delivered", held));
            let (cx, trace) = match r.own_trace {
                Some(own) => (Context::new(), own),
                None => (inside.clone(), self.trace),
            };
            tracer
                .build_with_context(
                    SpanBuilder {
                        trace_id: Some(trace),
                        span_id: Some(r.span),
                        span_kind: Some(SpanKind::Producer),
                        start_time: Some(r.start),
                        attributes: Some(kv),
                        status: if held {
                            Status::Unset
                        } else {
                            Status::error("not delivered")
                        },
                        ..SpanBuilder::from_name("telegate.produce")
                    },
                    &cx,
                )
                .end_with_timestamp(stop);
        }
        frame.end_with_timestamp(end);
    }
}

impl Drop for FrameTrace {
    fn drop(&mut self) {
        self.finish();
    }
}

/// A context whose active span is `span` of `trace`, to build children in.
fn context(trace: TraceId, span: SpanId, remote: bool) -> Context {
    Context::new().with_remote_span_context(SpanContext::new(
        trace,
        span,
        TraceFlags::SAMPLED,
        remote,
        TraceState::NONE,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ratio_bounds_the_sampled_share() {
        assert_eq!(threshold(0.0), 0);
        assert_eq!(threshold(1.0), u64::MAX);
        assert_eq!(threshold(0.5), u64::MAX / 2 + 1);
        let ids = RandomIdGenerator::default();
        let bound = threshold(0.1);
        let sampled = (0..100_000)
            .filter(|_| u64::from_be_bytes(ids.new_span_id().to_bytes()) < bound)
            .count();
        assert!((9_000..11_000).contains(&sampled), "{sampled}");
    }

    #[test]
    fn a_bad_ratio_or_endpoint_is_a_problem_with_its_key() {
        let bad = TraceConfig {
            otlp_endpoint: Some("collector:4318".into()),
            sample_ratio: 1.5,
        };
        let keys: Vec<&str> = bad.problems().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["traces.sample_ratio", "traces.otlp_endpoint"]);
        assert!(TraceConfig::default().problems().is_empty());
    }
}
