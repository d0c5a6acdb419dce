//! Every vehicle's settings, consents, activations, objections, restrictions, account status
//! and key material: in memory for the hot path, replicated through the compacted topic
//! `telegate.consent-state` so every gateway instance and every restart sees the same state.
//!
//! At rest a vehicle is named by its [`StateKey`] (a keyed hash of the VIN under the index key)
//! and its secret is wrapped under the operator's wrapping key ([`record`] has the format):
//! the topic names no VIN and holds no usable secret. Memory is keyed the same way; a frame's
//! lookup hashes its VIN once.
//!
//! Replicas converge: a record read from the topic is merged into the local one (timelines
//! are unions), and a local record that knows more than what it merged is written back. A
//! tombstone erases the vehicle everywhere. Records in an older form (keyed by raw VIN, secret
//! in the clear, or wrapped under a key that is no longer the active one) are rewritten in the
//! current one as they are read; a raw-VIN record's key then gets a tombstone.

use anyhow::Context;
use dashmap::{DashMap, DashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;
use telegate_frame::Vin;
use telegate_kafka::{Entry, KafkaConfig, LogWriter, Run, follow};
use telegate_policy::{Admission, StateFile, StateKey, StateKeys, SubjectRecord, SubjectSecret};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub mod census;
pub mod record;
mod write;

use record::Read;

pub struct StateStore {
    keys: StateKeys,
    subjects: DashMap<StateKey, SubjectRecord>,
    /// Subject id (from the key material) → the record holding it, to open sealed values.
    by_subject_id: DashMap<String, StateKey>,
    /// Records on the topic this gateway's keys cannot read (latest entry per key).
    unreadable: DashMap<StateKey, record::Unreadable>,
    migrated: AtomicU64,
    /// The topic has been read to its end once.
    caught_up: AtomicBool,
    /// The newest broker timestamp (ms) among the records applied from the topic.
    newest_applied_ms: AtomicI64,
    replication: Option<Replication>,
}

struct Replication {
    writer: LogWriter,
    topic: String,
    /// Vehicles changed locally (or read in an older form) and not yet written; coalesced,
    /// bounded by the fleet.
    dirty: DashSet<StateKey>,
    /// Vehicles with a write in flight: one at a time each.
    slots: write::Slots,
    /// Raw-VIN keys of format-1 records, to tombstone once their record is written anew;
    /// true once a format-2 record for the vehicle has been read after it.
    legacy: DashMap<StateKey, (Vin, bool)>,
    wake: Notify,
    /// Counts the writer's passes: [`StateStore::flushed`] looks again after each.
    passes: watch::Sender<u64>,
    /// Stops the follower and has the writer make its last pass.
    stop: CancellationToken,
    /// Has the writer give up what it could not write by the close's deadline.
    abandon: CancellationToken,
    /// The follower, the applier and the writer, awaited by [`StateStore::close`].
    tasks: TaskTracker,
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

/// What reading the state topic found that this gateway cannot use, by reason.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Unread(pub std::collections::BTreeMap<String, usize>);

impl Unread {
    pub fn total(&self) -> usize {
        self.0.values().sum()
    }
}

impl std::fmt::Display for Unread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(why, n)| format!("{n} {why}")).collect();
        f.write_str(&parts.join("; "))
    }
}

impl StateStore {
    /// A store not yet replicated.
    fn local(keys: StateKeys) -> Self {
        Self {
            keys,
            subjects: DashMap::new(),
            by_subject_id: DashMap::new(),
            unreadable: DashMap::new(),
            migrated: AtomicU64::new(0),
            caught_up: AtomicBool::new(false),
            newest_applied_ms: AtomicI64::new(0),
            replication: None,
        }
    }

