//! The consumer loop every reference service shares: group consumption, purpose check,
//! de-duplication on (subject, seq), outputs produced before the offset is committed, and a
//! JSON view written for people.

use crate::record::Record;
use anyhow::Context;
use opentelemetry::KeyValue;
use opentelemetry::trace::{Span as _, SpanBuilder, SpanKind, TraceContextExt, Tracer as _};
use opentelemetry_sdk::trace::SdkTracer;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};
use telegate_frame::now_ms;
use telegate_kafka::{KafkaConfig, LogWriter, ensure_topics};
use telegate_policy::TopicSpec;
use tokio::sync::watch;

/// One result a service emits: keyed by subject (or not), JSON value.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub key: Option<String>,
    pub value: serde_json::Value,
}

/// A reference service's logic; the runner does the Kafka part.
pub trait Service: Send {
    /// The `telegate-purpose` values this service may process; anything else is refused.
    fn purposes(&self) -> &[String];
    /// Works one record.
    fn handle(&mut self, record: &Record, now_ms: i64) -> Vec<Output>;
    /// Time-driven work (closing trips, expiring cases).
    fn tick(&mut self, now_ms: i64) -> Vec<Output>;
    /// What a person looks at: the service's current results.
    fn view(&self) -> serde_json::Value;
}

#[derive(Debug, Clone)]
pub struct RunnerConfig {
    pub kafka: KafkaConfig,
    pub group: String,
    pub inputs: Vec<String>,
    pub output: String,
    /// Where the view is written (atomically, every tick), if anywhere.
    pub view_file: Option<PathBuf>,
    pub tick: Duration,
    /// How long the output topic keeps results.
    pub output_retention: Duration,
    /// Where a new consumer group starts: the beginning of its topics, or their end.
    pub from_beginning: bool,
    /// Continues the traces records carry (`traceparent`, sampled): a span per record.
    pub tracer: Option<SdkTracer>,
}

/// What the runner did, live.
#[derive(Debug, Default)]
pub struct ConsumerStats {
    pub processed: AtomicU64,
    /// Records whose purpose is not this service's.
    pub refused: AtomicU64,
    pub duplicates: AtomicU64,
    pub malformed: AtomicU64,
    pub outputs: AtomicU64,
    /// The service's view as of the last tick.
    pub view: std::sync::Mutex<serde_json::Value>,
}

/// Sequence numbers seen per (purpose, subject); bounded per key.
#[derive(Debug, Default)]
struct Seen(HashMap<String, BTreeSet<u64>>);

const SEEN_PER_SUBJECT: usize = 4096;

impl Seen {
    /// True if (subject, seq) was seen before; records it otherwise.
    fn repeat(&mut self, subject: &str, seq: u64) -> bool {
        let set = self.0.entry(subject.to_owned()).or_default();
        if !set.insert(seq) {
            return true;
        }
        if set.len() > SEEN_PER_SUBJECT {
            set.pop_first();
        }
        false
    }
}

