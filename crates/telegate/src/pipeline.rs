//! The per-frame path between ingress and sink: validate, decide for each purpose, shape,
//! hand to Kafka. Every outcome is counted with a bounded label; the counters are
//! registered once, so the hot path never allocates a label.

use metrics::Counter;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use telegate_frame::{FrameKind, RejectReason, ValidationConfig, validate};
use telegate_kafka::KafkaSink;
use telegate_mqtt::Incoming;
use telegate_policy::{
    DropReason, Keyring, NoConsents, OutRecord, Pack, Verdict, decide_all, rejected_record, shape,
};
use tokio::sync::{mpsc, watch};

/// Everything the pipeline needs, built once.
#[derive(Debug)]
pub struct Pipeline {
    pack: Arc<Pack>,
    label: String,
    keys: Keyring,
    validation: ValidationConfig,
    sink: KafkaSink,
    counters: Counters,
}

#[derive(Debug)]
struct Counters {
    valid: Vec<Counter>,
    unrouted: Vec<Counter>,
    rejected: Vec<Counter>,
    /// Per purpose index.
    forwarded: Vec<Counter>,
    /// Per purpose index, then per drop reason.
    dropped: Vec<Vec<Counter>>,
    sink_errors: Counter,
}

impl Counters {
    fn register(pack: &Pack) -> Self {
        let per_kind = |name: &'static str| {
            FrameKind::ALL
                .iter()
                .map(|k| metrics::counter!(name, "kind" => k.as_str()))
                .collect()
        };
        let purpose_labels = |p: &telegate_policy::Purpose| {
            [
                ("service", pack.service_of(p).id.to_string()),
                ("purpose", p.id.to_string()),
            ]
        };
        Self {
            valid: per_kind("telegate_frames_valid_total"),
            unrouted: per_kind("telegate_frames_unrouted_total"),
            rejected: RejectReason::ALL
                .iter()
                .map(
                    |r| metrics::counter!("telegate_frames_rejected_total", "reason" => r.as_str()),
                )
                .collect(),
            forwarded: pack
                .purposes
                .iter()
                .map(|p| metrics::counter!("telegate_records_forwarded_total", &purpose_labels(p)))
                .collect(),
            dropped: pack
                .purposes
                .iter()
                .map(|p| {
                    DropReason::ALL
                        .iter()
                        .map(|r| {
                            let mut labels = purpose_labels(p).to_vec();
                            labels.push(("reason", r.as_str().to_owned()));
                            metrics::counter!("telegate_records_dropped_total", &labels)
                        })
                        .collect()
                })
                .collect(),
            sink_errors: metrics::counter!("telegate_sink_errors_total"),
        }
    }
}

fn index_of<T: PartialEq>(all: &[T], x: T) -> usize {
    all.iter().position(|a| *a == x).unwrap_or_default()
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

impl Pipeline {
    pub fn new(
        pack: Arc<Pack>,
        keys: Keyring,
        validation: ValidationConfig,
        sink: KafkaSink,
    ) -> Self {
        let counters = Counters::register(&pack);
        Self {
            label: pack.label(),
            pack,
            keys,
            validation,
            sink,
            counters,
        }
    }

    /// Processes frames until `stop` fires or ingress closes, then drains what already
    /// arrived and flushes Kafka.
    pub async fn run(
        self,
        mut rx: mpsc::Receiver<Incoming>,
        mut stop: watch::Receiver<bool>,
        flush_timeout: Duration,
    ) {
        loop {
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                m = rx.recv() => match m {
                    Some(m) => self.process(&m).await,
                    None => break,
                },
            }
        }
        rx.close();
        while let Ok(m) = rx.try_recv() {
            self.process(&m).await;
        }
        self.sink.close(flush_timeout).await;
    }

    /// One MQTT message, start to finish.
    pub async fn process(&self, m: &Incoming) {
        let now = now_ms();
        // A topic that is not UTF-8 cannot be a vehicle topic; it fails as malformed.
        let topic = std::str::from_utf8(&m.topic).unwrap_or_default();
        let frame = match validate(topic, &m.payload, now, &self.validation) {
            Ok(f) => f,
            Err(rej) => {
                self.counters.rejected[index_of(&RejectReason::ALL, rej.reason)].increment(1);
                let rec = rejected_record(&self.label, &rej, now, m.payload.len(), &self.keys);
                self.send(&rec).await;
                return;
            }
        };
        let kind = frame.kind().index();
        self.counters.valid[kind].increment(1);
        let mut routed = false;
        for (purpose, verdict) in decide_all(&self.pack, &frame, &NoConsents) {
            routed = true;
            match verdict {
                Verdict::Forward(consent) => {
                    let rec = shape(
                        &self.pack,
                        &self.label,
                        &frame,
                        purpose,
                        consent,
                        &self.keys,
                    );
                    self.counters.forwarded[purpose.index].increment(1);
                    self.send(&rec).await;
                }
                Verdict::Drop(reason) => {
                    self.counters.dropped[purpose.index][index_of(&DropReason::ALL, reason)]
                        .increment(1);
                }
            }
        }
        if !routed {
            self.counters.unrouted[kind].increment(1);
        }
    }

    async fn send(&self, rec: &OutRecord) {
        if let Err(e) = self.sink.send(rec).await {
            self.counters.sink_errors.increment(1);
            tracing::error!(error = %e, "record not handed to Kafka");
        }
    }
}