    /// A store replicated through `topic`: reads it in full before returning (so a new or
    /// restarted instance starts with everyone's state), then follows it until
    /// [`close`](Self::close). Records in an older form are rewritten as they are read.
    pub async fn replicated(
        cfg: &KafkaConfig,
        topic: &str,
        catch_up: Duration,
        keys: StateKeys,
    ) -> anyhow::Result<Arc<Self>> {
        let writer = LogWriter::new(cfg).context("state writer")?;
        let (stop, tasks) = (CancellationToken::new(), TaskTracker::new());
        let store = Arc::new(Self {
            replication: Some(Replication {
                writer,
                topic: topic.to_owned(),
                dirty: DashSet::new(),
                slots: DashMap::new(),
                legacy: DashMap::new(),
                wake: Notify::new(),
                passes: watch::Sender::new(0),
                stop: stop.clone(),
                abandon: CancellationToken::new(),
                tasks: tasks.clone(),
            }),
            ..Self::local(keys)
        });
        let run = Run {
            tasks: &tasks,
            stop: &stop,
        };
        let (mut entries, mut read_to_end) =
            follow(cfg, topic, 4096, run).with_context(|| format!("following {topic}"))?;
        let (applied_tx, mut applied) = watch::channel(false);
        let applier = store.clone();
        tasks.spawn(async move {
            if !read_to_its_end(&mut entries, &mut read_to_end, |e| applier.apply_remote(e)).await {
                return;
            }
            applier.caught_up.store(true, Ordering::Release);
            let _ = applied_tx.send(true);
            while let Some(e) = entries.recv().await {
                applier.apply_remote(e);
            }
        });
        let caught_up = tokio::time::timeout(catch_up, applied.wait_for(|c| *c)).await;
        if !matches!(caught_up, Ok(Ok(_))) {
            stop.cancel();
            return Err(match caught_up {
                Err(_) => anyhow::anyhow!("{topic} was not read to its end within {catch_up:?}"),
                Ok(_) => anyhow::anyhow!("state follower stopped"),
            });
        }
        // Nothing is written before the whole topic is read: an older form's record is
        // rewritten (and its raw-VIN key tombstoned) only once every erasure is known.
        tasks.spawn(write::write_dirty(store.clone()));
        if let Some(rep) = &store.replication {
            rep.wake.notify_one();
        }
        tracing::info!(
            vehicles = store.len(),
            to_rewrite = store.pending_writes(),
            unreadable = store.unread().total(),
            %topic,
            "consent state caught up"
        );
        Ok(store)
    }

    /// The records read from the topic that this gateway's keys cannot open, by reason. A
    /// vehicle whose record cannot be read would start afresh here, its consents and key
    /// material lost to this instance: the gateway refuses to start while any remain.
    pub fn unread(&self) -> Unread {
        let mut out = Unread::default();
        for r in self.unreadable.iter() {
            *out.0.entry(r.value().to_string()).or_default() += 1;
        }
        out
    }

    /// Records changed here, or read in an older form, not yet written to the topic.
    pub fn pending_writes(&self) -> usize {
        self.replication
            .as_ref()
            .map_or(0, |r| r.dirty.len() + r.legacy.len())
    }

    /// Format-1 records (raw-VIN keys) rewritten and their old keys tombstoned so far.
    pub fn migrated(&self) -> u64 {
        self.migrated.load(Ordering::Relaxed)
    }

    /// The key a vehicle's record has, here and on the topic.
    pub fn key_of(&self, vin: &Vin) -> StateKey {
        self.keys.key_of(vin)
    }

    /// Loads a state file (`{"subjects": {VIN: {...}}}`); every VIN must be valid. Its
    /// records are merged in and, in a replicated store, written out.
    pub fn load(&self, file: &StateFile) -> anyhow::Result<()> {
        for (i, (vin, record)) in file.subjects.iter().enumerate() {
            // The error names the entry's position, never the VIN.
            let vin =
                Vin::parse(vin).with_context(|| format!("state file subject #{i}: not a VIN"))?;
            self.merge_local(self.key_of(&vin), record);
        }
        Ok(())
    }

    fn apply_remote(&self, e: Entry) {
        if let Some(ts) = e.timestamp_ms {
            self.note_applied(ts);
        }
        match record::decode(&self.keys, &e.key, e.value.as_deref()) {
            Read::Record {
                key,
                record,
                wrapped_under,
            } => {
                self.unreadable.remove(&key);
                if let Some(rep) = &self.replication
                    && let Some(mut old) = rep.legacy.get_mut(&key)
                {
                    old.1 = true;
                }
                let stale =
                    wrapped_under.is_some_and(|k| k != self.keys.active_wrapping_id().as_str());
                self.merge_remote(key, &record, stale);
            }
            Read::Erased(key) => {
                self.unreadable.remove(&key);
                self.forget(&key);
            }
            Read::Legacy { vin, record } => {
                let key = self.key_of(&vin);
                self.merge_remote(key, &record, true);
                if let Some(rep) = &self.replication {
                    rep.legacy.insert(key, (vin, false));
                }
            }
            Read::LegacyErased(vin) => {
                // While catching up: after a format-1 record not yet rewritten, an erasure by
                // the older gateway; after one rewritten, the migration's own tombstone. Once
                // caught up, format-1 tombstones are this migration's own.
                let Some(rep) = &self.replication else {
                    return;
                };
                if self.caught_up.load(Ordering::Acquire) {
                    return;
                }
                let key = self.key_of(&vin);
                if let Some((_, (_, rewritten))) = rep.legacy.remove(&key)
                    && !rewritten
                {
                    self.forget(&key);
                    rep.dirty.remove(&key);
                }
            }
            Read::Unreadable { key, why } => {
                metrics::counter!("telegate_state_unreadable_total").increment(1);
                self.unreadable.insert(key, why);
            }
            Read::Malformed(what) => {
                metrics::counter!("telegate_state_unreadable_total").increment(1);
                tracing::warn!(what, "consent-state record ignored");
            }
        }
    }

