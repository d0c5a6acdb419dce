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

    /// Keeps at most `max` points (at least 2), with one point per time: points of equal time
    /// become one, and while there are more than `max`, the oldest become one at the earliest
    /// of their times. Either way the value kept is `join` of the values it replaces. Returns
    /// the time of the newest point folded into the first, if any was.
    pub fn bound(&mut self, max: usize, join: impl Fn(&T, &T) -> T) -> Option<i64> {
        let mut i = 1;
        while i < self.points.len() {
            if self.points[i - 1].0 == self.points[i].0 {
                let (_, v) = self.points.remove(i);
                self.points[i - 1].1 = join(&self.points[i - 1].1, &v);
            } else {
                i += 1;
            }
        }
        let excess = self
            .points
            .len()
            .checked_sub(max.max(2))
            .filter(|e| *e > 0)?;
        self.fold_first(excess + 1, join)
    }

    /// Makes every point at or before `until_ms` one, at the earliest of their times, with
    /// `join` of their values.
    pub fn fold_through(&mut self, until_ms: i64, join: impl Fn(&T, &T) -> T) {
        let n = self.points.partition_point(|(t, _)| *t <= until_ms);
        self.fold_first(n, join);
    }

    /// Folds the first `n` points into the first; the newest folded time, if any.
    fn fold_first(&mut self, n: usize, join: impl Fn(&T, &T) -> T) -> Option<i64> {
        if n < 2 {
            return None;
        }
        let folded: Vec<(i64, T)> = self.points.drain(1..n).collect();
        let newest = folded.last().map(|(t, _)| *t);
        for (_, v) in folded {
            self.points[0].1 = join(&self.points[0].1, &v);
        }
        newest
    }

    fn first_time(&self) -> Option<i64> {
        self.points.first().map(|(t, _)| *t)
    }

    fn last_time(&self) -> Option<i64> {
        self.points.last().map(|(t, _)| *t)
    }

    /// When the last point only repeats the one before it, moves it to `at_ms`; false
    /// otherwise.
    fn move_repeat_to(&mut self, at_ms: i64) -> bool
    where
        T: PartialEq,
    {
        match self.points.as_mut_slice() {
            [.., (_, a), (t, b)] if a == b => {
                *t = at_ms;
                true
            }
            _ => false,
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

/// The most points a vehicle's settings timeline keeps. A point is about 130 bytes plus its
/// per-service toggles (only those the pack names are kept), so even with every toggle of
/// the largest shipped pack set, the timeline stays a few kilobytes: what one vehicle can
/// make the gateway store and write does not grow with the number of privacy frames it
/// sends. Eight points answer late frames exactly across the last seven changes; a frame
/// captured before those is judged against the stricter of the settings it could have had.
pub const MAX_SETTINGS_POINTS: usize = 8;

/// Everything recorded about one vehicle.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SubjectRecord {
    /// Privacy settings frames, by capture time, at most [`MAX_SETTINGS_POINTS`].
    pub settings: Timeline<Settings>,
    /// Set once older settings were folded together to keep the timeline bounded: the first
    /// settings point then stands for every report captured from its time up to this one,
    /// with the stricter of their settings. Absent while nothing was folded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub settings_folded_until: Option<i64>,
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

impl Settings {
    /// Settings no more permissive than either: a mode on if it is on in either, a service
    /// group on only if it is on in both. A per-service toggle is off if either has it off,
    /// on if both have it on, and otherwise absent; absent is as permissive as on where a
    /// pack switches a service off by its toggle, and as strict as off where a pack requires
    /// the toggle to be on, so the result is the stricter of the two under either reading.
    pub fn stricter(&self, other: &Settings) -> Settings {
        let mut services = BTreeMap::new();
        for id in self.services.keys().chain(other.services.keys()) {
            let toggle = match (self.services.get(id), other.services.get(id)) {
                (Some(false), _) | (_, Some(false)) => false,
                (Some(true), Some(true)) => true,
                _ => continue,
            };
            services.insert(id.clone(), toggle);
        }
        Settings {
            private_mode: self.private_mode || other.private_mode,
            offline_mode: self.offline_mode || other.offline_mode,
            location_services: self.location_services && other.location_services,
            non_location_services: self.non_location_services && other.non_location_services,
            services,
        }
    }
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
        self.settings_folded_until = self.settings_folded_until.max(other.settings_folded_until);
        self.bound_settings();
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

    /// Applies a privacy-settings frame captured at `at_ms` (every toggle it carries; the
    /// policy's [`crate::admit`] keeps only those its pack names). See [`record`](Self::record).
    pub fn record_settings(&mut self, at_ms: i64, settings: &pb::PrivacySettings) -> bool {
        self.record(at_ms, Settings::from(settings))
    }

    /// Records `settings` as reported for `at_ms`; false if that changed nothing.
    ///
    /// A report that repeats the settings in force at its capture time adds no point. One
    /// captured after the newest point is still kept as the newest report's time (the last
    /// point moves, or one is added): a report that arrives later but was captured before it
    /// must not count beyond it. A report captured before the newest point counts with the
    /// stricter of its settings and those in force at its time, since repeats captured after
    /// it were not kept. The timeline then keeps at most [`MAX_SETTINGS_POINTS`] points (see
    /// [`bound_settings`](Self::bound_settings)).
    pub fn record(&mut self, at_ms: i64, settings: Settings) -> bool {
        let in_force = self.settings_at(at_ms);
        let newest = self.settings.last_time();
        let late = newest.is_some_and(|n| at_ms < n);
        let value = if late {
            settings.stricter(in_force)
        } else {
            settings
        };
        if value == *in_force && (late || newest == Some(at_ms)) {
            return false;
        }
        let before = (self.settings.clone(), self.settings_folded_until);
        if value != *before.0.at(at_ms).unwrap_or(&FACTORY_SETTINGS)
            || !self.settings.move_repeat_to(at_ms)
        {
            self.settings.set(at_ms, value);
        }
        self.bound_settings();
        (&self.settings, self.settings_folded_until) != (&before.0, before.1)
    }

    /// Holds the settings timeline to [`MAX_SETTINGS_POINTS`] points, one per capture time.
    /// The oldest points become one carrying the stricter of their settings
    /// ([`Settings::stricter`]), and so does anything later recorded or merged into the span
    /// they covered (up to `settings_folded_until`): a late frame captured in that span is
    /// judged against settings at least as strict as the vehicle really had, never more
    /// permissive ones. Settings at the same capture time become their stricter too. The
    /// result depends only on the points and the span, not on the order they were recorded
    /// or merged in, so replicas that merge each other's records converge.
    pub fn bound_settings(&mut self) {
        if let Some(until) = self.settings_folded_until {
            self.settings.fold_through(until, Settings::stricter);
        }
        if let Some(newest) = self.settings.bound(MAX_SETTINGS_POINTS, Settings::stricter) {
            self.settings_folded_until = self.settings_folded_until.max(Some(newest));
        }
    }

    /// Drops history no admissible frame can ask about.
    pub fn compact(&mut self, horizon_ms: i64) {
        self.settings.compact(horizon_ms);
        // The folded point itself was forgotten: what is left is exact.
        let first = self.settings.first_time();
        if self
            .settings_folded_until
            .is_some_and(|until| first.is_none_or(|t| t > until))
        {
            self.settings_folded_until = None;
        }
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

    fn settings(edit: impl FnOnce(&mut Settings)) -> Settings {
        let mut s = Settings::default();
        edit(&mut s);
        s
    }

    /// True if `a` is at least as strict as `b`: judging against `a` drops whatever `b` drops.
    fn at_least_as_strict(a: &Settings, b: &Settings) -> bool {
        a.stricter(b) == *a
    }

    #[test]
    fn a_repeated_setting_changes_nothing() {
        let private = settings(|s| s.private_mode = true);
        let mut r = SubjectRecord::default();
        assert!(r.record(1_000, private.clone()));
        let once = r.clone();
        for i in 0..1_000 {
            assert!(!r.record(1_000, private.clone()), "frame {i}");
        }
        assert!(
            !r.record(500, Settings::default()),
            "before it, as in force"
        );
        assert_eq!(
            r, once,
            "1,000 identical frames leave the record as one did"
        );
        // Repeats captured later keep only the newest report's time.
        for i in 1..=1_000 {
            assert!(r.record(1_000 + i, private.clone()), "frame {i}");
            assert!(!r.record(1_000 + i, private.clone()), "again {i}");
            assert!(!r.record(999 + i, private.clone()), "a late repeat {i}");
        }
        assert_eq!(r.settings.len(), 2, "{:?}", r.settings);
        assert_eq!(r.settings.last_time(), Some(2_000));
        // A report captured before the newest one that loosens the settings counts only
        // with what was in force at its time: repeats after it were not kept.
        assert!(!r.record(1_500, Settings::default()));
        assert!(r.settings_at(1_999).private_mode);
        assert!(r.record(2_001, Settings::default()));
        assert!(!r.settings_now().private_mode);
    }

    #[test]
    fn the_stricter_of_two_settings_keeps_every_restriction() {
        let a = settings(|s| {
            s.private_mode = true;
            s.location_services = false;
            s.services = [("a", true), ("b", true), ("c", false), ("d", true)]
                .map(|(k, v)| (k.to_owned(), v))
                .into();
        });
        let b = settings(|s| {
            s.offline_mode = true;
            s.non_location_services = false;
            s.services = [("a", true), ("b", false), ("c", true), ("e", false)]
                .map(|(k, v)| (k.to_owned(), v))
                .into();
        });
        let s = a.stricter(&b);
        assert!(s.private_mode && s.offline_mode);
        assert!(!s.location_services && !s.non_location_services);
        let want: BTreeMap<String, bool> = [("a", true), ("b", false), ("c", false), ("e", false)]
            .map(|(k, v)| (k.to_owned(), v))
            .into();
        // "d" was on in one and unset in the other: unset is the stricter where a pack
        // requires the toggle, and as permissive as on where a pack switches off by it.
        assert_eq!(s.services, want);
        assert_eq!(s, b.stricter(&a), "commutative");
        assert_eq!(s.stricter(&a), s, "absorbs what it was made of");
        assert!(at_least_as_strict(&s, &a) && at_least_as_strict(&s, &b));
        assert!(!at_least_as_strict(&a, &s));
    }

    #[test]
    fn the_oldest_points_fold_into_the_strictest_of_them() {
        let mut r = SubjectRecord::default();
        let private = settings(|s| s.private_mode = true);
        let no_location = settings(|s| s.location_services = false);
        r.record(10, private.clone());
        r.record(20, no_location.clone());
        for i in 0..MAX_SETTINGS_POINTS as i64 {
            r.record(
                100 + i,
                settings(|s| _ = s.services.insert(format!("s{i}"), true)),
            );
        }
        assert_eq!(r.settings.len(), MAX_SETTINGS_POINTS);
        let folded = r.settings_at(10);
        assert!(
            folded.private_mode && !folded.location_services,
            "{folded:?}"
        );
        assert_eq!(
            r.settings_at(20),
            folded,
            "the fold covers the span of its points"
        );
        assert_eq!(
            r.settings_at(9),
            &Settings::default(),
            "nothing before the first"
        );
        assert_eq!(
            r.settings_now()
                .services
                .get(&format!("s{}", MAX_SETTINGS_POINTS - 1)),
            Some(&true),
            "the newest points are exact"
        );
    }

    /// A small deterministic generator, so the randomized tests need no dependency.
    struct Xorshift(u64);
    impl Xorshift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn settings(&mut self) -> Settings {
            let bits = self.next();
            let services = (0..4)
                .filter(|i| bits >> (8 + 2 * i) & 1 == 1)
                .map(|i| (format!("s{i}"), bits >> (9 + 2 * i) & 1 == 1))
                .collect();
            Settings {
                private_mode: bits & 0b111 == 0,
                offline_mode: bits & 0b11000 == 0,
                location_services: bits & 0b100000 != 0,
                non_location_services: bits & 0b1000000 != 0,
                services,
            }
        }
    }

    /// What the vehicle really had at `t`: the last frame captured at or before it.
    fn really(frames: &[(i64, Settings)], t: i64) -> Settings {
        frames
            .iter()
            .filter(|(at, _)| *at <= t)
            .max_by_key(|(at, _)| *at)
            .map_or_else(Settings::default, |(_, s)| s.clone())
    }

    #[test]
    fn a_late_frame_is_never_judged_more_permissively_after_a_fold() {
        for seed in 1..=20u64 {
            let mut rng = Xorshift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut r = SubjectRecord::default();
            let mut frames: Vec<(i64, Settings)> = Vec::new();
            for _ in 0..300 {
                // Distinct capture times, arriving in any order: mostly in order, some late.
                let at = loop {
                    let t = if rng.below(4) == 0 {
                        rng.below(10_000) as i64
                    } else {
                        frames.iter().map(|(t, _)| *t).max().unwrap_or(0) + 1 + rng.below(50) as i64
                    };
                    if frames.iter().all(|(u, _)| *u != t) {
                        break t;
                    }
                };
                let s = if rng.below(3) == 0 {
                    really(&frames, at)
                } else {
                    rng.settings()
                };
                frames.push((at, s.clone()));
                r.record(at, s);
                assert!(r.settings.len() <= MAX_SETTINGS_POINTS);
                let newest = frames.iter().map(|(t, _)| *t).max().unwrap_or(0);
                if at == newest {
                    assert_eq!(*r.settings_now(), really(&frames, newest), "now is exact");
                }
                for _ in 0..50 {
                    let t = rng.below(newest as u64 + 100) as i64;
                    let judged = r.settings_at(t);
                    assert!(
                        at_least_as_strict(judged, &really(&frames, t)),
                        "seed {seed}: at {t}, judged {judged:?} but the vehicle had {:?}",
                        really(&frames, t)
                    );
                }
            }
        }
    }

    #[test]
    fn replicas_that_merge_each_other_converge_and_stay_strict() {
        for seed in 1..=20u64 {
            let mut rng = Xorshift(seed.wrapping_mul(0xD1B5_4A32_D192_ED03));
            let (mut a, mut b) = (SubjectRecord::default(), SubjectRecord::default());
            let mut frames: Vec<(i64, Settings)> = Vec::new();
            for i in 0..60i64 {
                let at = i * 10 + rng.below(10) as i64;
                let s = rng.settings();
                frames.push((at, s.clone()));
                // Each replica sees some of the frames, as two gateways a vehicle
                // reconnected between would.
                match rng.below(3) {
                    0 => _ = a.record(at, s),
                    1 => _ = b.record(at, s),
                    _ => {
                        a.record(at, s.clone());
                        b.record(at, s);
                    }
                }
            }
            let mut ab = a.clone();
            ab.merge(&b);
            let mut ba = b.clone();
            ba.merge(&a);
            assert_eq!(ab, ba, "seed {seed}: the order of merging does not matter");
            let mut again = ab.clone();
            again.merge(&a);
            again.merge(&b);
            assert_eq!(
                again, ab,
                "seed {seed}: merging what is known changes nothing"
            );
            assert!(ab.settings.len() <= MAX_SETTINGS_POINTS);
            let newest = frames.iter().map(|(t, _)| *t).max().unwrap_or(0);
            assert_eq!(*ab.settings_now(), really(&frames, newest), "now is exact");
            for t in 0..620 {
                assert!(
                    at_least_as_strict(ab.settings_at(t), &really(&frames, t)),
                    "seed {seed}: at {t}, {:?} but the vehicle had {:?}",
                    ab.settings_at(t),
                    really(&frames, t)
                );
            }
        }
    }
}
