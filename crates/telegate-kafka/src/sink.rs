//! Producing and delivery tracking: each record carries its receipt through librdkafka, and
//! the delivery report completes it on librdkafka's polling thread.

use crate::config::KafkaConfig;
use backon::{BackoffBuilder, ExponentialBuilder};
use metrics::{Counter, Histogram};
use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use telegate_policy::OutRecord;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot create the Kafka producer: {0}")]
    Create(KafkaError),
    #[error("Kafka refused a record for {topic}: {error}")]
    Produce { topic: String, error: KafkaError },
    #[error("the sink is shut down")]
    Closed,
}

/// Delivery counters (also exported as metrics).
#[derive(Debug, Default)]
pub struct SinkStats {
    delivered: AtomicU64,
    failed: AtomicU64,
}

impl SinkStats {
    /// Records Kafka acknowledged.
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }
    /// Records Kafka did not take within `message_timeout_ms`, or refused.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
}

/// Completes once every record sent with it has been acknowledged by Kafka, or has failed:
/// its callback runs when the last clone is dropped, with `true` only if nothing failed.
/// A frame's records share one receipt, so its PUBACK can wait for all of them.
#[derive(Clone)]
pub struct Receipt(Arc<ReceiptInner>);

/// What runs when a receipt completes.
type Done = Box<dyn FnOnce(bool) + Send>;

/// Hears of records' delivery reports: `record` is the number the sender gave with the record,
/// `delivered` whether Kafka holds it. Called on librdkafka's polling thread before the
/// record's part of its receipt completes; not called for a record purged without a report.
pub trait Reported: Send + Sync {
    fn reported(&self, record: usize, delivered: bool);
}

/// Who hears of one record's delivery report, and the record's number for it.
pub type Report = (Arc<dyn Reported>, usize);

struct ReceiptInner {
    failed: AtomicBool,
    done: Mutex<Option<Done>>,
}

impl Receipt {
    pub fn new(done: impl FnOnce(bool) + Send + 'static) -> Self {
        Self(Arc::new(ReceiptInner {
            failed: AtomicBool::new(false),
            done: Mutex::new(Some(Box::new(done))),
        }))
    }

    /// Something this receipt waits for did not happen: it completes with `false`.
    pub fn fail(&self) {
        self.0.failed.store(true, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Receipt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receipt")
            .field("failed", &self.0.failed.load(Ordering::Relaxed))
            .finish()
    }
}

impl Drop for ReceiptInner {
    fn drop(&mut self) {
        let done = self
            .done
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(done) = done {
            done(!self.failed.load(Ordering::Relaxed));
        }
    }
}

/// What travels with a record through librdkafka until its delivery report. Dropped without
/// a successful report (purged at shutdown, say), it fails its receipt: a frame is never
/// acknowledged for a record Kafka did not confirm.
struct Delivery {
    receipt: Option<Receipt>,
    report: Option<Report>,
    started: Instant,
    delivered: bool,
    /// Returned to the in-flight limit when the report has been handled.
    _slot: OwnedSemaphorePermit,
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if !self.delivered
            && let Some(r) = &self.receipt
        {
            r.fail();
        }
    }
}

/// Handles delivery reports on librdkafka's polling thread: counts them and completes each
/// record's receipt there, with no task, channel or future per record.
struct Reports {
    stats: Arc<SinkStats>,
    latency: Histogram,
    /// `telegate_kafka_delivered_total` by topic, registered once per topic.
    delivered: Mutex<HashMap<String, Counter>>,
}

impl ClientContext for Reports {}

impl ProducerContext for Reports {
    type DeliveryOpaque = Box<Delivery>;

    fn delivery(&self, result: &DeliveryResult<'_>, mut d: Box<Delivery>) {
        if let Some((to, record)) = d.report.take() {
            to.reported(record, result.is_ok());
        }
        match result {
            Ok(msg) => {
                d.delivered = true;
                self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                self.latency.record(d.started.elapsed().as_secs_f64());
                let topic = msg.topic();
                let mut counters = self.delivered.lock().unwrap_or_else(|p| p.into_inner());
                match counters.get(topic) {
                    Some(c) => c.increment(1),
                    None => {
                        let c = metrics::counter!("telegate_kafka_delivered_total", "topic" => topic.to_owned());
                        c.increment(1);
                        counters.insert(topic.to_owned(), c);
                    }
                }
            }
            Err((error, msg)) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                let topic = msg.topic().to_owned();
                let code = match error {
                    KafkaError::MessageProduction(RDKafkaErrorCode::PurgeQueue)
                    | KafkaError::MessageProduction(RDKafkaErrorCode::PurgeInflight) => {
                        tracing::error!(%topic, "producer dropped a record before delivery");
                        "canceled".to_owned()
                    }
                    error => {
                        tracing::error!(%topic, %error, "Kafka did not take a record");
                        error
                            .rdkafka_error_code()
                            .map(|c| format!("{c:?}"))
                            .unwrap_or_else(|| "other".to_owned())
                    }
                };
                metrics::counter!("telegate_kafka_delivery_failed_total", "topic" => topic, "error" => code)
                    .increment(1);
            }
        }
        // Dropping `d` completes its part of the receipt (failed unless delivered).
    }
}

