//! Writing vehicles' records to the state topic: one write in flight per vehicle, so a
//! vehicle that sends frames faster than Kafka acknowledges has its changes coalesced instead
//! of queued; and no endless retrying of a record Kafka will never take.

use super::{Replication, StateStore};
use dashmap::DashMap;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use telegate_frame::Vin;
use telegate_kafka::SinkError;
use telegate_policy::StateKey;

/// Per vehicle with a write in flight or waiting: the number of write requests made, and,
/// under the lock, the request number the last completed write covered.
#[derive(Debug, Default)]
pub(super) struct Slot {
    requested: AtomicU64,
    written: tokio::sync::Mutex<u64>,
}

/// The vehicles with a write in flight or waiting; an entry goes once nobody waits on it.
pub(super) type Slots = DashMap<StateKey, Arc<Slot>>;

/// Kafka refuses this record and would refuse it again: retrying cannot help.
pub(super) fn permanent(e: &SinkError) -> bool {
    matches!(
        e,
        SinkError::Produce {
            error: KafkaError::MessageProduction(
                RDKafkaErrorCode::MessageSizeTooLarge
                    | RDKafkaErrorCode::MessageBatchTooLarge
                    | RDKafkaErrorCode::InvalidMessageSize
                    | RDKafkaErrorCode::InvalidRecord
            ),
            ..
        }
    )
}

impl StateStore {
    /// Writes the record under `key` as it is once any write of it already in flight is
    /// done, unless that write already covered this call (it read the record after the call
    /// began): then returns at once, counted as coalesced. Erased meanwhile: nothing to write.
    pub(super) async fn write_current(
        &self,
        rep: &Replication,
        key: StateKey,
    ) -> Result<(), SinkError> {
        let slot = rep.slots.entry(key).or_default().clone();
        let mine = slot.requested.fetch_add(1, Ordering::SeqCst) + 1;
        let result = {
            let mut written = slot.written.lock().await;
            if *written >= mine {
                metrics::counter!("telegate_state_writes_coalesced_total").increment(1);
                Ok(())
            } else {
                let covers = slot.requested.load(Ordering::SeqCst);
                rep.dirty.remove(&key);
                match self.get_at(&key) {
                    None => Ok(()),
                    Some(record) => {
                        let value = self.encode(&key, &record);
                        let r = rep
                            .writer
                            .put(&rep.topic, Some(key.to_hex().as_bytes()), Some(&value))
                            .await;
                        match &r {
                            Ok(()) => *written = covers,
                            Err(e) => self.write_failed(key, e, value.len()),
                        }
                        r
                    }
                }
            }
        };
        drop(slot);
        rep.slots.remove_if(&key, |_, s| Arc::strong_count(s) == 1);
        result
    }

    /// A failed write is retried by the background writer, unless Kafka refuses the record
    /// for good: then it is counted and logged (its size, never whose it is) and stays only
    /// in this gateway's memory until the vehicle's record changes again.
    fn write_failed(&self, key: StateKey, e: &SinkError, bytes: usize) {
        if permanent(e) {
            metrics::counter!("telegate_state_writes_abandoned_total").increment(1);
            tracing::error!(
                error = %e,
                bytes,
                "a vehicle's consent state cannot be written to Kafka; it holds on this \
                 instance only until the vehicle's record changes again"
            );
        } else {
            self.mark(key);
        }
    }

    /// Holds a vehicle's writes while `f` runs (an erasure), so that no write of the record
    /// read before lands after it.
    pub(super) async fn exclusive<R>(
        &self,
        rep: &Replication,
        key: StateKey,
        f: impl AsyncFnOnce() -> R,
    ) -> R {
        let slot = rep.slots.entry(key).or_default().clone();
        let r = {
            let _held = slot.written.lock().await;
            f().await
        };
        drop(slot);
        rep.slots.remove_if(&key, |_, s| Arc::strong_count(s) == 1);
        r
    }
}

/// The first wait after a failed pass, doubled after each failed pass up to the last.
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MOST: Duration = Duration::from_secs(30);

/// Writes locally changed records to the state topic, coalescing bursts, until the store's
/// stop is cancelled; then writes what is left and returns (or gives up when told to
/// abandon it). A burst (say, a fleet seen for the first time,
/// or a topic being rewritten under a new wrapping key) goes out as concurrent writes, which
/// the producer batches into a few requests instead of one acknowledged round trip per
/// vehicle. A format-1 record's raw-VIN key is tombstoned only after its record is written
/// under the state key. A failed pass is retried after a wait that doubles up to 30 s; a
/// record Kafka refuses for good is not retried ([`permanent`]).
pub(super) async fn write_dirty(store: Arc<StateStore>) {
    let Some(rep) = &store.replication else {
        return;
    };
    tokio::select! {
        () = rep.abandon.cancelled() => {}
        () = write_until_stopped(&store, rep) => {}
    }
}

async fn write_until_stopped(store: &Arc<StateStore>, rep: &super::Replication) {
    let failed = metrics::counter!("telegate_state_write_errors_total");
    let mut wait = RETRY_FIRST;
    loop {
        let last = rep.stop.is_cancelled();
        if !last {
            tokio::select! {
                () = rep.wake.notified() => {}
                () = rep.stop.cancelled() => {}
            }
        }
        let keys: Vec<StateKey> = rep.dirty.iter().map(|k| *k).collect();
        let writes = keys.into_iter().map(|key| async move {
            let r = store.write_current(rep, key).await;
            (key, r)
        });
        let mut retry = false;
        for (_, r) in futures::future::join_all(writes).await {
            if let Err(e) = r {
                failed.increment(1);
                if !permanent(&e) {
                    tracing::error!(error = %e, "consent state not replicated; retrying");
                    retry = true;
                }
            }
        }
        // Old keys whose records are now written under their state key.
        let old: Vec<(StateKey, Vin)> = rep
            .legacy
            .iter()
            .filter(|e| !rep.dirty.contains(e.key()))
            .map(|e| (*e.key(), e.value().0))
            .collect();
        let tombstones = old.iter().map(|(key, vin)| async move {
            let r = rep
                .writer
                .put(&rep.topic, Some(vin.expose().as_bytes()), None)
                .await;
            (*key, r)
        });
        for (key, r) in futures::future::join_all(tombstones).await {
            match r {
                Ok(_) => {
                    store.migrated.fetch_add(1, Ordering::Relaxed);
                    rep.legacy.remove(&key);
                }
                Err(e) => {
                    failed.increment(1);
                    tracing::error!(error = %e, "format-1 consent-state key not removed; retrying");
                    retry = true;
                }
            }
        }
        rep.passes.send_modify(|n| *n += 1);
        if retry {
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(RETRY_MOST);
            rep.wake.notify_one();
        } else {
            wait = RETRY_FIRST;
            if last && rep.dirty.is_empty() && rep.legacy.is_empty() {
                return;
            }
        }
    }
}
