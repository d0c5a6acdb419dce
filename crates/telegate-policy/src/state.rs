//! What the decision knows about one vehicle beyond the frame: its privacy settings, standing
//! consents, feature activations and per-call breakdown consents, each as a timeline keyed
//! by capture time, so a decision can ask "what was in force when this was captured?" as
//! well as "what is in force now?". Pure data; the gateway owns and replicates it.

use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::sync::LazyLock;
use telegate_frame::pb;

/// Values over time. `at(t)` is the last value set at or before `t`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Timeline<T> {
    points: Vec<(i64, T)>,
}

/// A timeline read from a state file or another replica's record lists its points in any
/// order; they are put in time order, as `set` keeps them. Points of equal time stay in the
/// order listed, so the one listed last wins, as the one set last does.
impl<'de, T: Deserialize<'de>> Deserialize<'de> for Timeline<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut points = Vec::<(i64, T)>::deserialize(d)?;
        points.sort_by_key(|(t, _)| *t);
        Ok(Self { points })
    }
}

impl<T> Default for Timeline<T> {
    fn default() -> Self {
        Self { points: Vec::new() }
    }
}

impl<T> Timeline<T> {
    /// Records `value` from `at_ms` on. Out-of-order inserts land in time order; at equal
    /// times the later insert wins.
    pub fn set(&mut self, at_ms: i64, value: T) {
        let i = self.points.partition_point(|(t, _)| *t <= at_ms);
        self.points.insert(i, (at_ms, value));
    }

    pub fn at(&self, at_ms: i64) -> Option<&T> {
        let i = self.points.partition_point(|(t, _)| *t <= at_ms);
        i.checked_sub(1).map(|i| &self.points[i].1)
    }

    /// The time the value in force at `at_ms` was set.
    pub fn since(&self, at_ms: i64) -> Option<i64> {
        let i = self.points.partition_point(|(t, _)| *t <= at_ms);
        i.checked_sub(1).map(|i| self.points[i].0)
    }

    pub fn latest(&self) -> Option<&T> {
        self.points.last().map(|(_, v)| v)
    }

    /// Adds every point of `other` not already present: replicas that merge each other's
    /// timelines converge whatever the order.
    pub fn merge(&mut self, other: &Timeline<T>)
    where
        T: Clone + PartialEq,
    {
        for (t, v) in &other.points {
            if !self.points.iter().any(|(u, w)| u == t && w == v) {
                self.set(*t, v.clone());
            }
        }
    }

    pub fn len(&self) -> usize {
        self.points.len()
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// Forgets points no question can reach any more: everything before the last point at or
    /// before `horizon_ms` (frames older than the horizon are rejected anyway).
    pub fn compact(&mut self, horizon_ms: i64) {
        let i = self.points.partition_point(|(t, _)| *t <= horizon_ms);
        if i > 1 {
            self.points.drain(..i - 1);
        }
    }
}

/// A vehicle's settings as it last reported them. Until a vehicle sends its first settings
/// frame, the factory state applies: both service groups on, no private or offline mode.
pub fn factory_settings() -> &'static pb::PrivacySettings {
    static FACTORY: LazyLock<pb::PrivacySettings> = LazyLock::new(|| pb::PrivacySettings {
        private_mode: false,
        offline_mode: false,
        location_services: true,
        non_location_services: true,
        services: Default::default(),
    });
    &FACTORY
}

/// Everything recorded about one vehicle.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SubjectRecord {
    /// Privacy settings frames, by capture time.
    pub settings: Timeline<Settings>,
    /// Standing consent per purpose id (granted = true).
    pub consents: BTreeMap<String, Timeline<bool>>,
    /// Feature activation per feature id (active = true).
    pub activations: BTreeMap<String, Timeline<bool>>,
    /// Consent scopes given within a breakdown call, by call id (calls placed in the app,
    /// where the frame itself carries none).
    pub call_consents: BTreeMap<String, CallConsent>,
    /// Objections per purpose id (true = objecting).
    pub objections: BTreeMap<String, Timeline<bool>>,
    /// Restriction of processing (GDPR Art. 18) for all purposes (true = restricted).
    pub restricted: Timeline<bool>,
    pub account: Account,
    /// Per-vehicle key material. Pseudonyms and sealed VINs derive from it; erasing it makes
    /// every earlier record unlinkable to the VIN.
    pub secret: Option<SubjectSecret>,
    /// For `once_per_vehicle` purposes: "purpose/kind" → start of the last period the vehicle
    /// contributed a record in.
    pub contributions: BTreeMap<String, i64>,
}

