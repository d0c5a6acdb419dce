//! The per-frame path between ingress and sink: validate, decide for each purpose, shape,
//! hand to Kafka. Every outcome is counted with a bounded label; the counters are
//! registered once, so the hot path never allocates a label.

use crate::frame_stats::FrameStats;
use crate::ledger::{Action, Change, Channel, Ledger};
use crate::resends::{Claim, Resends};
use crate::state::{StateStore, fresh_secret};
use crate::traces::{FrameTrace, Traces};
use dashmap::DashSet;
use metrics::Counter;
use std::sync::Arc;
use std::time::Duration;
use telegate_frame::now_ms;
use telegate_frame::pb::vehicle_frame::Body;
use telegate_frame::{Frame, RejectReason, Rejection, ValidationConfig, Vin, validate};
use telegate_kafka::{KafkaSink, Receipt};
use telegate_mqtt::{Ack, AckOutcome, Denied, Incoming, VehicleMemo};
use telegate_policy::{
    Admission, Keyring, OutRecord, Outcome, Pack, StateKey, Verdict, admit, offline,
    recorded_settings, rejected_record,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Everything the pipeline needs, built once.
#[derive(Debug)]
pub struct Pipeline {
    pack: Arc<Pack>,
    label: String,
    keys: Keyring,
    validation: ValidationConfig,
    state: Arc<StateStore>,
    ledger: Arc<Ledger>,
    sink: KafkaSink,
    /// What became of the frames, by kind, verdict and purpose; shared with the gateway's readers.
    frames: Arc<FrameStats>,
    counters: Counters,
    /// Vehicles whose last settings change is not known to be in the state topic and the
    /// consent ledger (a write failed, so the frame was not acknowledged): the vehicle's
    /// resend repeats settings already recorded here, and is written again instead of being
    /// taken as a repeat. At most one entry per vehicle.
    unconfirmed: Arc<DashSet<StateKey>>,
    /// QoS 1 frames of each vehicle that Kafka holds or is being given, by seq: a frame sent
    /// again is acknowledged, not written twice.
    resends: Arc<Resends>,
    /// The state and ledger writes frames wait for, off the pipeline's path; awaited before
    /// the sink is flushed at the end.
    writes: TaskTracker,
    /// Off unless an OTLP endpoint is configured.
    traces: Traces,
}

/// How long a vehicle's recent frames are remembered after its last one.
const RESENDS_IDLE: Duration = Duration::from_secs(600);

/// The pipeline's other counters: errors, settings frames, resent copies (`/metrics` only).
#[derive(Debug)]
struct Counters {
    /// Rejections whose record was withheld because the vehicle was offline.
    rejected_offline: Counter,
    sink_errors: Counter,
    ledger_errors: Counter,
    state_errors: Counter,
    /// Privacy frames by what they did to the settings: `changed` or `repeated`.
    settings_changed: Counter,
    settings_repeated: Counter,
    /// Per-service toggles not kept because the pack does not name them.
    toggles_ignored: Counter,
    /// QoS 1 frames sent again whose first copy Kafka held or was being given: acknowledged
    /// with it, not written again.
    copies: Counter,
}

impl Counters {
    fn register() -> Self {
        Self {
            rejected_offline: metrics::counter!("telegate_rejected_withheld_offline_total"),
            sink_errors: metrics::counter!("telegate_sink_errors_total"),
            ledger_errors: metrics::counter!("telegate_ledger_write_errors_total"),
            state_errors: metrics::counter!("telegate_state_write_errors_total"),
            settings_changed: metrics::counter!("telegate_settings_frames_total", "result" => "changed"),
            settings_repeated: metrics::counter!("telegate_settings_frames_total", "result" => "repeated"),
            toggles_ignored: metrics::counter!("telegate_settings_toggles_ignored_total"),
            copies: metrics::counter!("telegate_frames_resent_total"),
        }
    }
}

impl Pipeline {
    pub fn new(
        pack: Arc<Pack>,
        keys: Keyring,
        validation: ValidationConfig,
        state: Arc<StateStore>,
        ledger: Arc<Ledger>,
        sink: KafkaSink,
    ) -> Self {
        Self {
            frames: Arc::new(FrameStats::register(&pack)),
            label: pack.label(),
            pack,
            keys,
            validation,
            state,
            ledger,
            sink,
            counters: Counters::register(),
            unconfirmed: Arc::default(),
            resends: Arc::new(Resends::new(RESENDS_IDLE)),
            writes: TaskTracker::new(),
            traces: Traces::default(),
        }
    }

    /// What the pipeline made of the frames, by kind, verdict and purpose.
    pub fn frame_stats(&self) -> Arc<FrameStats> {
        self.frames.clone()
    }

    /// Traces frames through `traces` (off by default).
    pub fn with_traces(mut self, traces: Traces) -> Self {
        self.traces = traces;
        self
    }

    /// Processes frames until `stop` is cancelled or ingress closes, then drains what already
    /// arrived, waits for the state and ledger writes under way and flushes Kafka, all within
    /// `flush_timeout`.
    pub async fn run(
        self,
        mut rx: mpsc::Receiver<Incoming>,
        stop: CancellationToken,
        flush_timeout: Duration,
    ) {
        let mut sweep = tokio::time::interval(RESENDS_IDLE / 4);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                m = rx.recv() => match m {
                    Some(m) => self.process(m).await,
                    None => break,
                },
                _ = sweep.tick() => self.resends.sweep(now_ms()),
            }
        }
        rx.close();
        while let Ok(m) = rx.try_recv() {
            self.process(m).await;
        }
        self.writes.close();
        let deadline = tokio::time::Instant::now() + flush_timeout;
        if tokio::time::timeout_at(deadline, self.writes.wait())
            .await
            .is_err()
        {
            tracing::error!(
                writes = self.writes.len(),
                "state or ledger writes still under way at shutdown; their frames are not acknowledged"
            );
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.sink.close(left).await;
    }

    /// One MQTT message, start to finish. A QoS 1 frame's acknowledgement completes once
    /// Kafka has acknowledged every record it produced (its rejection record included) and
    /// the state change it caused is in `telegate.consent-state`; at once when nothing is to
    /// be written. Anything that failed on the way makes it a failure.
    ///
    /// A QoS 1 frame sent again (same vehicle and seq) whose first copy Kafka holds or is
    /// being given is acknowledged with it and not written again. A publish the edge refused
    /// ([`Incoming::denied`]) becomes its rejection record only.
    pub async fn process(&self, m: Incoming) {
        let Incoming {
            topic,
            payload,
            ack,
            denied,
            memo,
            received,
            traceparent,
        } = m;
        let now = now_ms();
        let trace = self
            .traces
            .frame(received, u8::from(ack.is_some()), traceparent.as_deref());
        let trace = trace.as_ref();
        if let Some(denied) = denied {
            let rejection = refused_at_the_edge(denied);
            trace.inspect(|t| t.refused_at_the_edge());
            let receipt = ack.map(receipt);
            return finish(
                self.reject(&rejection, payload.len(), now, receipt.as_ref(), trace)
                    .await,
                receipt,
            );
        }
        // A topic that is not UTF-8 cannot be a vehicle topic; it fails as malformed.
        let topic = std::str::from_utf8(&topic).unwrap_or_default();
        let started = trace.and_then(|t| t.clock());
        let validated = validate(topic, &payload, now, &self.validation);
        if let Some(t) = trace {
            t.validated(
                started,
                validated.as_ref().map(|f| f.kind()).map_err(|r| r.reason),
            );
        }
        match validated {
            Ok(frame) => {
                let receipt = match ack {
                    None => None,
                    Some(ack) => match self.resends.claim(*frame.vin(), frame.seq(), ack, now) {
                        Claim::New(receipt) => Some(receipt),
                        Claim::Copy => {
                            trace.inspect(|t| t.copy());
                            return self.counters.copies.increment(1);
                        }
                    },
                };
                let key = self.state_key(&frame, memo.as_deref());
                finish(
                    self.accept(&frame, key, now, receipt.as_ref(), trace).await,
                    receipt,
                );
            }
            Err(rej) => {
                let receipt = ack.map(receipt);
                finish(
                    self.reject(&rej, payload.len(), now, receipt.as_ref(), trace)
                        .await,
                    receipt,
                );
            }
        }
    }

    /// Decides for a valid frame and hands its records to Kafka, each with the frame's
    /// receipt; false if something could not be handed over.
    async fn accept(
        &self,
        frame: &Frame,
        key: StateKey,
        now: i64,
        receipt: Option<&Receipt>,
        trace: Option<&Arc<FrameTrace>>,
    ) -> bool {
        let started = trace.and_then(|t| t.clock());
        let mut admission = self.admit(frame, key, now);
        if let Some(t) = trace {
            t.decided(started, &admission);
            if admission.outcome == Outcome::Offline {
                t.offline();
            }
        }
        // A repeat of settings already in force changes nothing, unless the change
        // it repeats was never confirmed written.
        let settings = match frame.body() {
            Body::Privacy(_) if admission.changes.settings => true,
            Body::Privacy(_) => self.unconfirmed.remove(&key).is_some(),
            _ => false,
        };
        if admission.changes.any() || settings {
            self.persist_state(key, receipt.cloned(), trace);
        }
        let mut handed = true;
        // One record per forwarded purpose, in the verdicts' order; only a traced frame's
        // records need to know which.
        let mut forwarded = admission
            .verdicts
            .iter()
            .filter(|(_, v)| matches!(v, Verdict::Forward(_)))
            .map(|&(purpose, _)| purpose);
        for rec in &mut admission.records {
            let purpose = trace.and_then(|_| forwarded.next());
            handed &= self.send(rec, purpose, receipt, trace).await;
        }
        if settings {
            self.record_settings_change(frame, receipt.cloned(), trace);
        }
        handed
    }

    /// Counts a refused frame and hands its rejection record to Kafka with the frame's
    /// receipt; false if it could not be handed over.
    async fn reject(
        &self,
        rej: &Rejection,
        payload_bytes: usize,
        now: i64,
        receipt: Option<&Receipt>,
        trace: Option<&Arc<FrameTrace>>,
    ) -> bool {
        self.frames.count_rejected(rej.reason);
        // Offline mode means nothing of the frame is kept, not even its rejection.
        let vin = rej.subject.as_deref().and_then(|s| Vin::parse(s).ok());
        let at = rej.captured_at_ms.unwrap_or(now);
        if vin.is_some_and(|v| self.state.with(&v, |s| offline(at, s).is_some())) {
            self.counters.rejected_offline.increment(1);
            trace.inspect(|t| t.offline());
            return true;
        }
        let mut rec = rejected_record(&self.pack, &self.label, rej, now, payload_bytes, &self.keys);
        self.send(&mut rec, None, receipt, trace).await
    }

    /// The name of the frame's vehicle's record: a keyed hash of the VIN, derived once per
    /// connection and kept in its memo when the connection has one.
    fn state_key(&self, frame: &Frame, memo: Option<&VehicleMemo>) -> StateKey {
        let derive = || self.state.key_of(frame.vin());
        match memo {
            Some(memo) => {
                StateKey::from_bytes(memo.get_or_derive(frame.vin(), || derive().to_bytes()))
            }
            None => derive(),
        }
    }

    /// What policy makes of a valid frame, in one access to the vehicle's state, counted.
    /// Synchronous: the state lock is never held across an await.
    pub fn admit(&self, frame: &Frame, key: StateKey, now: i64) -> Admission {
        let horizon = now - self.validation.max_age_ms;
        let admission = self.state.admit(key, |record| {
            admit(
                &self.pack,
                &self.label,
                &self.keys,
                frame,
                record,
                horizon,
                fresh_secret,
            )
        });
        let kind = frame.kind();
        self.frames.count_valid(kind);
        if matches!(frame.body(), Body::Privacy(_)) {
            match admission.changes.settings {
                true => self.counters.settings_changed.increment(1),
                false => self.counters.settings_repeated.increment(1),
            }
            self.counters
                .toggles_ignored
                .increment(admission.toggles_ignored as u64);
        }
        match admission.outcome {
            Outcome::Offline => self.frames.count_offline(),
            Outcome::Unrouted => self.frames.count_unrouted(kind),
            Outcome::Routed => {
                for &(purpose, verdict) in &admission.verdicts {
                    match verdict {
                        Verdict::Forward(_) => self.frames.count_forwarded(purpose),
                        Verdict::Drop(reason) => self.frames.count_dropped(purpose, reason),
                    }
                }
            }
        }
        admission
    }

    /// Settings changes made in the vehicle go to the consent ledger like any other, as
    /// recorded (the toggles the pack names); a repeat is no change and no entry. Off the
    /// pipeline's path like the state write: the frame's receipt waits for it, other
    /// vehicles' frames do not.
    fn record_settings_change(
        &self,
        frame: &Frame,
        receipt: Option<Receipt>,
        trace: Option<&Arc<FrameTrace>>,
    ) {
        let Body::Privacy(settings) = frame.body() else {
            return;
        };
        let change = Change {
            action: Action::Settings,
            target: "",
            value: serde_json::to_value(recorded_settings(&self.pack, settings))
                .unwrap_or_default(),
            effective_at_ms: frame.captured_at_ms(),
            channel: Channel::HeadUnit,
            text_version: "",
            actor: "vehicle",
            reason: "",
        };
        let (ledger, state, vin) = (self.ledger.clone(), self.state.clone(), *frame.vin());
        let (errors, unconfirmed) = (
            self.counters.ledger_errors.clone(),
            self.unconfirmed.clone(),
        );
        let traced = trace.map(|t| t.write("telegate.ledger_write"));
        self.writes.spawn(async move {
            let written = ledger.append(&vin, change).await;
            if let Some(end) = traced {
                end(written.is_ok());
            }
            if let Err(e) = written {
                errors.increment(1);
                unconfirmed.insert(state.key_of(&vin));
                tracing::error!(error = %e, "settings change not written to the consent ledger");
                if let Some(r) = receipt {
                    r.fail();
                }
            }
        });
    }

    /// Writes the vehicle's changed state now, off the pipeline's path; the frame's receipt
    /// waits for it (a crash must not forget that offline mode went on). A vehicle has one
    /// write in flight at a time: frames that changed its record meanwhile wait for the next
    /// one, which covers them all ([`StateStore::persist`]).
    fn persist_state(
        &self,
        key: StateKey,
        receipt: Option<Receipt>,
        trace: Option<&Arc<FrameTrace>>,
    ) {
        let state = self.state.clone();
        let errors = self.counters.state_errors.clone();
        let unconfirmed = self.unconfirmed.clone();
        let traced = trace.map(|t| t.write("telegate.state_write"));
        self.writes.spawn(async move {
            let written = state.persist(key).await;
            if let Some(end) = traced {
                end(written.is_ok());
            }
            if let Err(e) = written {
                errors.increment(1);
                unconfirmed.insert(key);
                tracing::error!(error = %e, "state change not yet durable; the frame is not acknowledged");
                if let Some(r) = receipt {
                    r.fail();
                }
            }
        });
    }

    /// Hands `rec`, the record of the pack's `purpose` (`None`: a rejection), to Kafka; a
    /// traced frame's record gets its `traceparent` first.
    async fn send(
        &self,
        rec: &mut OutRecord,
        purpose: Option<usize>,
        receipt: Option<&Receipt>,
        trace: Option<&Arc<FrameTrace>>,
    ) -> bool {
        let report = trace.map(|t| t.record(rec, purpose));
        match self.sink.send(rec, receipt, report).await {
            Ok(_) => true,
            Err(e) => {
                self.counters.sink_errors.increment(1);
                tracing::error!(error = %e, "record not handed to Kafka");
                false
            }
        }
    }
}

/// A receipt that completes `ack`: accepted once every record is written, failed otherwise.
fn receipt(ack: Ack) -> Receipt {
    Receipt::new(move |ok| ack.complete(AckOutcome::of_delivery(ok)))
}

/// A frame whose records could not all be handed over fails its receipt.
fn finish(handed: bool, receipt: Option<Receipt>) {
    if !handed && let Some(r) = &receipt {
        r.fail();
    }
}

/// The rejection of a publish the edge refused: who sent it is kept only as the keyed hash
/// every rejection carries; the topic and payload are not kept.
fn refused_at_the_edge(denied: Denied) -> Rejection {
    Rejection {
        reason: RejectReason::TopicNotPermitted,
        detail: "topic",
        kind: None,
        captured_at_ms: None,
        subject: denied.by.map(|v| v.expose().to_owned()),
    }
}