    /// The newest broker timestamp (ms) among the records applied from the topic; 0 before
    /// the first.
    pub fn newest_applied_ms(&self) -> i64 {
        self.newest_applied_ms.load(Ordering::Relaxed)
    }

    /// Gateways that follow the same topic agree on the newest record they have applied,
    /// unless one of them is behind: the gauge's spread across gateways is the consent
    /// state's replication lag, and it stays 0 while nothing is written.
    fn note_applied(&self, timestamp_ms: i64) {
        if self
            .newest_applied_ms
            .fetch_max(timestamp_ms, Ordering::Relaxed)
            < timestamp_ms
        {
            metrics::gauge!("telegate_state_newest_record_timestamp_seconds")
                .set(timestamp_ms as f64 / 1000.0);
        }
    }

    /// Merges a record read from the topic; writes the merged one back when it knows more,
    /// or when `rewrite` (an older form).
    fn merge_remote(&self, key: StateKey, remote: &SubjectRecord, rewrite: bool) {
        let knows_more = {
            let mut mine = self.subjects.entry(key).or_default();
            mine.merge(remote);
            self.index(&key, &mine);
            *mine != *remote
        };
        if knows_more || rewrite {
            self.mark(key);
        }
    }

    fn index(&self, key: &StateKey, record: &SubjectRecord) {
        if let Some(s) = &record.secret {
            self.by_subject_id.insert(s.id.clone(), *key);
        }
    }

    fn forget(&self, key: &StateKey) {
        if let Some(s) = self.subjects.remove(key).and_then(|(_, r)| r.secret) {
            self.by_subject_id.remove(&s.id);
        }
    }

    fn mark(&self, key: StateKey) {
        if let Some(r) = &self.replication {
            r.dirty.insert(key);
            r.wake.notify_one();
        }
    }

    fn merge_local(&self, key: StateKey, record: &SubjectRecord) {
        let mut mine = self.subjects.entry(key).or_default();
        mine.merge(record);
        self.index(&key, &mine);
        drop(mine);
        self.mark(key);
    }

    /// The value written for the record named `key`, under the active wrapping key.
    fn encode(&self, key: &StateKey, record: &SubjectRecord) -> Vec<u8> {
        record::encode(&self.keys, key, record, rand::random())
    }

    /// Admits a frame: runs `admit` (the policy core's [`telegate_policy::admit`]) on the
    /// record named `key` (the vehicle's [`key_of`](Self::key_of)) under its lock, the only
    /// state access a frame makes. What changed (`admission.changes.any()`) is replicated by the
    /// caller with [`persist`](Self::persist), once, and the frame's acknowledgement waits for
    /// it. Keep `admit` synchronous and short: it holds a shard lock.
    pub fn admit(
        &self,
        key: StateKey,
        admit: impl FnOnce(&mut SubjectRecord) -> Admission,
    ) -> Admission {
        let mut record = self.subjects.entry(key).or_default();
        let admission = admit(&mut record);
        if admission.changes.secret_created {
            self.index(&key, &record);
        }
        admission
    }

    /// Runs `f` on the vehicle's record (None for a vehicle nothing is known about). Keep `f`
    /// short and synchronous: it holds a shard lock.
    pub fn with<R>(&self, vin: &Vin, f: impl FnOnce(Option<&SubjectRecord>) -> R) -> R {
        match self.subjects.get(&self.key_of(vin)) {
            Some(r) => f(Some(&r)),
            None => f(None),
        }
    }

    pub fn get(&self, vin: &Vin) -> Option<SubjectRecord> {
        self.get_at(&self.key_of(vin))
    }

    fn get_at(&self, key: &StateKey) -> Option<SubjectRecord> {
        self.subjects.get(key).map(|r| r.clone())
    }