/// Whether the vehicle's data may be processed at all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "status")]
pub enum Account {
    #[default]
    Active,
    /// Head-unit reset or account deactivation: processing stops now; the data is deleted
    /// once the retention check has run.
    Blocked { at_ms: i64, delete_after_ms: i64 },
}

/// Random per-vehicle key material, hex encoded. `id` names the subject inside sealed
/// values without revealing the VIN.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SubjectSecret {
    pub id: String,
    pub key: String,
}

impl std::fmt::Debug for SubjectSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubjectSecret")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl SubjectSecret {
    /// From fresh random bytes (the caller's: this crate has no randomness source).
    pub fn from_random(id: [u8; 16], key: [u8; 32]) -> Self {
        Self {
            id: hex::encode(id),
            key: hex::encode(key),
        }
    }

    pub(crate) fn key_bytes(&self) -> Vec<u8> {
        hex::decode(&self.key).unwrap_or_default()
    }
}

/// The settings part of a privacy frame, in a serialisable form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub private_mode: bool,
    pub offline_mode: bool,
    pub location_services: bool,
    pub non_location_services: bool,
    pub services: BTreeMap<String, bool>,
}

impl Default for Settings {
    fn default() -> Self {
        Self::from(factory_settings())
    }
}

impl From<&pb::PrivacySettings> for Settings {
    fn from(p: &pb::PrivacySettings) -> Self {
        Self {
            private_mode: p.private_mode,
            offline_mode: p.offline_mode,
            location_services: p.location_services,
            non_location_services: p.non_location_services,
            services: p.services.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CallConsent {
    pub assistance: bool,
    pub dealer: bool,
}

static FACTORY_SETTINGS: LazyLock<Settings> = LazyLock::new(Settings::default);

impl SubjectRecord {
    /// Settings in force at `at_ms` (factory settings before the first report).
    pub fn settings_at(&self, at_ms: i64) -> &Settings {
        self.settings.at(at_ms).unwrap_or(&FACTORY_SETTINGS)
    }

    pub fn settings_now(&self) -> &Settings {
        self.settings.latest().unwrap_or(&FACTORY_SETTINGS)
    }

    pub fn consent_at(&self, purpose: &str, at_ms: i64) -> bool {
        self.consents
            .get(purpose)
            .and_then(|t| t.at(at_ms))
            .copied()
            .unwrap_or(false)
    }

    pub fn consent_now(&self, purpose: &str) -> bool {
        self.consents
            .get(purpose)
            .and_then(Timeline::latest)
            .copied()
            .unwrap_or(false)
    }

    pub fn active_at(&self, feature: &str, at_ms: i64) -> bool {
        self.activations
            .get(feature)
            .and_then(|t| t.at(at_ms))
            .copied()
            .unwrap_or(false)
    }

    pub fn active_now(&self, feature: &str) -> bool {
        self.activations
            .get(feature)
            .and_then(Timeline::latest)
            .copied()
            .unwrap_or(false)
    }

    pub fn objected_at(&self, purpose: &str, at_ms: i64) -> bool {
        self.objections
            .get(purpose)
            .and_then(|t| t.at(at_ms))
            .copied()
            .unwrap_or(false)
    }

    pub fn objected_now(&self, purpose: &str) -> bool {
        self.objections
            .get(purpose)
            .and_then(Timeline::latest)
            .copied()
            .unwrap_or(false)
    }

    /// Merges another replica's view of the same vehicle. Timelines are unions; a block
    /// wins over active; of two secrets the smaller is kept, so replicas agree.
    pub fn merge(&mut self, other: &SubjectRecord) {
        self.settings.merge(&other.settings);
        for (map, theirs) in [
            (&mut self.consents, &other.consents),
            (&mut self.activations, &other.activations),
            (&mut self.objections, &other.objections),
        ] {
            for (k, t) in theirs {
                map.entry(k.clone()).or_default().merge(t);
            }
        }
        for (call, c) in &other.call_consents {
            let mine = self.call_consents.entry(call.clone()).or_default();
            mine.assistance |= c.assistance;
            mine.dealer |= c.dealer;
        }
        self.restricted.merge(&other.restricted);
        self.account = match (self.account, other.account) {
            (
                Account::Blocked {
                    at_ms: a,
                    delete_after_ms: da,
                },
                Account::Blocked {
                    at_ms: b,
                    delete_after_ms: db,
                },
            ) => Account::Blocked {
                at_ms: a.min(b),
                delete_after_ms: da.min(db),
            },
            (b @ Account::Blocked { .. }, _) | (_, b @ Account::Blocked { .. }) => b,
            _ => Account::Active,
        };
        for (k, t) in &other.contributions {
            let mine = self.contributions.entry(k.clone()).or_insert(*t);
            *mine = (*mine).max(*t);
        }
        self.secret = match (self.secret.take(), &other.secret) {
            (Some(a), Some(b)) => Some(a.min(b.clone())),
            (a, b) => a.or_else(|| b.clone()),
        };
    }

    /// Applies a privacy-settings frame captured at `at_ms`.
    pub fn record_settings(&mut self, at_ms: i64, settings: &pb::PrivacySettings) {
        self.settings.set(at_ms, Settings::from(settings));
    }

    /// Drops history no admissible frame can ask about.
    pub fn compact(&mut self, horizon_ms: i64) {
        self.settings.compact(horizon_ms);
        self.consents
            .values_mut()
            .for_each(|t| t.compact(horizon_ms));
        self.activations
            .values_mut()
            .for_each(|t| t.compact(horizon_ms));
        self.objections
            .values_mut()
            .for_each(|t| t.compact(horizon_ms));
        self.restricted.compact(horizon_ms);
    }
}

/// A state file: subjects by VIN. Used until the replicated consent store exists, and by
/// `telegate policy explain --state`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StateFile {
    pub subjects: BTreeMap<String, SubjectRecord>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timelines_answer_at_any_time_and_accept_out_of_order_inserts() {
        let mut t = Timeline::default();
        t.set(20, "b");
        t.set(10, "a");
        t.set(30, "c");
        assert_eq!(t.at(5), None);
        assert_eq!(t.at(10), Some(&"a"));
        assert_eq!(t.at(25), Some(&"b"));
        assert_eq!(t.latest(), Some(&"c"));
        assert_eq!(t.since(25), Some(20));
        t.set(20, "b2");
        assert_eq!(t.at(20), Some(&"b2"), "later insert at the same time wins");
        t.compact(25);
        assert_eq!(
            t.at(21),
            Some(&"b2"),
            "the value in force at the horizon survives"
        );
        assert_eq!(t.len(), 2);
    }

    /// Found by the state_file fuzz target: a timeline listed out of time order answered from
    /// the wrong point (here: no consent at 5078, though it was granted at 5078 and withdrawn
    /// at 5000), because lookups assume time order.
    #[test]
    fn timelines_read_in_any_order_answer_in_time_order() {
        let t: Timeline<bool> =
            serde_json::from_str("[[5078,true],[5000,false]]").expect("a timeline");
        assert_eq!(t.at(5078), Some(&true));
        assert_eq!(t.at(5077), Some(&false));
        assert_eq!(t.since(6000), Some(5078));
        assert_eq!(t.latest(), Some(&true));
        let t: Timeline<&str> =
            serde_json::from_str(r#"[[30,"c"],[10,"a"],[20,"b"],[10,"a2"]]"#).expect("a timeline");
        assert_eq!(
            t.at(15),
            Some(&"a2"),
            "of equal times, the point listed last wins"
        );
        assert_eq!(t.at(25), Some(&"b"));
        assert_eq!(
            serde_json::to_string(&t).expect("serialises"),
            r#"[[10,"a"],[10,"a2"],[20,"b"],[30,"c"]]"#
        );
    }

    #[test]
    fn unknown_vehicles_have_factory_settings() {
        let r = SubjectRecord::default();
        assert!(r.settings_at(0).location_services && r.settings_now().non_location_services);
        assert!(!r.consent_at("x", 0) && !r.active_now("geofence-alert"));
    }

    #[test]
    fn state_files_round_trip() {
        let text = r#"{"subjects":{"WP0ZZZ99ZTS392124":{
            "consents":{"product-improvement":[[1000,true],[5000,false]]},
            "activations":{"geofence-alert":[[0,true]]},
            "settings":[[2000,{"private_mode":true,"location_services":true,"non_location_services":true}]]}}}"#;
        let f: StateFile = serde_json::from_str(text).expect("valid");
        let r = &f.subjects["WP0ZZZ99ZTS392124"];
        assert!(r.consent_at("product-improvement", 3000));
        assert!(!r.consent_now("product-improvement"));
        assert!(r.settings_at(2500).private_mode);
        assert!(!r.settings_at(1500).private_mode);
    }
}
