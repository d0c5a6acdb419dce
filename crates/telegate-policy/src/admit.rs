//! Admission: everything policy makes of one valid frame, as one pure function. The frame and
//! the vehicle's state record go in; the records to produce come out, with the state changes
//! the frame caused, already applied to the record: the settings it carried, key material
//! created on first sight, the periods it contributed to. The gateway holds the record's lock
//! for exactly this call and does only IO around it.
//!
//! The order is the policy's: a privacy frame's settings count from its own capture time;
//! offline mode is judged before anything else is kept, so a frame captured offline creates no
//! key material; contributions are recorded only for purposes that received the frame, after
//! all of its decisions were made.

use crate::Keyring;
use crate::{
    OutRecord, Pack, Settings, SubjectRecord, SubjectSecret, Verdict, contribution_period,
    decide_all, offline, shape,
};
use telegate_frame::Frame;
use telegate_frame::pb;
use telegate_frame::pb::vehicle_frame::Body;

/// What a frame came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Captured in offline mode: nothing of it is kept or forwarded.
    Offline,
    /// No purpose of the pack takes this kind of frame.
    Unrouted,
    /// At least one purpose decided (forward or drop).
    Routed,
}

/// How the vehicle's record changed; a change is replicated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Changes {
    /// A privacy frame changed the settings timeline. False for a privacy frame that repeats
    /// the settings in force at its capture time.
    pub settings: bool,
    /// A privacy frame repeated the settings in force, captured after the newest report: the
    /// timeline keeps its time, no new point (see [`SubjectRecord::record`]).
    pub settings_repeated: bool,
    /// The vehicle got its key material.
    pub secret_created: bool,
    /// Contribution periods recorded (purposes with `once_per_vehicle`).
    pub contributions: usize,
}

impl Changes {
    pub fn any(&self) -> bool {
        self.settings || self.settings_repeated || self.secret_created || self.contributions > 0
    }
}

/// The result of [`admit`].
#[derive(Debug, Clone)]
pub struct Admission {
    pub outcome: Outcome,
    /// Each routed purpose's index in the pack and its verdict, in the pack's order.
    pub verdicts: Vec<(usize, Verdict)>,
    /// The records to produce, one per forwarding purpose.
    pub records: Vec<OutRecord>,
    pub changes: Changes,
    /// Per-service toggles of a privacy frame that were not kept: their ids are not in the
    /// pack (see [`recorded_settings`]).
    pub toggles_ignored: usize,
}

/// What a privacy frame's settings record: the modes and service groups as sent, and the
/// per-service toggles for the ids the pack names (its services' ids and the toggles its
/// purposes require). Toggles for other ids decide nothing under this pack; not keeping them
/// is what bounds a vehicle's record whatever its frames carry.
pub fn recorded_settings(pack: &Pack, sent: &pb::PrivacySettings) -> Settings {
    let known = |id: &str| {
        pack.services.iter().any(|s| s.id.as_str() == id)
            || pack
                .purposes
                .iter()
                .any(|p| p.requires.iter().any(|r| r == id))
    };
    Settings {
        private_mode: sent.private_mode,
        offline_mode: sent.offline_mode,
        location_services: sent.location_services,
        non_location_services: sent.non_location_services,
        services: sent
            .services
            .iter()
            .filter(|(id, _)| known(id))
            .map(|(id, on)| (id.clone(), *on))
            .collect(),
    }
}

/// What the pack decides for `frame`, given and updating the vehicle's `record`.
/// `horizon_ms` bounds the settings history kept (nothing admissible is older); `mint` makes
/// key material when the vehicle has none (randomness stays outside the core).
pub fn admit(
    pack: &Pack,
    label: &str,
    keys: &Keyring,
    frame: &Frame,
    record: &mut SubjectRecord,
    horizon_ms: i64,
    mint: impl FnOnce() -> SubjectSecret,
) -> Admission {
    let mut changes = Changes::default();
    let mut toggles_ignored = 0;
    if let Body::Privacy(sent) = frame.body() {
        let settings = recorded_settings(pack, sent);
        toggles_ignored = sent.services.len() - settings.services.len();
        let at = frame.captured_at_ms();
        let repeat = *record.settings_at(at) == settings;
        if record.record(at, settings) {
            record.compact(horizon_ms);
            changes.settings = !repeat;
            changes.settings_repeated = repeat;
        }
    }
    let mut admission = Admission {
        outcome: Outcome::Offline,
        verdicts: Vec::new(),
        records: Vec::new(),
        changes,
        toggles_ignored,
    };
    if offline(frame.captured_at_ms(), Some(record)).is_some() {
        return admission;
    }
    if record.secret.is_none() {
        record.secret = Some(mint());
        admission.changes.secret_created = true;
    }
    let mut contributed = Vec::new();
    let subject = &*record;
    for (purpose, decision) in decide_all(pack, frame, Some(subject)) {
        admission.verdicts.push((purpose.index, decision.verdict));
        if let Verdict::Forward(consent) = decision.verdict {
            contributed.extend(contribution_period(purpose, frame));
            admission.records.push(shape(
                pack,
                label,
                frame,
                purpose,
                consent,
                keys,
                Some(subject),
            ));
        }
    }
    admission.outcome = if admission.verdicts.is_empty() {
        Outcome::Unrouted
    } else {
        Outcome::Routed
    };
    admission.changes.contributions = contributed.len();
    for (key, start) in contributed {
        let last = record.contributions.entry(key).or_insert(start);
        *last = (*last).max(start);
    }
    admission
}
