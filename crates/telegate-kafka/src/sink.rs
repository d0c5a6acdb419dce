//! Producing and delivery tracking.

use crate::config::KafkaConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use telegate_policy::OutRecord;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

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

struct Pending {
    delivery: DeliveryFuture,
    topic: String,
    started: Instant,
    receipt: Option<Receipt>,
}

/// The producer plus a tracker task that awaits every delivery in order.
pub struct KafkaSink {
    producer: FutureProducer,
    pending: mpsc::Sender<Pending>,
    tracker: JoinHandle<()>,
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
    /// Creates the producer; must run inside a tokio runtime.
    pub fn new(cfg: &KafkaConfig) -> Result<Self, SinkError> {
        let producer: FutureProducer = cfg.producer_config().create().map_err(SinkError::Create)?;
        let (tx, rx) = mpsc::channel(cfg.max_in_flight.max(1));
        let stats = Arc::new(SinkStats::default());
        let tracker = tokio::spawn(track(rx, stats.clone()));
        Ok(Self {
            producer,
            pending: tx,
            tracker,
            stats,
        })
    }

    pub fn stats(&self) -> Arc<SinkStats> {
        self.stats.clone()
    }

    /// Hands one record to the producer; `receipt` (if any) completes only after Kafka has
    /// acknowledged it. Waits while librdkafka's queue is full or too many deliveries are
    /// outstanding: that wait is the pipeline's back-pressure.
    pub async fn send(&self, rec: &OutRecord, receipt: Option<&Receipt>) -> Result<(), SinkError> {
        let mut headers = OwnedHeaders::new_with_capacity(rec.headers.len());
        for (name, value) in &rec.headers {
            headers = headers.insert(Header {
                key: name,
                value: Some(value.as_bytes()),
            });
        }
        let mut record = FutureRecord::<[u8], [u8]>::to(&rec.topic)
            .payload(&rec.payload)
            .headers(headers);
        if let Some(key) = &rec.key {
            record = record.key(key);
        }
        let started = Instant::now();
        let mut backoff = Duration::from_micros(200);
        let delivery = loop {
            match self.producer.send_result(record) {
                Ok(d) => break d,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    metrics::counter!("telegate_kafka_queue_full_total").increment(1);
                    record = r;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(50));
                }
                Err((error, _)) => {
                    return Err(SinkError::Produce {
                        topic: rec.topic.clone(),
                        error,
                    });
                }
            }
        };
        self.pending
            .send(Pending {
                delivery,
                topic: rec.topic.clone(),
                started,
                receipt: receipt.cloned(),
            })
            .await
            .map_err(|_| SinkError::Closed)
    }

    /// Waits until every record handed over so far is delivered or has failed.
    pub async fn close(self, timeout: Duration) {
        let producer = self.producer.clone();
        let flushed = tokio::task::spawn_blocking(move || producer.flush(timeout)).await;
        if !matches!(flushed, Ok(Ok(()))) {
            tracing::warn!(
                "Kafka flush did not finish in {timeout:?}; undelivered records are counted as failed"
            );
        }
        drop(self.pending);
        let _ = self.tracker.await;
    }
}

async fn track(mut rx: mpsc::Receiver<Pending>, stats: Arc<SinkStats>) {
    while let Some(p) = rx.recv().await {
        let outcome = p.delivery.await;
        let latency = p.started.elapsed().as_secs_f64();
        match outcome {
            Ok(Ok(_)) => {
                stats.delivered.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("telegate_kafka_delivered_total", "topic" => p.topic)
                    .increment(1);
                metrics::histogram!("telegate_kafka_delivery_seconds").record(latency);
            }
            Ok(Err((error, _))) => {
                if let Some(r) = &p.receipt {
                    r.fail();
                }
                stats.failed.fetch_add(1, Ordering::Relaxed);
                let code = error
                    .rdkafka_error_code()
                    .map(|c| format!("{c:?}"))
                    .unwrap_or_else(|| "other".to_owned());
                tracing::error!(topic = %p.topic, %error, "Kafka did not take a record");
                metrics::counter!("telegate_kafka_delivery_failed_total", "topic" => p.topic, "error" => code)
                    .increment(1);
            }
            Err(_canceled) => {
                if let Some(r) = &p.receipt {
                    r.fail();
                }
                stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(topic = %p.topic, "producer dropped a record before delivery");
                metrics::counter!("telegate_kafka_delivery_failed_total", "topic" => p.topic, "error" => "canceled")
                    .increment(1);
            }
        }
    }
}
