//! Every vehicle's settings, consents, activations, objections, restrictions, account status
//! and key material: in memory for the hot path, replicated through the compacted topic
//! `telegate.consent-state` (key = VIN, value = the vehicle's whole record as JSON) so every
//! gateway instance and every restart sees the same state.
//!
//! Replicas converge: a record read from the topic is merged into the local one (timelines
//! are unions), and a local record that knows more than what it merged is written back. A
//! tombstone erases the vehicle everywhere.

use anyhow::Context;
use dashmap::{DashMap, DashSet};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use telegate_frame::Vin;
use telegate_kafka::{Entry, KafkaConfig, LogWriter, follow};
use telegate_policy::{Admission, StateFile, SubjectRecord, SubjectSecret};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

#[derive(Default)]
pub struct StateStore {
    subjects: DashMap<Vin, SubjectRecord>,
    /// Subject id (from the key material) → VIN, to open sealed values.
    by_subject_id: DashMap<String, Vin>,
    replication: Option<Replication>,
}

struct Replication {
    writer: LogWriter,
    topic: String,
    /// Vehicles changed locally and not yet written; coalesced, bounded by the fleet.
    dirty: DashSet<Vin>,
    wake: Notify,
    /// Stops the follower and has the writer make its last pass.
    stop: watch::Sender<bool>,
    /// The follower, the applier and the writer, awaited by [`StateStore::close`].
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore")
            .field("subjects", &self.subjects.len())
            .field("replicated", &self.replication.is_some())
            .finish()
    }
}

/// New key material for a vehicle seen for the first time.
pub fn fresh_secret() -> SubjectSecret {
    SubjectSecret::from_random(rand::random(), rand::random())
}

impl StateStore {
    /// A store replicated through `topic`: reads it in full before returning (so a new or
    /// restarted instance starts with everyone's state), then follows it until
    /// [`close`](Self::close).
    pub async fn replicated(
        cfg: &KafkaConfig,
        topic: &str,
        catch_up: Duration,
    ) -> anyhow::Result<Arc<Self>> {
        let writer = LogWriter::new(cfg).context("state writer")?;
        let (stop, stopped) = watch::channel(false);
        let store = Arc::new(Self {
            replication: Some(Replication {
                writer,
                topic: topic.to_owned(),
                dirty: DashSet::new(),
                wake: Notify::new(),
                stop,
                tasks: Mutex::new(Vec::new()),
            }),
            ..Self::default()
        });
        let (mut entries, mut caught_up) = follow(cfg, topic, 4096, stopped.clone())
            .with_context(|| format!("following {topic}"))?;
        let applier = store.clone();
        let applying = tokio::spawn(async move {
            while let Some(e) = entries.recv().await {
                applier.apply_remote(e);
            }
        });
        let writing = tokio::spawn(write_dirty(store.clone(), stopped));
        if let Some(rep) = &store.replication {
            rep.tasks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend([applying, writing]);
        }
        tokio::time::timeout(catch_up, caught_up.wait_for(|c| *c))
            .await
            .with_context(|| format!("{topic} was not read to its end within {catch_up:?}"))?
            .context("state follower stopped")?;
        tracing::info!(vehicles = store.len(), %topic, "consent state caught up");
        Ok(store)
    }

    /// Loads a state file (`{"subjects": {VIN: {...}}}`); every VIN must be valid. Its
    /// records are merged in and, in a replicated store, written out.
    pub fn load(&self, file: &StateFile) -> anyhow::Result<()> {
        for (i, (vin, record)) in file.subjects.iter().enumerate() {
            // The error names the entry's position, never the VIN.
            let vin =
                Vin::parse(vin).with_context(|| format!("state file subject #{i}: not a VIN"))?;
            self.merge_local(vin, record);
        }
        Ok(())
    }

