//! What `telegate.consent-state` holds, record by record, as the operator's keys see it; and
//! the rewrite that brings every record under the active wrapping key (`telegate state
//! rewrap`): after a wrapping key rotation, before the old key leaves the key file, and to
//! migrate a topic of the first format without starting a gateway.

use super::record::{self, Read};
use super::{StateStore, read_to_its_end};
use anyhow::Context;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use telegate_kafka::{KafkaConfig, Run, follow};
use telegate_policy::StateKeys;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The latest entry of every key on the topic, by what it is.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Census {
    /// Vehicles with key material, by the wrapping key it is wrapped under.
    pub wrapped_under: BTreeMap<String, usize>,
    /// Vehicles with no key material yet (current format).
    pub without_secret: usize,
    /// Format-1 records: keyed by the raw VIN, secret in the clear.
    pub format_one: usize,
    /// Records these keys cannot open, by reason.
    pub unreadable: BTreeMap<String, usize>,
    /// Entries that are not records of this topic at all.
    pub malformed: usize,
    /// Keys whose latest entry is a tombstone (erasures, migrated format-1 keys), until the
    /// log cleaner removes them.
    pub tombstones: usize,
}

enum Latest {
    Wrapped(String),
    WithoutSecret,
    FormatOne,
    Unreadable(String),
    Malformed,
    Tombstone,
}

impl Census {
    /// Vehicles the topic holds a record for (every latest entry that is not a tombstone).
    pub fn records(&self) -> usize {
        self.wrapped_under.values().sum::<usize>()
            + self.without_secret
            + self.format_one
            + self.unreadable.values().sum::<usize>()
            + self.malformed
    }

    /// True when every record is current, readable, and wrapped (if at all) under `active`:
    /// then no other wrapping key is needed to read the topic.
    pub fn all_under(&self, active: &str) -> bool {
        self.format_one == 0
            && self.unreadable.is_empty()
            && self.malformed == 0
            && self.wrapped_under.keys().all(|k| k == active)
    }

    /// Reads `topic` to its end.
    pub async fn take(
        cfg: &KafkaConfig,
        topic: &str,
        keys: &StateKeys,
        within: Duration,
    ) -> anyhow::Result<Self> {
        let (stop, tasks) = (CancellationToken::new(), TaskTracker::new());
        let run = Run {
            tasks: &tasks,
            stop: &stop,
        };
        let (mut entries, mut read_to_end) =
            follow(cfg, topic, 4096, run).with_context(|| format!("reading {topic}"))?;
        let mut latest: HashMap<Vec<u8>, Latest> = HashMap::new();
        let reading = read_to_its_end(&mut entries, &mut read_to_end, |e| {
            let what = classify(keys, &e.key, e.value.as_deref());
            latest.insert(e.key, what);
        });
        let read = tokio::time::timeout(within, reading).await;
        stop.cancel();
        tasks.close();
        tasks.wait().await;
        let done =
            read.with_context(|| format!("{topic} was not read to its end within {within:?}"))?;
        anyhow::ensure!(done, "{topic}: the reader stopped");
        let mut census = Self::default();
        for what in latest.into_values() {
            match what {
                Latest::Wrapped(k) => *census.wrapped_under.entry(k).or_default() += 1,
                Latest::WithoutSecret => census.without_secret += 1,
                Latest::FormatOne => census.format_one += 1,
                Latest::Unreadable(why) => *census.unreadable.entry(why).or_default() += 1,
                Latest::Malformed => census.malformed += 1,
                Latest::Tombstone => census.tombstones += 1,
            }
        }
        Ok(census)
    }
}

fn classify(keys: &StateKeys, key: &[u8], value: Option<&[u8]>) -> Latest {
    match record::decode(keys, key, value) {
        Read::Record {
            wrapped_under: Some(k),
            ..
        } => Latest::Wrapped(k),
        Read::Record { .. } => Latest::WithoutSecret,
        Read::Erased(_) | Read::LegacyErased(_) => Latest::Tombstone,
        Read::Legacy { .. } => Latest::FormatOne,
        Read::Unreadable { why, .. } => Latest::Unreadable(why.to_string()),
        Read::Malformed(_) => Latest::Malformed,
    }
}

impl std::fmt::Display for Census {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} records", self.records())?;
        for (k, n) in &self.wrapped_under {
            write!(f, ", {n} wrapped under {k:?}")?;
        }
        let others = [
            (self.without_secret, "without key material"),
            (
                self.format_one,
                "in format 1 (raw VIN, secret in the clear)",
            ),
            (self.malformed, "malformed"),
        ];
        for (n, what) in others {
            if n > 0 {
                write!(f, ", {n} {what}")?;
            }
        }
        for (why, n) in &self.unreadable {
            write!(f, ", {n} unreadable: {why}")?;
        }
        write!(f, "; {} tombstones", self.tombstones)
    }
}

/// What [`rewrap`] found and did.
#[derive(Debug, Clone)]
pub struct Rewrap {
    pub before: Census,
    /// Records that were not current: written again under the active wrapping key.
    pub rewritten: usize,
    /// Format-1 keys tombstoned after their record was written in the current format.
    pub migrated: u64,
    pub after: Census,
}

/// Reads the topic, writes every record that is not current (format 1, or wrapped under a
/// key other than the active one) again under the active key, tombstones each format-1 key
/// after its record, and reads the topic again to say what it holds now. Records the keys
/// cannot open are left as they are, and reported.
pub async fn rewrap(
    cfg: &KafkaConfig,
    topic: &str,
    keys: &StateKeys,
    within: Duration,
) -> anyhow::Result<Rewrap> {
    let before = Census::take(cfg, topic, keys, within).await?;
    let active = keys.active_wrapping_id().as_str();
    let rewritten = before.format_one
        + before
            .wrapped_under
            .iter()
            .filter(|(k, _)| *k != active)
            .map(|(_, n)| n)
            .sum::<usize>();
    let store = StateStore::replicated(cfg, topic, within, keys.clone()).await?;
    let flushed = store.flushed(within).await;
    let left = store.pending_writes();
    let migrated = store.migrated();
    store.close(within).await;
    anyhow::ensure!(
        flushed,
        "{left} records were not written within {within:?}; run the command again"
    );
    let after = Census::take(cfg, topic, keys, within).await?;
    Ok(Rewrap {
        before,
        rewritten,
        migrated,
        after,
    })
}
