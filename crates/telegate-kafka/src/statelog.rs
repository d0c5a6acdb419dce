//! Replicated keyed state over Kafka: every instance reads a (compacted) topic in full at
//! start, is told when it has caught up, and then follows new records; writes wait for the
//! broker's acknowledgement. Also used for append-only topics (the consent ledger). Knows
//! nothing of what the records mean.

use crate::config::KafkaConfig;
use crate::sink::SinkError;
use backon::{BlockingRetryable, ConstantBuilder};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// One record of a followed topic; `value: None` is a tombstone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
    /// Broker timestamp (ms), when the broker gave one.
    pub timestamp_ms: Option<i64>,
}

/// Writes records and waits for each to be acknowledged (acks=all, idempotent).
#[derive(Clone)]
pub struct LogWriter {
    producer: FutureProducer,
}

impl std::fmt::Debug for LogWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogWriter").finish_non_exhaustive()
    }
}

impl LogWriter {
    pub fn new(cfg: &KafkaConfig) -> Result<Self, SinkError> {
        let mut c = cfg.producer_config();
        // State writes are rare and someone waits for each: no batching delay.
        c.set("linger.ms", "0");
        Ok(Self {
            producer: c.create().map_err(SinkError::Create)?,
        })
    }

    /// Writes `value` (or a tombstone) under `key` (or none) and returns once Kafka has it.
    pub async fn put(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Result<(), SinkError> {
        let mut record = FutureRecord::<[u8], [u8]>::to(topic);
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(v) = value {
            record = record.payload(v);
        }
        self.producer
            .send(record, Duration::from_secs(10))
            .await
            .map(|_| ())
            .map_err(|(error, _)| SinkError::Produce {
                topic: topic.to_owned(),
                error,
            })
    }
}

/// The key of every roll marker ([`LogWriter::roll`]) starts with this. No record of
/// telegate's has such a key: a state key is 32 hex digits, a VIN 17 letters and digits.
const ROLL_MARKER: &[u8] = b"__telegate.roll.";

/// True for the key of a roll marker: [`follow`] and [`scan`] never return one, and any other
/// reader of a topic [`LogWriter::roll`] writes to must skip it.
pub fn is_roll_marker(key: &[u8]) -> bool {
    key.starts_with(ROLL_MARKER)
}

/// The key of partition `partition`'s roll marker: one key per partition, so that compaction
/// keeps at most one marker in each.
pub fn roll_marker(partition: i32) -> Vec<u8> {
    let mut key = ROLL_MARKER.to_vec();
    key.extend_from_slice(partition.to_string().as_bytes());
    key
}

impl LogWriter {
    /// The partitions of `topic` as the cluster reports them now. The metadata request blocks,
    /// so it runs on tokio's blocking pool; it gives up after 5 s.
    pub async fn partitions(&self, topic: &str) -> Result<Vec<i32>, SinkError> {
        let producer = self.producer.clone();
        let name = topic.to_owned();
        let found = tokio::task::spawn_blocking(move || {
            let metadata = producer
                .client()
                .fetch_metadata(Some(&name), Duration::from_secs(5))?;
            Ok::<_, KafkaError>(partitions_in(&metadata, &name))
        })
        .await
        .map_err(|_| SinkError::Closed)?;
        match found {
            Ok(partitions) if !partitions.is_empty() => Ok(partitions),
            Ok(_) => Err(KafkaError::MetadataFetch(
                RDKafkaErrorCode::UnknownTopicOrPartition,
            )),
            Err(error) => Err(error),
        }
        .map_err(|error| SinkError::Produce {
            topic: topic.to_owned(),
            error,
        })
    }

    /// Appends a roll marker, a tombstone under a reserved key ([`roll_marker`]), to each of
    /// `partitions` of `topic`, produced to that partition explicitly, and returns once Kafka
    /// has them all.
    ///
    /// Why: Kafka closes a segment only when a record is appended after `segment.ms`, and its
    /// log cleaner never touches the open segment. An erasure's tombstone removes the erased
    /// record only once the segment holding the tombstone is closed, so on a partition nothing
    /// else is written to, the erased record would stay for good. Calling this more often than
    /// `segment.ms` keeps every partition's segments closing on time. Several writers calling it
    /// at once only close a segment sooner; compaction keeps one marker per partition.
    pub async fn roll(&self, topic: &str, partitions: &[i32]) -> Result<(), SinkError> {
        let produce_error = |error| SinkError::Produce {
            topic: topic.to_owned(),
            error,
        };
        // All in flight at once: one partition whose leader is away delays none of the others.
        let mut deliveries = Vec::with_capacity(partitions.len());
        for p in partitions {
            let key = roll_marker(*p);
            let record = FutureRecord::<[u8], [u8]>::to(topic)
                .partition(*p)
                .key(&key[..]);
            deliveries.push(
                self.producer
                    .send_result(record)
                    .map_err(|(error, _)| produce_error(error))?,
            );
        }
        for delivery in deliveries {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((error, _))) => return Err(produce_error(error)),
                Err(_) => return Err(SinkError::Closed),
            }
        }
        Ok(())
    }
}