/// Runs `service` until `stop` fires; returns it with its final state.
pub async fn run<S: Service>(
    cfg: RunnerConfig,
    mut service: S,
    mut stop: watch::Receiver<bool>,
    stats: Arc<ConsumerStats>,
) -> anyhow::Result<S> {
    if cfg.kafka.manage_topics {
        ensure_topics(
            &cfg.kafka,
            &[TopicSpec {
                name: cfg.output.clone(),
                retention: cfg.output_retention,
                compact: false,
            }],
        )
        .await
        .context("output topic")?;
    }
    let writer = LogWriter::new(&cfg.kafka).context("output producer")?;
    let consumer: StreamConsumer = {
        let mut c = rdkafka::ClientConfig::new();
        c.set("bootstrap.servers", &cfg.kafka.bootstrap)
            .set("group.id", &cfg.group)
            .set("enable.auto.commit", "false")
            .set(
                "auto.offset.reset",
                if cfg.from_beginning {
                    "earliest"
                } else {
                    "latest"
                },
            )
            .set("fetch.wait.max.ms", "50");
        c.create().context("consumer")?
    };
    let inputs: Vec<&str> = cfg.inputs.iter().map(String::as_str).collect();
    consumer.subscribe(&inputs).context("subscribing")?;
    let refused_c =
        metrics::counter!("telegate_consumer_refused_total", "output" => cfg.output.clone());
    let mut seen = Seen::default();
    let mut tick = tokio::time::interval(cfg.tick);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tick.tick() => {
                for out in service.tick(now_ms()) {
                    emit(&writer, &cfg.output, &out, &stats).await?;
                }
                publish_view(&cfg, &stats, service.view())?;
            }
            msg = consumer.recv() => {
                let msg = match msg {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, "consumer error");
                        continue;
                    }
                };
                let received = SystemTime::now();
                let headers: Vec<(String, String)> = msg
                    .headers()
                    .map(|h| h.iter().map(|x| (x.key.to_owned(), String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned())).collect())
                    .unwrap_or_default();
                let outcome = match Record::parse(msg.topic(), msg.key(), &headers, msg.payload().unwrap_or_default()) {
                    Err(e) => {
                        stats.malformed.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, "record refused");
                        "malformed"
                    }
                    Ok(rec) if !service.purposes().contains(&rec.purpose) => {
                        stats.refused.fetch_add(1, Ordering::Relaxed);
                        refused_c.increment(1);
                        "refused"
                    }
                    Ok(rec) => {
                        // Per purpose: one frame reaches several purposes (a breakdown call's
                        // assistance and dealer copies) with the same subject and seq.
                        let repeat = match (&rec.subject, rec.seq) {
                            (Some(s), Some(q)) => seen.repeat(&format!("{}/{s}", rec.purpose), q),
                            _ => false,
                        };
                        if repeat {
                            stats.duplicates.fetch_add(1, Ordering::Relaxed);
                            "duplicate"
                        } else {
                            stats.processed.fetch_add(1, Ordering::Relaxed);
                            for out in service.handle(&rec, now_ms()) {
                                emit(&writer, &cfg.output, &out, &stats).await?;
                            }
                            "processed"
                        }
                    }
                };
                if let Some(tracer) = &cfg.tracer {
                    continue_trace(tracer, &cfg.group, msg.topic(), &headers, received, outcome);
                }
                // Only now is the record's work done: its results are in Kafka.
                consumer.commit_message(&msg, CommitMode::Async).context("commit")?;
            }
        }
    }
    for out in service.tick(now_ms()) {
        emit(&writer, &cfg.output, &out, &stats).await?;
    }
    publish_view(&cfg, &stats, service.view())?;
    // Commits go out asynchronously while running; on a clean stop the last ones must land,
    // or the group's next member would take those records again.
    if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
        tracing::debug!(error = %e, "nothing left to commit");
    }
    Ok(service)
}

/// The consumer's span of a record whose `traceparent` says it is sampled: from its receipt
/// until its work was done, a child of the gateway's span that produced it. Its attributes
/// name the topic, the group and what became of the record, nothing of its subject.
fn continue_trace(
    tracer: &SdkTracer,
    group: &str,
    topic: &str,
    headers: &[(String, String)],
    received: SystemTime,
    outcome: &'static str,
) {
    let Some(parent) = headers
        .iter()
        .find(|(name, _)| name == telegate_kafka::trace::TRACEPARENT)
        .and_then(|(_, value)| telegate_kafka::trace::parse_traceparent(value))
        .filter(|p| p.is_sampled())
    else {
        return;
    };
    let cx = opentelemetry::Context::new().with_remote_span_context(parent);
    tracer
        .build_with_context(
            SpanBuilder {
                span_kind: Some(SpanKind::Consumer),
                start_time: Some(received),
                attributes: Some(vec![
                    KeyValue::new("messaging.system", "kafka"),
                    KeyValue::new("messaging.operation.type", "process"),
                    KeyValue::new("messaging.destination.name", topic.to_owned()),
                    KeyValue::new("messaging.consumer.group.name", group.to_owned()),
                    KeyValue::new("telegate.outcome", outcome),
                ]),
                ..SpanBuilder::from_name("telegate.consume")
            },
            &cx,
        )
        .end();
}

async fn emit(
    writer: &LogWriter,
    topic: &str,
    out: &Output,
    stats: &ConsumerStats,
) -> anyhow::Result<()> {
    let value = serde_json::to_vec(&out.value)?;
    writer
        .put(topic, out.key.as_deref().map(str::as_bytes), Some(&value))
        .await?;
    stats.outputs.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Makes the view visible: in the stats, and in the view file if there is one.
fn publish_view(
    cfg: &RunnerConfig,
    stats: &ConsumerStats,
    view: serde_json::Value,
) -> anyhow::Result<()> {
    if let Some(path) = &cfg.view_file {
        write_view(path, &view)?;
    }
    if let Ok(mut v) = stats.view.lock() {
        *v = view;
    }
    Ok(())
}

fn write_view(path: &std::path::Path, view: &serde_json::Value) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(view)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn duplicates_are_per_subject() {
        let mut seen = super::Seen::default();
        assert!(!seen.repeat("a", 1));
        assert!(seen.repeat("a", 1));
        assert!(!seen.repeat("b", 1));
        assert!(!seen.repeat("a", 2));
    }
}