    fn apply_remote(&self, e: Entry) {
        let Some(vin) = std::str::from_utf8(&e.key)
            .ok()
            .and_then(|k| Vin::parse(k).ok())
        else {
            tracing::warn!("consent-state record with a key that is not a VIN; ignored");
            return;
        };
        match e.value {
            None => self.forget(&vin),
            Some(v) => match serde_json::from_slice::<SubjectRecord>(&v) {
                Ok(remote) => {
                    let knows_more = {
                        let mut mine = self.subjects.entry(vin).or_default();
                        mine.merge(&remote);
                        self.index(&vin, &mine);
                        *mine != remote
                    };
                    if knows_more {
                        self.mark(vin);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "unreadable consent-state record; ignored"),
            },
        }
    }

    fn index(&self, vin: &Vin, record: &SubjectRecord) {
        if let Some(s) = &record.secret {
            self.by_subject_id.insert(s.id.clone(), *vin);
        }
    }

    fn forget(&self, vin: &Vin) {
        if let Some(s) = self.subjects.remove(vin).and_then(|(_, r)| r.secret) {
            self.by_subject_id.remove(&s.id);
        }
    }

    fn mark(&self, vin: Vin) {
        if let Some(r) = &self.replication {
            r.dirty.insert(vin);
            r.wake.notify_one();
        }
    }

    fn merge_local(&self, vin: Vin, record: &SubjectRecord) {
        let mut mine = self.subjects.entry(vin).or_default();
        mine.merge(record);
        self.index(&vin, &mine);
        drop(mine);
        self.mark(vin);
    }

    /// Admits a frame: runs `admit` (the policy core's [`telegate_policy::admit`]) on the
    /// vehicle's record under its lock, the only state access a frame makes. What changed
    /// (`admission.changes.any()`) is replicated by the caller with [`persist`](Self::persist),
    /// once, and the frame's acknowledgement waits for it. Keep `admit` synchronous and short:
    /// it holds a shard lock.
    pub fn admit(
        &self,
        vin: Vin,
        admit: impl FnOnce(&mut SubjectRecord) -> Admission,
    ) -> Admission {
        let mut record = self.subjects.entry(vin).or_default();
        let admission = admit(&mut record);
        if admission.changes.secret_created {
            self.index(&vin, &record);
        }
        admission
    }

    /// Runs `f` on the vehicle's record (None for a vehicle nothing is known about). Keep `f`
    /// short and synchronous: it holds a shard lock.
    pub fn with<R>(&self, vin: &Vin, f: impl FnOnce(Option<&SubjectRecord>) -> R) -> R {
        match self.subjects.get(vin) {
            Some(r) => f(Some(&r)),
            None => f(None),
        }
    }

    pub fn get(&self, vin: &Vin) -> Option<SubjectRecord> {
        self.subjects.get(vin).map(|r| r.clone())
    }

    /// The VIN whose key material has this subject id.
    pub fn vin_of_subject(&self, subject_id: &str) -> Option<Vin> {
        self.by_subject_id.get(subject_id).map(|v| *v)
    }

    /// Changes a vehicle's record and, when replicated, returns only once Kafka has the new
    /// record: an admin call that returned is in force on every instance that follows.
    pub async fn update(
        &self,
        vin: Vin,
        change: impl FnOnce(&mut SubjectRecord),
    ) -> anyhow::Result<SubjectRecord> {
        let record = {
            let mut r = self.subjects.entry(vin).or_default();
            if r.secret.is_none() {
                r.secret = Some(fresh_secret());
            }
            change(&mut r);
            self.index(&vin, &r);
            r.clone()
        };
        if let Some(rep) = &self.replication {
            let value = serde_json::to_vec(&record)?;
            rep.writer
                .put(&rep.topic, Some(vin.expose().as_bytes()), Some(&value))
                .await
                .context("writing consent state")?;
        }
        Ok(record)
    }

    /// Writes the vehicle's record now and returns once Kafka has it: a frame that changed
    /// the record waits for this before it is acknowledged. On failure the record is marked,
    /// and the background writer retries it.
    pub async fn persist(&self, vin: &Vin) -> anyhow::Result<()> {
        let Some(rep) = &self.replication else {
            return Ok(());
        };
        rep.dirty.remove(vin);
        // Erased meanwhile: its tombstone is what counts.
        let Some(record) = self.get(vin) else {
            return Ok(());
        };
        let value = serde_json::to_vec(&record)?;
        let written = rep
            .writer
            .put(&rep.topic, Some(vin.expose().as_bytes()), Some(&value))
            .await;
        if written.is_err() {
            self.mark(*vin);
        }
        written.context("writing consent state")
    }

    /// Deletes everything about a vehicle, here and (by tombstone) on every instance. With
    /// the record goes its key material: earlier pseudonyms and sealed VINs can no longer be
    /// linked to the VIN.
    pub async fn erase(&self, vin: &Vin) -> anyhow::Result<bool> {
        let existed = self.subjects.contains_key(vin);
        self.forget(vin);
        if let Some(rep) = &self.replication {
            rep.dirty.remove(vin);
            rep.writer
                .put(&rep.topic, Some(vin.expose().as_bytes()), None)
                .await
                .context("writing the erasure tombstone")?;
        }
        Ok(existed)
    }

    /// Vehicles whose records match `pred`.
    pub fn vins_where(&self, pred: impl Fn(&SubjectRecord) -> bool) -> Vec<Vin> {
        self.subjects
            .iter()
            .filter(|r| pred(r.value()))
            .map(|r| *r.key())
            .collect()
    }

    pub fn len(&self) -> usize {
        self.subjects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.subjects.is_empty()
    }
}

impl StateStore {
    /// Stops following the topic and returns once every local change made before the call
    /// is in Kafka (or `timeout` passed, which is logged with the number left unwritten).
    pub async fn close(&self, timeout: Duration) {
        let Some(rep) = &self.replication else {
            return;
        };
        let _ = rep.stop.send(true);
        rep.wake.notify_one();
        let tasks = std::mem::take(&mut *rep.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        if tokio::time::timeout(timeout, futures::future::join_all(tasks))
            .await
            .is_err()
        {
            tracing::error!(
                unwritten = rep.dirty.len(),
                "consent state not fully written to Kafka before shutdown"
            );
        }
    }
}

/// Writes locally changed records to the state topic, coalescing bursts, until `stop` turns
/// true; then writes what is left and returns. A burst (say, a fleet seen for the first time)
/// goes out as concurrent writes, which the producer batches into a few requests instead of
/// one acknowledged round trip per vehicle.
async fn write_dirty(store: Arc<StateStore>, stop: watch::Receiver<bool>) {
    let Some(rep) = &store.replication else {
        return;
    };
    let failed = metrics::counter!("telegate_state_write_errors_total");
    loop {
        let last = *stop.borrow();
        if !last {
            rep.wake.notified().await;
        }
        let batch: Vec<(Vin, Vec<u8>)> = rep
            .dirty
            .iter()
            .map(|v| *v)
            .collect::<Vec<_>>()
            .into_iter()
            .filter_map(|vin| {
                rep.dirty.remove(&vin);
                let record = store.get(&vin)?;
                Some((vin, serde_json::to_vec(&record).ok()?))
            })
            .collect();
        let writes = batch.iter().map(|(vin, value)| async move {
            let r = rep
                .writer
                .put(&rep.topic, Some(vin.expose().as_bytes()), Some(value))
                .await;
            (*vin, r)
        });
        let mut retry = false;
        for (vin, r) in futures::future::join_all(writes).await {
            if let Err(e) = r {
                failed.increment(1);
                tracing::error!(error = %e, "consent state not replicated; retrying");
                rep.dirty.insert(vin);
                retry = true;
            }
        }
        if retry {
            tokio::time::sleep(Duration::from_millis(500)).await;
            rep.wake.notify_one();
        } else if last && rep.dirty.is_empty() {
            return;
        }
    }
}