/// The producer: librdkafka's own polling thread runs the delivery reports.
pub struct KafkaSink {
    producer: ThreadedProducer<Reports>,
    /// At most `max_in_flight` records handed over and not yet reported.
    in_flight: Arc<Semaphore>,
    stats: Arc<SinkStats>,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl KafkaSink {
    /// Creates the producer and its polling thread.
    pub fn new(cfg: &KafkaConfig) -> Result<Self, SinkError> {
        let stats = Arc::new(SinkStats::default());
        let reports = Reports {
            stats: stats.clone(),
            latency: metrics::histogram!("telegate_kafka_delivery_seconds"),
            delivered: Mutex::new(HashMap::new()),
        };
        let producer = cfg
            .producer_config()
            .create_with_context(reports)
            .map_err(SinkError::Create)?;
        Ok(Self {
            producer,
            in_flight: Arc::new(Semaphore::new(cfg.max_in_flight.max(1))),
            stats,
        })
    }

    pub fn stats(&self) -> Arc<SinkStats> {
        self.stats.clone()
    }

    /// Hands one record to the producer; `receipt` (if any) completes only after Kafka has
    /// acknowledged it. Waits while librdkafka's queue is full or too many deliveries are
    /// outstanding: that wait is the pipeline's back-pressure. `report`, if any, hears of the
    /// record's own delivery.
    pub async fn send(
        &self,
        rec: &OutRecord,
        receipt: Option<&Receipt>,
        report: Option<Report>,
    ) -> Result<(), SinkError> {
        let slot = self
            .in_flight
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| SinkError::Closed)?;
        let mut headers = OwnedHeaders::new_with_capacity(rec.headers.len());
        for (name, value) in &rec.headers {
            headers = headers.insert(Header {
                key: name,
                value: Some(value.as_bytes()),
            });
        }
        let delivery = Box::new(Delivery {
            receipt: receipt.cloned(),
            report,
            started: Instant::now(),
            delivered: false,
            _slot: slot,
        });
        let mut record =
            BaseRecord::<[u8], [u8], Box<Delivery>>::with_opaque_to(&rec.topic, delivery)
                .payload(&rec.payload)
                .headers(headers);
        if let Some(key) = &rec.key {
            record = record.key(key);
        }
        // A full queue is waited out (back-pressure, never eviction): 200 µs, doubling up to
        // 50 ms. The loop stays by hand as the producer hands the record back to try again.
        let mut waits = ExponentialBuilder::default()
            .with_min_delay(Duration::from_micros(200))
            .with_max_delay(Duration::from_millis(50))
            .without_max_times()
            .build();
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    metrics::counter!("telegate_kafka_queue_full_total").increment(1);
                    record = r;
                    let wait = waits.next().unwrap_or(Duration::from_millis(50));
                    tokio::time::sleep(wait).await;
                }
                // The record comes back with its delivery, which fails the receipt as it
                // is dropped here.
                Err((error, _)) => {
                    return Err(SinkError::Produce {
                        topic: rec.topic.clone(),
                        error,
                    });
                }
            }
        }
    }

    /// Waits until every record handed over so far is delivered or has failed: what Kafka
    /// has not confirmed within `timeout` is purged and its receipts fail.
    pub async fn close(self, timeout: Duration) {
        let producer = self.producer;
        let flushed = tokio::task::spawn_blocking(move || {
            let flushed = producer.flush(timeout);
            // Purges what is left and runs its reports before returning.
            drop(producer);
            flushed
        })
        .await;
        if !matches!(flushed, Ok(Ok(()))) {
            tracing::warn!(
                "Kafka flush did not finish in {timeout:?}; undelivered records are counted as failed"
            );
        }
    }
}
