//! Traces of frames, exported over OTLP: what happened to one frame, when, from the edge's read
//! to its acknowledgement, and the `traceparent` each record carries to its consumers.
//!
//! Off (no endpoint), nothing here runs: the pipeline holds no [`FrameTrace`]. On, every frame
//! gets one; its spans are built and exported only when it ends, for the frames head sampling
//! picked (`traces.sample_ratio`, drawn on the gateway's own random span id, so a vehicle
//! cannot choose to be traced) and for every rejected or failed frame. On the way a frame's
//! trace records only ids, indices into the pack and, for a sampled frame, times; spans and
//! their attributes are built after the fact. A frame not sampled makes no span, attribute or
//! string unless it is kept, reads the clock only around the state and ledger writes a privacy
//! frame waits for (a failed one keeps the trace) and at a failed delivery, and its records
//! carry no `traceparent`.
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
use smallvec::SmallVec;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use telegate_frame::{FrameKind, RejectReason};
use telegate_kafka::trace::{otlp_provider, otlp_traces_url, parse_traceparent, traceparent};
use telegate_kafka::{Report, Reported};
use telegate_policy::{Admission, Identity, OutRecord, Pack, Verdict};

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
    /// What the purposes' indices in frames' traces refer to.
    pack: Arc<Pack>,
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
    pub fn start(cfg: &TraceConfig, pack: Arc<Pack>) -> anyhow::Result<Self> {
        let Some(endpoint) = &cfg.otlp_endpoint else {
            return Ok(Self(None));
        };
        Ok(Self::exporting(
            otlp_provider(endpoint, "telegate")?,
            cfg.sample_ratio,
            pack,
        ))
    }

    /// Traces of frames under `pack`, sampled at `ratio`, exported through `provider`.
    fn exporting(provider: SdkTracerProvider, ratio: f64, pack: Arc<Pack>) -> Self {
        let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "telegate");
        let kept =
            |why: &'static str| metrics::counter!("telegate_traces_exported_total", "kept" => why);
        Self(Some(Arc::new(Exporter {
            provider,
            tracer,
            pack,
            ids: RandomIdGenerator::default(),
            threshold: threshold(ratio),
            exported: kept("sampled"),
            kept_rejected: kept("rejected"),
            kept_failed: kept("failed"),
            invalid_context: metrics::counter!("telegate_trace_context_invalid_total"),
        })))
    }

    /// A frame's trace, when traces are on, for a publish of `qos` read at `received`: it
    /// continues the vehicle's `traceparent` when that is valid W3C trace context, and starts
    /// a new trace otherwise.
    pub(crate) fn frame(
        &self,
        received: Instant,
        qos: u8,
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
        // The frame's span id, random: it is also the draw that samples the frame.
        let span = exporter.ids.new_span_id();
        let sampled = u64::from_be_bytes(span.to_bytes()) < exporter.threshold;
        let trace = match &parent {
            Some(p) => Some(p.trace_id()),
            None => sampled.then(|| exporter.ids.new_trace_id()),
        };
        Some(Arc::new(FrameTrace {
            sampled,
            exporter: exporter.clone(),
            trace,
            span,
            parent: parent.map(|p| p.span_id()),
            received,
            qos,
            steps: Mutex::default(),
        }))
    }

    /// Exports what is left and stops the exporter, within `timeout`.
    pub async fn shutdown(&self, timeout: Duration) {
        if let Some(exporter) = &self.0 {
            telegate_kafka::trace::shutdown(exporter.provider.clone(), timeout).await;
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

/// One frame's trace while it is under way: its ids and, when it is sampled, the times of its
/// steps (an unsampled frame times only its writes and its failed deliveries).
#[derive(Debug)]
pub(crate) struct FrameTrace {
    exporter: Arc<Exporter>,
    /// The vehicle's trace, or a new one; made at export for a frame not sampled.
    trace: Option<TraceId>,
    /// The frame's own span.
    span: SpanId,
    /// The vehicle's span, when its publish carried trace context.
    parent: Option<SpanId>,
    sampled: bool,
    received: Instant,
    qos: u8,
    steps: Mutex<Steps>,
}

#[derive(Debug, Default)]
struct Steps {
    kind: Option<FrameKind>,
    validate: Option<(Instant, Instant)>,
    rejected: Option<RejectReason>,
    decide: Option<(Instant, Instant)>,
    /// Each routed purpose's index in the pack, and its verdict.
    verdicts: Vec<(usize, Verdict)>,
    /// One or two records a frame, as a rule: kept inline.
    records: SmallVec<[Produce; 2]>,
    writes: Vec<Write>,
    /// A copy of a frame already written: acknowledged with the first.
    copy: bool,
    /// The vehicle is offline: nothing of the frame is kept, its trace neither.
    offline: bool,
}

#[derive(Debug)]
struct Produce {
    /// The purpose's index in the pack; `None` for the frame's rejection record.
    purpose: Option<usize>,
    /// What its `traceparent` names (sampled frames): the record's own trace, if it has one
    /// (a subject form other than the VIN), and its production's span.
    named: Option<(Option<TraceId>, SpanId)>,
    /// Sampled frames: when it was handed to the producer.
    start: Option<Instant>,
    /// The delivery report: whether Kafka holds it, and when it came (sampled frames, and
    /// failures).
    report: Option<(bool, Option<Instant>)>,
}

#[derive(Debug)]
struct Write {
    name: &'static str,
    start: Instant,
    end: Option<(Instant, bool)>,
}

impl FrameTrace {
    fn steps(&self) -> std::sync::MutexGuard<'_, Steps> {
        self.steps.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Now, for a sampled frame's steps; `None` otherwise.
    pub(crate) fn clock(&self) -> Option<Instant> {
        self.sampled.then(Instant::now)
    }

    /// Validation ran from `start` ([`FrameTrace::clock`]) to now, and accepted a frame of
    /// `kind` or refused it.
    pub(crate) fn validated(
        &self,
        start: Option<Instant>,
        outcome: Result<FrameKind, RejectReason>,
    ) {
        let mut steps = self.steps();
        steps.validate = start.map(|start| (start, Instant::now()));
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

    /// Policy decided from `start` ([`FrameTrace::clock`]) to now: one verdict per routed
    /// purpose, kept for sampled frames.
    pub(crate) fn decided(&self, start: Option<Instant>, admission: &Admission) {
        if let Some(start) = start {
            let mut steps = self.steps();
            steps.decide = Some((start, Instant::now()));
            steps.verdicts.clone_from(&admission.verdicts);
        }
    }

    /// Notes `rec`, the record of the pack's `purpose` (`None`: the frame's rejection), and
    /// returns what its delivery report must tell the trace. A sampled frame's record gets
    /// its `traceparent`: a VIN-keyed record continues the frame's trace, any other starts
    /// its own. A record of a frame not sampled carries none: its trace is exported only if
    /// the frame fails, and no consumer would continue it.
    pub(crate) fn record(self: &Arc<Self>, rec: &mut OutRecord, purpose: Option<usize>) -> Report {
        let named = self.sampled.then(|| {
            let (own, span) = self.ids_of(purpose);
            rec.headers.push((
                telegate_kafka::trace::TRACEPARENT,
                traceparent(own.or(self.trace).unwrap_or(TraceId::INVALID), span, true),
            ));
            (own, span)
        });
        let index = {
            let mut steps = self.steps();
            steps.records.push(Produce {
                purpose,
                named,
                start: self.clock(),
                report: None,
            });
            steps.records.len() - 1
        };
        (self.clone(), index)
    }

    /// New ids for the production of the record of `purpose`: a trace of its own unless its
    /// subject is the VIN, and its span.
    fn ids_of(&self, purpose: Option<usize>) -> (Option<TraceId>, SpanId) {
        let joins =
            purpose.is_some_and(|p| self.exporter.pack.purposes[p].identity == Identity::Vin);
        let ids = &self.exporter.ids;
        ((!joins).then(|| ids.new_trace_id()), ids.new_span_id())
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
                start: Instant::now(),
                end: None,
            });
            steps.writes.len() - 1
        };
        let trace = self.clone();
        move |ok| trace.steps().writes[index].end = Some((Instant::now(), ok))
    }

    /// The frame's end, once everything it waited for has reported (the last reference is
    /// gone): acknowledged, or failed if a record or a write did not succeed. Its spans are
    /// exported if it was sampled, rejected or failed.
    fn finish(&self) {
        let steps = self.steps();
        if steps.offline {
            return;
        }
        let ok = steps
            .records
            .iter()
            .all(|r| matches!(r.report, Some((true, _))))
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
        self.export(&steps, Instant::now(), ok);
    }

    fn export(&self, steps: &Steps, end: Instant, ok: bool) {
        let tracer = &self.exporter.tracer;
        // The steps' instants on the wall clock spans carry.
        let (now, wall) = (Instant::now(), SystemTime::now());
        let at = |i: Instant| {
            wall.checked_sub(now.saturating_duration_since(i))
                .unwrap_or(wall)
        };
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
            KeyValue::new("mqtt.qos", i64::from(self.qos)),
            KeyValue::new("telegate.records", steps.records.len() as i64),
        ];
        if let Some(kind) = steps.kind {
            attributes.push(KeyValue::new("telegate.frame.kind", kind.as_str()));
        }
        if let Some(reason) = steps.rejected {
            attributes.push(KeyValue::new("telegate.reject_reason", reason.as_str()));
        }
        let trace = self
            .trace
            .unwrap_or_else(|| self.exporter.ids.new_trace_id());
        let parent = match self.parent {
            Some(vehicle) => context(trace, vehicle, true),
            None => Context::new(),
        };
        let mut frame = tracer.build_with_context(
            SpanBuilder {
                trace_id: Some(trace),
                span_id: Some(self.span),
                span_kind: Some(SpanKind::Consumer),
                start_time: Some(at(self.received)),
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
        let inside = context(trace, self.span, false);
        let child = |name: &'static str, (start, stop): (Instant, Instant), kv| {
            tracer
                .build_with_context(
                    SpanBuilder {
                        start_time: Some(at(start)),
                        attributes: Some(kv),
                        ..SpanBuilder::from_name(name)
                    },
                    &inside,
                )
                .end_with_timestamp(at(stop));
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
            for &(purpose, verdict) in &steps.verdicts {
                child("telegate.purpose", decide, self.verdict(purpose, verdict));
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
            let (held, stop) = match r.report {
                Some((held, reported)) => (held, reported.unwrap_or(end)),
                None => (false, end),
            };
            let mut kv = self.produced(r.purpose);
            kv.push(KeyValue::new("telegate.delivered", held));
            let (own, span) = r.named.unwrap_or_else(|| self.ids_of(r.purpose));
            let (cx, in_trace) = match own {
                Some(own) => (Context::new(), own),
                None => (inside.clone(), trace),
            };
            tracer
                .build_with_context(
                    SpanBuilder {
                        trace_id: Some(in_trace),
                        span_id: Some(span),
                        span_kind: Some(SpanKind::Producer),
                        start_time: Some(at(r.start.unwrap_or(self.received))),
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
                .end_with_timestamp(at(stop));
        }
        frame.end_with_timestamp(at(end));
    }
}

impl FrameTrace {
    /// A verdict's attributes: who decided what, in the pack's words.
    fn verdict(&self, purpose: usize, verdict: Verdict) -> Vec<KeyValue> {
        let pack = &self.exporter.pack;
        let purpose = &pack.purposes[purpose];
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
    }

    /// A record's production's attributes: its topic, purpose and subject form.
    fn produced(&self, purpose: Option<usize>) -> Vec<KeyValue> {
        let pack = &self.exporter.pack;
        let (topic, purpose, form) = match purpose.map(|p| &pack.purposes[p]) {
            Some(p) => (
                pack.service_of(p).topic.clone(),
                p.id.to_string(),
                p.identity.as_str(),
            ),
            None => (pack.rejected_topic.clone(), String::new(), "none"),
        };
        vec![
            KeyValue::new("messaging.system", "kafka"),
            KeyValue::new("messaging.operation.type", "send"),
            KeyValue::new("messaging.destination.name", topic),
            KeyValue::new("telegate.purpose", purpose),
            KeyValue::new("telegate.subject_form", form),
        ]
    }
}

impl Reported for FrameTrace {
    fn reported(&self, record: usize, delivered: bool) {
        let at = (self.sampled || !delivered).then(Instant::now);
        if let Some(r) = self.steps().records.get_mut(record) {
            r.report = Some((delivered, at));
        }
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

    use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};
    use telegate_frame::FrameKind;

    fn pack() -> Arc<Pack> {
        Arc::new(Pack::from_toml(crate::REFERENCE_PACK).expect("the reference pack"))
    }

    fn purpose(pack: &Pack, id: &str) -> usize {
        pack.purposes
            .iter()
            .position(|p| p.id.as_str() == id)
            .expect("a purpose of the pack")
    }

    /// Traces at `ratio` into memory, exported as each span ends.
    fn in_memory(ratio: f64) -> (Traces, InMemorySpanExporter) {
        let spans = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(spans.clone())
            .build();
        (Traces::exporting(provider, ratio, pack()), spans)
    }

    fn record(topic: &str) -> OutRecord {
        OutRecord {
            topic: topic.to_owned(),
            key: None,
            headers: Vec::new(),
            payload: Vec::new(),
        }
    }

    fn traceparent_of(rec: &OutRecord) -> SpanContext {
        let value = rec
            .header(telegate_kafka::trace::TRACEPARENT)
            .expect("a traceparent");
        parse_traceparent(value).expect("valid trace context")
    }

    fn attribute(span: &SpanData, key: &str) -> Option<String> {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.to_string())
    }

    /// The span called `name` among `spans`.
    fn named<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
        spans
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("{name} in {spans:#?}"))
    }

    /// What the sink does with a record's report when Kafka answers.
    fn reported((to, record): Report, delivered: bool) {
        to.reported(record, delivered);
    }

    fn finished(spans: &InMemorySpanExporter) -> Vec<SpanData> {
        spans.get_finished_spans().expect("spans")
    }

    #[test]
    fn an_unsampled_frame_is_exported_only_when_it_is_rejected_or_fails() {
        let (traces, spans) = in_memory(0.0);
        let pack = pack();
        let component = purpose(&pack, "component-status");
        let frame = |delivered: bool, offline: bool| {
            let t = traces.frame(Instant::now(), 1, None).expect("on");
            t.validated(t.clock(), Ok(FrameKind::Status));
            if offline {
                t.offline();
            }
            let mut rec = record("telegate.smart-service");
            let report = t.record(&mut rec, Some(component));
            assert_eq!(rec.header(telegate_kafka::trace::TRACEPARENT), None);
            reported(report, delivered);
        };
        frame(true, false);
        assert!(
            finished(&spans).is_empty(),
            "an acknowledged frame at ratio 0"
        );
        frame(false, true);
        assert!(
            finished(&spans).is_empty(),
            "a frame from an offline vehicle"
        );
        frame(false, false);
        let failed = finished(&spans);
        let span = |name| named(&failed, name);
        let root = span("telegate.frame");
        assert_eq!(
            attribute(root, "telegate.outcome").as_deref(),
            Some("failed")
        );
        assert_eq!(
            attribute(root, "telegate.sampled").as_deref(),
            Some("false")
        );
        assert!(matches!(root.status, Status::Error { .. }));
        let produce = span("telegate.produce");
        assert_eq!(
            attribute(produce, "telegate.delivered").as_deref(),
            Some("false")
        );
        assert_eq!(produce.parent_span_id, root.span_context.span_id());
        spans.reset();

        let t = traces.frame(Instant::now(), 1, None).expect("on");
        t.validated(t.clock(), Err(RejectReason::DecodeFailed));
        let mut rejection = record("telegate.rejected");
        reported(t.record(&mut rejection, None), true);
        drop(t);
        let rejected = finished(&spans);
        let root = named(&rejected, "telegate.frame");
        assert_eq!(
            attribute(root, "telegate.outcome").as_deref(),
            Some("rejected")
        );
        assert_eq!(
            attribute(root, "telegate.reject_reason").as_deref(),
            Some("decode-failed")
        );
        // The rejection record is in a trace of its own.
        assert_eq!(rejection.header(telegate_kafka::trace::TRACEPARENT), None);
        let produce = named(&rejected, "telegate.produce");
        assert_ne!(
            produce.span_context.trace_id(),
            root.span_context.trace_id()
        );
        assert_eq!(produce.parent_span_id, SpanId::INVALID);
    }

    #[test]
    fn a_vin_record_continues_the_vehicles_trace_and_any_other_starts_its_own() {
        let (traces, spans) = in_memory(1.0);
        let pack = pack();
        let vehicle = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let t = traces.frame(Instant::now(), 1, Some(vehicle)).expect("on");
        let [mut vin, mut trips] = [record("a"), record("b")];
        reported(
            t.record(&mut vin, Some(purpose(&pack, "component-status"))),
            true,
        );
        reported(t.record(&mut trips, Some(purpose(&pack, "trip-log"))), true);
        drop(t);
        let all = finished(&spans);
        let root = named(&all, "telegate.frame");
        let vehicle = parse_traceparent(vehicle).expect("valid");
        assert_eq!(root.span_context.trace_id(), vehicle.trace_id());
        assert_eq!(root.parent_span_id, vehicle.span_id());
        let (vin, trips) = (traceparent_of(&vin), traceparent_of(&trips));
        assert_eq!(vin.trace_id(), vehicle.trace_id());
        assert!(vin.is_sampled());
        assert_ne!(trips.trace_id(), vehicle.trace_id());
        let produced = |sc: &SpanContext| {
            all.iter()
                .find(|s| s.span_context.span_id() == sc.span_id())
                .expect("the record's production")
        };
        assert_eq!(produced(&vin).parent_span_id, root.span_context.span_id());
        assert_eq!(produced(&trips).parent_span_id, SpanId::INVALID);
        assert_eq!(produced(&trips).span_context.trace_id(), trips.trace_id());
        assert_eq!(
            attribute(produced(&trips), "telegate.subject_form").as_deref(),
            Some("pseudonym")
        );
        spans.reset();

        // Not trace context: a trace of the gateway's own.
        let t = traces
            .frame(Instant::now(), 1, Some("00-not-trace-context"))
            .expect("on");
        drop(t);
        let root = finished(&spans).pop().expect("the frame's span");
        assert_eq!(root.parent_span_id, SpanId::INVALID);
        assert_ne!(root.span_context.trace_id(), vehicle.trace_id());
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