/// Who runs a follower ([`follow`]): its task is spawned on `tasks` and ends when `stop` is
/// cancelled (or its receiver is dropped).
#[derive(Debug, Clone, Copy)]
pub struct Run<'a> {
    pub tasks: &'a TaskTracker,
    pub stop: &'a CancellationToken,
}

/// Reads `topic` from its beginning and keeps following it until told to stop; roll markers
/// ([`LogWriter::roll`]) are skipped. `caught_up` turns true once every partition has been
/// read to the end it had when following began.
pub fn follow(
    cfg: &KafkaConfig,
    topic: &str,
    capacity: usize,
    run: Run<'_>,
) -> Result<(mpsc::Receiver<Entry>, watch::Receiver<bool>), KafkaError> {
    follow_from(cfg, topic, Start::Beginning, capacity, run)
}

/// [`follow`] from `start`: with [`Start::End`], only the records written from now on (a
/// topic of messages rather than of state).
pub fn follow_from(
    cfg: &KafkaConfig,
    topic: &str,
    start: Start,
    capacity: usize,
    run: Run<'_>,
) -> Result<(mpsc::Receiver<Entry>, watch::Receiver<bool>), KafkaError> {
    // Each instance reads everything itself: no group assignment, nothing committed.
    let (consumer, partitions) = assigned_consumer(cfg, topic, start)?;
    let (tx, rx) = mpsc::channel(capacity);
    let (caught_up_tx, caught_up) = watch::channel(partitions.is_empty());
    let topic = topic.to_owned();
    let stop = run.stop.clone();
    run.tasks.spawn(async move {
        let mut pending: BTreeSet<i32> = partitions.into_iter().collect();
        loop {
            let next = tokio::select! {
                () = stop.cancelled() => return,
                next = consumer.recv() => next,
            };
            match next {
                Ok(m) if is_roll_marker(m.key().unwrap_or_default()) => {}
                Ok(m) => {
                    let entry = Entry {
                        key: m.key().unwrap_or_default().to_vec(),
                        value: m.payload().map(<[u8]>::to_vec),
                        timestamp_ms: m.timestamp().to_millis(),
                    };
                    let sent = tokio::select! {
                        () = stop.cancelled() => return,
                        sent = tx.send(entry) => sent,
                    };
                    if sent.is_err() {
                        return;
                    }
                }
                Err(KafkaError::PartitionEOF(p)) => {
                    if pending.remove(&p) && pending.is_empty() {
                        let _ = caught_up_tx.send(true);
                    }
                }
                Err(e) => {
                    tracing::warn!(%topic, error = %e, "following a state topic");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    });
    Ok((rx, caught_up))
}

/// A record found by [`scan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scanned {
    pub key: Vec<u8>,
    pub headers: Vec<(String, String)>,
    pub value: Option<Vec<u8>>,
}

/// Reads `topic` from its beginning to the end it has now and returns the records whose key
/// `keep` accepts; never a roll marker ([`LogWriter::roll`]). For exports and audits: it reads
/// everything, so it is not for hot paths.
pub async fn scan(
    cfg: &KafkaConfig,
    topic: &str,
    keep: impl Fn(&[u8]) -> bool,
) -> Result<Vec<Scanned>, KafkaError> {
    use rdkafka::message::Headers;
    let (consumer, partitions) = assigned_consumer(cfg, topic, Start::Beginning)?;
    let mut pending: BTreeSet<i32> = partitions.into_iter().collect();
    let mut out = Vec::new();
    while !pending.is_empty() {
        // A broker that is down (a node of the cluster killed, a leader moving) shows as
        // errors the consumer recovers from; only 30 s without progress ends the scan, and
        // then as an error: a scan never returns part of a topic as if it were all of it.
        match tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await {
            Err(_) => {
                return Err(KafkaError::MessageConsumption(
                    RDKafkaErrorCode::OperationTimedOut,
                ));
            }
            Ok(Ok(m)) => {
                let key = m.key().unwrap_or_default();
                if !is_roll_marker(key) && keep(key) {
                    let headers = m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|x| {
                                    let v =
                                        x.value.map(String::from_utf8_lossy).unwrap_or_default();
                                    (x.key.to_owned(), v.into_owned())
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    out.push(Scanned {
                        key: key.to_vec(),
                        headers,
                        value: m.payload().map(<[u8]>::to_vec),
                    });
                }
            }
            Ok(Err(KafkaError::PartitionEOF(p))) => {
                pending.remove(&p);
            }
            Ok(Err(e)) => tracing::warn!(%topic, error = %e, "scanning; retrying"),
        }
    }
    Ok(out)
}

/// A reader that asks to be told where each partition ends: librdkafka also reports that end
/// through the client's error callback, which is not an error and is logged at debug.
struct EndIsNotAnError;

impl rdkafka::ClientContext for EndIsNotAnError {
    fn error(&self, error: KafkaError, reason: &str) {
        match error.rdkafka_error_code() {
            Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF) => {
                tracing::debug!("librdkafka: {reason}")
            }
            _ => tracing::error!("librdkafka: {error}: {reason}"),
        }
    }
}

impl rdkafka::consumer::ConsumerContext for EndIsNotAnError {}

fn assigned_consumer(
    cfg: &KafkaConfig,
    topic: &str,
    start: Start,
) -> Result<(StreamConsumer<EndIsNotAnError>, Vec<i32>), KafkaError> {
    let consumer: StreamConsumer<EndIsNotAnError> = cfg
        .client_config()
        .set("group.id", format!("telegate-scan-{:016x}", rand_id()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("fetch.wait.max.ms", "10")
        .set("auto.offset.reset", "earliest")
        .create_with_context(EndIsNotAnError)?;
    let partitions = assign_all(&consumer, &[topic], start)?;
    Ok((consumer, partitions.into_iter().map(|(_, p)| p).collect()))
}

/// Where a directly assigned consumer starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    Beginning,
    /// Where each partition ends now: only records written from here on.
    End,
}

/// Assigns every partition of `topics` to `consumer` directly, with no group join or
/// rebalance to wait for; returns the (topic, partition) pairs assigned.
pub fn assign_all<C: rdkafka::consumer::ConsumerContext>(
    consumer: &StreamConsumer<C>,
    topics: &[&str],
    start: Start,
) -> Result<Vec<(String, i32)>, KafkaError> {
    let mut assignment = TopicPartitionList::new();
    let mut assigned = Vec::new();
    for topic in topics {
        for p in partitions_of(consumer, topic)? {
            let offset = match start {
                Start::Beginning => Offset::Beginning,
                // Resolved now, so nothing written after this call is skipped.
                Start::End => Offset::Offset(end_of(consumer, topic, p)?),
            };
            assignment.add_partition_offset(topic, p, offset)?;
            assigned.push(((*topic).to_owned(), p));
        }
    }
    consumer.assign(&assignment)?;
    Ok(assigned)
}

/// The partitions of `topic`, once its metadata lists any ([`settled`]): fails rather than
/// follow nothing.
fn partitions_of<C: rdkafka::consumer::ConsumerContext>(
    consumer: &StreamConsumer<C>,
    topic: &str,
) -> Result<Vec<i32>, KafkaError> {
    settled(topic, || {
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        match partitions_in(&metadata, topic) {
            none if none.is_empty() => Err(KafkaError::MetadataFetch(
                RDKafkaErrorCode::UnknownTopicOrPartition,
            )),
            partitions => Ok(partitions),
        }
    })
}

/// Where partition `p` of `topic` ends now ([`settled`]).
fn end_of<C: rdkafka::consumer::ConsumerContext>(
    consumer: &StreamConsumer<C>,
    topic: &str,
    p: i32,
) -> Result<i64, KafkaError> {
    settled(topic, || {
        let (_, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        Ok(high)
    })
}

/// `ask` again, every 100 ms for up to 10 s, while `topic` is new: Kafka answers CreateTopics
/// before its brokers have all learnt of the topic, and a new partition may have no leader yet
/// ([`leader_not_there_yet`]).
fn settled<T>(topic: &str, ask: impl FnMut() -> Result<T, KafkaError>) -> Result<T, KafkaError> {
    let every = ConstantBuilder::default()
        .with_delay(Duration::from_millis(100))
        .with_max_times(100);
    ask.retry(every)
        .sleep(std::thread::sleep)
        .when(leader_not_there_yet)
        .notify(|e, _| tracing::debug!(%topic, error = %e, "the topic is not settled yet; asking again"))
        .call()
}

/// An error a new topic or partition shows until its metadata has spread and its leader is
/// elected (or while a leader moves).
fn leader_not_there_yet(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::NotLeaderForPartition
                | RDKafkaErrorCode::LeaderNotAvailable
                | RDKafkaErrorCode::UnknownTopicOrPartition
        )
    )
}

/// The partitions `metadata` lists for `topic`; none while the topic is unknown or in error.
fn partitions_in(metadata: &rdkafka::metadata::Metadata, topic: &str) -> Vec<i32> {
    metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect()
}

fn rand_id() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}
