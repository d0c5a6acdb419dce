//! The gateway's view of every vehicle's settings and consents. In memory for the hot path;
//! filled from a state file at start and from privacy-settings frames as they arrive. The
//! replicated consent store will sit behind the same methods.

use anyhow::Context;
use dashmap::DashMap;
use std::path::Path;
use telegate_frame::{Vin, pb};
use telegate_policy::{StateFile, SubjectRecord};

#[derive(Debug, Default)]
pub struct StateStore {
    subjects: DashMap<Vin, SubjectRecord>,
}

impl StateStore {
    /// Loads a state file (`{"subjects": {VIN: {...}}}`). Every VIN must be valid.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read state file {}", path.display()))?;
        let file: StateFile = serde_json::from_str(&text)
            .with_context(|| format!("state file {} is not valid", path.display()))?;
        Self::from_file(file)
    }

    pub fn from_file(file: StateFile) -> anyhow::Result<Self> {
        let store = Self::default();
        for (i, (vin, record)) in file.subjects.into_iter().enumerate() {
            // The error names the entry's position, never the VIN.
            let vin =
                Vin::parse(&vin).with_context(|| format!("state file subject #{i}: not a VIN"))?;
            store.subjects.insert(vin, record);
        }
        Ok(store)
    }

    /// Records a settings frame captured at `at_ms`; history older than `horizon_ms` (which
    /// no admissible frame can ask about) is compacted away.
    pub fn record_settings(
        &self,
        vin: Vin,
        at_ms: i64,
        settings: &pb::PrivacySettings,
        horizon_ms: i64,
    ) {
        let mut subject = self.subjects.entry(vin).or_default();
        subject.record_settings(at_ms, settings);
        subject.compact(horizon_ms);
    }

    /// Runs `f` on the vehicle's record (None for a vehicle nothing is known about). Keep `f`
    /// short and synchronous: it holds a shard lock.
    pub fn with<R>(&self, vin: &Vin, f: impl FnOnce(Option<&SubjectRecord>) -> R) -> R {
        match self.subjects.get(vin) {
            Some(r) => f(Some(&r)),
            None => f(None),
        }
    }

    /// Replaces what is known about one vehicle.
    pub fn put(&self, vin: Vin, record: SubjectRecord) {
        self.subjects.insert(vin, record);
    }

    pub fn len(&self) -> usize {
        self.subjects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.subjects.is_empty()
    }
}