    /// The key material whose subject id this is (what a sealed value names).
    pub fn secret_of_subject(&self, subject_id: &str) -> Option<SubjectSecret> {
        let key = *self.by_subject_id.get(subject_id)?;
        self.get_at(&key)?.secret
    }

    /// Changes a vehicle's record and, when replicated, returns only once Kafka has the new
    /// record: an admin call that returned is in force on every instance that follows.
    pub async fn update(
        &self,
        vin: Vin,
        change: impl FnOnce(&mut SubjectRecord),
    ) -> anyhow::Result<SubjectRecord> {
        let key = self.key_of(&vin);
        let record = {
            let mut r = self.subjects.entry(key).or_default();
            if r.secret.is_none() {
                r.secret = Some(fresh_secret());
            }
            change(&mut r);
            self.index(&key, &r);
            r.clone()
        };
        if let Some(rep) = &self.replication {
            self.write_current(rep, key)
                .await
                .context("writing consent state")?;
        }
        Ok(record)
    }

    /// Writes the record named `key` now and returns once Kafka has it (or a newer version of
    /// it): a frame that changed the record waits for this before it is acknowledged. A
    /// vehicle has one write in flight at a time; calls made meanwhile wait and are covered
    /// by the next write, so a burst of one vehicle's frames costs two writes, not one each.
    /// On failure the record is marked and the background writer retries it, unless Kafka
    /// refuses it for good (counted in `telegate_state_writes_abandoned_total`).
    pub async fn persist(&self, key: StateKey) -> anyhow::Result<()> {
        let Some(rep) = &self.replication else {
            return Ok(());
        };
        self.write_current(rep, key)
            .await
            .context("writing consent state")
    }

    /// Deletes everything about a vehicle, here and (by tombstone) on every instance. With
    /// the record goes its key material: earlier pseudonyms and sealed VINs can no longer be
    /// linked to the VIN.
    pub async fn erase(&self, key: &StateKey) -> anyhow::Result<bool> {
        let Some(rep) = &self.replication else {
            let existed = self.subjects.contains_key(key);
            self.forget(key);
            return Ok(existed);
        };
        self.exclusive(rep, *key, async || {
            let existed = self.subjects.contains_key(key);
            self.forget(key);
            rep.dirty.remove(key);
            rep.writer
                .put(&rep.topic, Some(key.to_hex().as_bytes()), None)
                .await
                .context("writing the erasure tombstone")?;
            Ok(existed)
        })
        .await
    }

    /// Vehicles whose records match `pred`, by key.
    pub fn keys_where(&self, pred: impl Fn(&SubjectRecord) -> bool) -> Vec<StateKey> {
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
    /// Returns once every record changed here or read in an older form is written (and every
    /// format-1 key tombstoned), or `timeout` passed; true if nothing is left.
    pub async fn flushed(&self, timeout: Duration) -> bool {
        let Some(rep) = &self.replication else {
            return true;
        };
        let mut passes = rep.passes.subscribe();
        let written = passes.wait_for(|_| self.pending_writes() == 0);
        matches!(tokio::time::timeout(timeout, written).await, Ok(Ok(_)))
    }

    /// Stops following the topic and returns once every local change made before the call
    /// is in Kafka (or `timeout` passed, which is logged with the number left unwritten).
    pub async fn close(&self, timeout: Duration) {
        let Some(rep) = &self.replication else {
            return;
        };
        rep.stop.cancel();
        rep.wake.notify_one();
        rep.tasks.close();
        if tokio::time::timeout(timeout, rep.tasks.wait())
            .await
            .is_err()
        {
            tracing::error!(
                unwritten = rep.dirty.len(),
                "consent state not fully written to Kafka before shutdown"
            );
            rep.abandon.cancel();
            rep.tasks.wait().await;
        }
    }
}

/// Hands `apply` every entry a follower ([`follow`]) read before it reached the topic's end:
/// they are all in the channel by the time it says so. False if the follower stopped first.
pub(crate) async fn read_to_its_end(
    entries: &mut tokio::sync::mpsc::Receiver<Entry>,
    read_to_end: &mut watch::Receiver<bool>,
    mut apply: impl FnMut(Entry),
) -> bool {
    loop {
        tokio::select! {
            biased;
            e = entries.recv() => match e {
                Some(e) => apply(e),
                None => return false,
            },
            r = read_to_end.wait_for(|c| *c) => match r {
                Ok(_) => break,
                Err(_) => return false,
            },
        }
    }
    while let Ok(e) = entries.try_recv() {
        apply(e);
    }
    true
}
