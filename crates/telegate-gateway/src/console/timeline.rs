//! Each vehicle's ledger entries, newest last, for the console's timeline: read from
//! `telegate.consent-ledger` from its beginning and followed from then on, so that a page
//! answers from memory instead of reading the topic. The gateway's own appends are added at
//! once (the follower brings them again, and equal entries are kept once), so a change made in
//! the console shows on the page that follows it.

use crate::ledger::LedgerEntry;
use dashmap::DashMap;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use telegate_kafka::{KafkaConfig, Run, follow};

/// Entries kept per vehicle; older ones stay on the topic (and in the export).
pub const ENTRIES_PER_VEHICLE: usize = 200;

#[derive(Debug, Default)]
pub struct LedgerIndex {
    by_subject: DashMap<String, VecDeque<LedgerEntry>>,
    caught_up: AtomicBool,
    unreadable: std::sync::atomic::AtomicU64,
}

impl LedgerIndex {
    /// Adds an entry unless an equal one is among the vehicle's latest.
    pub fn add(&self, entry: LedgerEntry) {
        let mut entries = self
            .by_subject
            .entry(entry.subject_hash.clone())
            .or_default();
        if entries.iter().rev().take(16).any(|e| *e == entry) {
            return;
        }
        // In the order they were recorded: the follower may bring an entry of another
        // instance after one this instance added.
        let at = entries.partition_point(|e| e.recorded_at_ms <= entry.recorded_at_ms);
        entries.insert(at, entry);
        if entries.len() > ENTRIES_PER_VEHICLE {
            entries.pop_front();
        }
    }

    /// The vehicle's entries, newest first.
    pub fn of(&self, subject_hash: &str) -> Vec<LedgerEntry> {
        self.by_subject
            .get(subject_hash)
            .map(|e| e.iter().rev().cloned().collect())
            .unwrap_or_default()
    }

    /// Whether the topic has been read to the end it had when following began.
    pub fn caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Acquire)
    }

    /// Entries on the topic that were not ledger entries (counted, skipped).
    pub fn unreadable(&self) -> u64 {
        self.unreadable.load(Ordering::Relaxed)
    }

    /// Follows `topic` into the index on a task of `run` until it stops.
    pub fn follow(
        self: &std::sync::Arc<Self>,
        kafka: &KafkaConfig,
        topic: &str,
        run: Run<'_>,
    ) -> anyhow::Result<()> {
        let (mut rx, mut caught_up) = follow(kafka, topic, 1024, run)?;
        let index = self.clone();
        let stop = run.stop.clone();
        run.tasks.spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    entry = rx.recv() => {
                        let Some(entry) = entry else { return };
                        match entry.value.as_deref().map(serde_json::from_slice::<LedgerEntry>) {
                            Some(Ok(e)) => index.add(e),
                            _ => {
                                index.unreadable.fetch_add(1, Ordering::Relaxed);
                                metrics::counter!("telegate_console_ledger_unreadable_total").increment(1);
                            }
                        }
                    }
                    changed = caught_up.changed(), if !index.caught_up() => {
                        if changed.is_err() || *caught_up.borrow() {
                            index.caught_up.store(true, Ordering::Release);
                        }
                    }
                }
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{Action, Channel};

    fn entry(at: i64, action: Action) -> LedgerEntry {
        LedgerEntry {
            subject_hash: "ab".into(),
            key_id: "index-1".into(),
            action,
            target: String::new(),
            value: serde_json::json!(true),
            effective_at_ms: at,
            recorded_at_ms: at,
            channel: Channel::Console,
            text_version: String::new(),
            actor: "anna".into(),
            reason: "CASE-1".into(),
        }
    }

    #[test]
    fn entries_are_kept_once_newest_first_and_bounded() {
        let index = LedgerIndex::default();
        index.add(entry(2, Action::Consent));
        index.add(entry(1, Action::Settings));
        index.add(entry(2, Action::Consent));
        let got: Vec<_> = index.of("ab").iter().map(|e| e.recorded_at_ms).collect();
        assert_eq!(got, vec![2, 1]);
        for at in 3..(3 + ENTRIES_PER_VEHICLE as i64) {
            index.add(entry(at, Action::Objection));
        }
        let all = index.of("ab");
        assert_eq!(all.len(), ENTRIES_PER_VEHICLE);
        assert_eq!(all[0].recorded_at_ms, 2 + ENTRIES_PER_VEHICLE as i64);
        assert!(index.of("cd").is_empty());
    }
}
