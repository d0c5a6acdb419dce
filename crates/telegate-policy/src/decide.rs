//! The decision: for one validated frame and each purpose that could take it, forward or
//! drop, and the rule that decided. Settings and consents are read at the frame's capture
//! time and as they stand now; the stricter wins, so a withdrawal or a privacy mode switched
//! on after capture still stops a frame that arrives late. Pure: the caller supplies the
//! subject's state.

use crate::pack::{ConsentRule, EventScope, Identity, LegalBasis, OffCondition, Pack, Purpose};
use crate::state::{Account, Settings, SubjectRecord};
use std::fmt;
use std::sync::LazyLock;
use telegate_frame::Frame;
use telegate_frame::pb::vehicle_frame::Body;

/// The consent state a decision used; the `telegate-consent` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConsentState {
    Granted,
    NotRequired,
}

impl ConsentState {
    pub fn as_str(self) -> &'static str {
        match self {
            ConsentState::Granted => "granted",
            ConsentState::NotRequired => "not-required",
        }
    }
}

/// Why a purpose did not receive a frame. A closed set: each is a metric label, its kebab-case
/// name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[derive(strum::EnumCount, strum::VariantArray, strum::IntoStaticStr)]
#[strum(serialize_all = "kebab-case")]
pub enum DropReason {
    OfflineMode,
    PrivateMode,
    LocationServicesOff,
    NonLocationServicesOff,
    ServiceToggleOff,
    RequirementOff,
    ConsentMissing,
    ConsentWithdrawn,
    EventConsentMissing,
    ActivationMissing,
    AccountBlocked,
    Restricted,
    Objected,
    SubjectKeyMissing,
    AlreadyContributed,
}

impl DropReason {
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// A dense index, for per-reason tables of [`strum::EnumCount::COUNT`] entries.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// The outcome for one purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Forward(ConsentState),
    Drop(DropReason),
}

/// Which state a rule looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// The state in force when the frame was captured.
    Capture,
    /// The latest state (a withdrawal since capture).
    Now,
}

impl When {
    fn phrase(self) -> &'static str {
        match self {
            When::Capture => "at capture time",
            When::Now => "since capture (the stricter state wins)",
        }
    }
}

/// The rule that decided, for explanations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    Basis(LegalBasis),
    Offline(When),
    Off(OffCondition, When),
    Requires {
        toggle: String,
        when: When,
    },
    StandingConsent {
        granted_since_ms: Option<i64>,
    },
    ConsentMissing,
    ConsentWithdrawn,
    EventConsent {
        scope: EventScope,
        given: bool,
    },
    Activation {
        feature: String,
        active: bool,
        when: When,
    },
    AccountBlocked,
    Restricted(When),
    Objected {
        when: When,
        direct_marketing: bool,
    },
    SubjectKeyMissing,
    AlreadyContributed {
        period_start_ms: i64,
    },
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::Basis(b) => write!(f, "legal basis {}: no consent needed", b.as_str()),
            Rule::Offline(w) => write!(
                f,
                "offline mode was on {}: nothing is collected",
                w.phrase()
            ),
            Rule::Off(c, w) => write!(f, "off_when {} held {}", c.as_str(), w.phrase()),
            Rule::Requires { toggle, when } => {
                write!(
                    f,
                    "requires toggle {toggle:?} on, but it was not {}",
                    when.phrase()
                )
            }
            Rule::StandingConsent {
                granted_since_ms: Some(t),
            } => {
                write!(
                    f,
                    "standing consent granted (in force since {t} ms) and not withdrawn"
                )
            }
            Rule::StandingConsent {
                granted_since_ms: None,
            } => write!(f, "standing consent granted"),
            Rule::ConsentMissing => write!(f, "no standing consent in force at capture time"),
            Rule::ConsentWithdrawn => write!(f, "consent was withdrawn after capture"),
            Rule::EventConsent { scope, given: true } => {
                write!(f, "consent for {} given within this call", scope.as_str())
            }
            Rule::EventConsent {
                scope,
                given: false,
            } => {
                write!(
                    f,
                    "no consent for {} given within this call",
                    scope.as_str()
                )
            }
            Rule::Activation {
                feature,
                active: true,
                ..
            } => {
                write!(f, "feature {feature} activated for this vehicle")
            }
            Rule::Activation {
                feature,
                active: false,
                when,
            } => {
                write!(f, "feature {feature} not activated {}", when.phrase())
            }
            Rule::AccountBlocked => write!(f, "the account is blocked: its data awaits deletion"),
            Rule::Restricted(w) => write!(f, "processing is restricted {}", w.phrase()),
            Rule::Objected {
                when,
                direct_marketing: true,
            } => write!(
                f,
                "objection to direct marketing {}: absolute",
                when.phrase()
            ),
            Rule::Objected { when, .. } => write!(
                f,
                "objection to this legitimate-interest purpose {}",
                when.phrase()
            ),
            Rule::SubjectKeyMissing => write!(f, "no key material for this vehicle yet"),
            Rule::AlreadyContributed { period_start_ms } => write!(
                f,
                "this vehicle already contributed a record for the period from {period_start_ms} ms"
            ),
        }
    }
}

/// A verdict and the rule behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    pub rule: Rule,
}

impl Decision {
    fn drop(reason: DropReason, rule: Rule) -> Self {
        Self {
            verdict: Verdict::Drop(reason),
            rule,
        }
    }

    fn forward(consent: ConsentState, rule: Rule) -> Self {
        Self {
            verdict: Verdict::Forward(consent),
            rule,
        }
    }
}

static NOBODY: LazyLock<SubjectRecord> = LazyLock::new(SubjectRecord::default);

/// Whether offline mode covered this frame (at capture time, or now). Offline mode is global:
/// it switches off every purpose and, beyond policy, means nothing of the frame is kept.
pub fn offline(captured_at_ms: i64, subject: Option<&SubjectRecord>) -> Option<When> {
    let s = subject.unwrap_or(&NOBODY);
    if s.settings_at(captured_at_ms).offline_mode {
        Some(When::Capture)
    } else if s.settings_now().offline_mode {
        Some(When::Now)
    } else {
        None
    }
}

fn holds(c: OffCondition, settings: &Settings, service: &str) -> bool {
    match c {
        OffCondition::PrivateMode => settings.private_mode,
        OffCondition::LocationServicesOff => !settings.location_services,
        OffCondition::NonLocationServicesOff => !settings.non_location_services,
        OffCondition::ServiceToggleOff => settings.services.get(service) == Some(&false),
    }
}

fn off_reason(c: OffCondition) -> DropReason {
    match c {
        OffCondition::PrivateMode => DropReason::PrivateMode,
        OffCondition::LocationServicesOff => DropReason::LocationServicesOff,
        OffCondition::NonLocationServicesOff => DropReason::NonLocationServicesOff,
        OffCondition::ServiceToggleOff => DropReason::ServiceToggleOff,
    }
}

/// What every purpose's decision for one frame shares, looked up once per frame: the
/// subject, the settings at capture time and now, and any verdict that holds for every
/// purpose alike (offline mode, a blocked account, restriction).
struct FrameView<'a> {
    frame: &'a Frame,
    s: &'a SubjectRecord,
    t: i64,
    settings: [(When, &'a Settings); 2],
    all: Option<(DropReason, Rule)>,
}

impl<'a> FrameView<'a> {
    fn new(frame: &'a Frame, subject: Option<&'a SubjectRecord>) -> Self {
        let s = subject.unwrap_or(&NOBODY);
        let t = frame.captured_at_ms();
        let settings = [
            (When::Capture, s.settings_at(t)),
            (When::Now, s.settings_now()),
        ];
        let restricted_at = s.restricted.at(t).copied().unwrap_or(false);
        let all = if let Some(when) = offline(t, subject) {
            Some((DropReason::OfflineMode, Rule::Offline(when)))
        } else if matches!(s.account, Account::Blocked { .. }) {
            Some((DropReason::AccountBlocked, Rule::AccountBlocked))
        } else if restricted_at || s.restricted.latest().copied().unwrap_or(false) {
            let when = if restricted_at {
                When::Capture
            } else {
                When::Now
            };
            Some((DropReason::Restricted, Rule::Restricted(when)))
        } else {
            None
        };
        Self {
            frame,
            s,
            t,
            settings,
            all,
        }
    }
}

/// Decides one purpose for one frame.
pub fn decide(
    pack: &Pack,
    frame: &Frame,
    purpose: &Purpose,
    subject: Option<&SubjectRecord>,
) -> Decision {
    decide_in(pack, &FrameView::new(frame, subject), purpose)
}

fn decide_in(pack: &Pack, v: &FrameView<'_>, purpose: &Purpose) -> Decision {
    if let Some((reason, rule)) = &v.all {
        return Decision::drop(*reason, rule.clone());
    }
    let (frame, s, t) = (v.frame, v.s, v.t);
    // An objection binds legitimate-interest purposes (Art. 21(1)) and, absolutely, direct
    // marketing on any basis (Art. 21(3)). Consent is withdrawn, not objected to.
    let id = purpose.id.as_str();
    if purpose.legal_basis == LegalBasis::LegitimateInterest || purpose.direct_marketing {
        let when = if s.objected_at(id, t) {
            Some(When::Capture)
        } else if s.objected_now(id) {
            Some(When::Now)
        } else {
            None
        };
        if let Some(when) = when {
            let rule = Rule::Objected {
                when,
                direct_marketing: purpose.direct_marketing,
            };
            return Decision::drop(DropReason::Objected, rule);
        }
    }
    if matches!(purpose.identity, Identity::Pseudonym | Identity::Sealed) && s.secret.is_none() {
        return Decision::drop(DropReason::SubjectKeyMissing, Rule::SubjectKeyMissing);
    }
    if let Some((key, start)) = contribution_period(purpose, frame) {
        // A late frame from an earlier period cannot be checked any more: dropping it keeps
        // a count of records a count of vehicles.
        if s.contributions.get(&key).is_some_and(|last| start <= *last) {
            let rule = Rule::AlreadyContributed {
                period_start_ms: start,
            };
            return Decision::drop(DropReason::AlreadyContributed, rule);
        }
    }
    let service = pack.service_of(purpose).id.as_str();
    let states = &v.settings;
    for c in &purpose.off_when {
        if let Some((when, _)) = states.iter().find(|(_, st)| holds(*c, st, service)) {
            return Decision::drop(off_reason(*c), Rule::Off(*c, *when));
        }
    }
    for toggle in &purpose.requires {
        if let Some((when, _)) = states
            .iter()
            .find(|(_, st)| st.services.get(toggle) != Some(&true))
        {
            let rule = Rule::Requires {
                toggle: toggle.clone(),
                when: *when,
            };
            return Decision::drop(DropReason::RequirementOff, rule);
        }
    }
    match &purpose.consent {
        ConsentRule::None => {
            Decision::forward(ConsentState::NotRequired, Rule::Basis(purpose.legal_basis))
        }
        ConsentRule::Standing if !s.consent_at(id, t) => {
            Decision::drop(DropReason::ConsentMissing, Rule::ConsentMissing)
        }
        ConsentRule::Standing if !s.consent_now(id) => {
            Decision::drop(DropReason::ConsentWithdrawn, Rule::ConsentWithdrawn)
        }
        ConsentRule::Standing => Decision::forward(
            ConsentState::Granted,
            Rule::StandingConsent {
                granted_since_ms: s.consents.get(id).and_then(|tl| tl.since(t)),
            },
        ),
        ConsentRule::Event(scope) => {
            let given = event_consent(frame, s, *scope);
            let rule = Rule::EventConsent {
                scope: *scope,
                given,
            };
            if given {
                Decision::forward(ConsentState::Granted, rule)
            } else {
                Decision::drop(DropReason::EventConsentMissing, rule)
            }
        }
        ConsentRule::Activation(feature) => {
            let when = if !s.active_at(feature, t) {
                Some(When::Capture)
            } else if !s.active_now(feature) {
                Some(When::Now)
            } else {
                None
            };
            let rule = Rule::Activation {
                feature: feature.clone(),
                active: when.is_none(),
                when: when.unwrap_or(When::Capture),
            };
            match when {
                None => Decision::forward(ConsentState::Granted, rule),
                Some(_) => Decision::drop(DropReason::ActivationMissing, rule),
            }
        }
    }
}

/// For `once_per_vehicle` purposes: the contribution key ("purpose/kind") and the start of
/// the period the frame's capture time falls in. The caller records a forwarded contribution.
pub fn contribution_period(purpose: &Purpose, frame: &Frame) -> Option<(String, i64)> {
    let period = (purpose.once_per_vehicle?.as_millis() as i64).max(1);
    let start = frame.captured_at_ms().div_euclid(period) * period;
    Some((format!("{}/{}", purpose.id, frame.kind()), start))
}

/// The scope given within the call: carried by the frame (a call placed in the vehicle) or
/// recorded for the call id (a call placed in the app).
fn event_consent(frame: &Frame, s: &SubjectRecord, scope: EventScope) -> bool {
    let Body::Breakdown(call) = frame.body() else {
        return false;
    };
    let pick = |assistance: bool, dealer: bool| match scope {
        EventScope::Assistance => assistance,
        EventScope::Dealer => dealer,
    };
    let in_frame = call.consent.is_some_and(|c| pick(c.assistance, c.dealer));
    let recorded = s
        .call_consents
        .get(&call.call_id)
        .is_some_and(|c| pick(c.assistance, c.dealer));
    in_frame || recorded
}

/// Every purpose the pack routes this frame's kind to, with its decision, in pack order. An
/// empty result means no purpose takes the kind at all (the caller counts it as unrouted).
pub fn decide_all<'p>(
    pack: &'p Pack,
    frame: &'p Frame,
    subject: Option<&'p SubjectRecord>,
) -> impl Iterator<Item = (&'p Purpose, Decision)> + 'p {
    let view = FrameView::new(frame, subject);
    pack.routes(frame.kind())
        .map(move |p| (p, decide_in(pack, &view, p)))
}

#[cfg(test)]
mod tests {
    use super::DropReason;
    use strum::{EnumCount, VariantArray};

    /// The labels of `telegate_records_dropped_total{reason}`: pinned, in declaration order
    /// (the order is the index of per-reason tables).
    #[test]
    fn drop_labels_are_pinned() {
        let pinned = [
            (DropReason::OfflineMode, "offline-mode"),
            (DropReason::PrivateMode, "private-mode"),
            (DropReason::LocationServicesOff, "location-services-off"),
            (
                DropReason::NonLocationServicesOff,
                "non-location-services-off",
            ),
            (DropReason::ServiceToggleOff, "service-toggle-off"),
            (DropReason::RequirementOff, "requirement-off"),
            (DropReason::ConsentMissing, "consent-missing"),
            (DropReason::ConsentWithdrawn, "consent-withdrawn"),
            (DropReason::EventConsentMissing, "event-consent-missing"),
            (DropReason::ActivationMissing, "activation-missing"),
            (DropReason::AccountBlocked, "account-blocked"),
            (DropReason::Restricted, "restricted"),
            (DropReason::Objected, "objected"),
            (DropReason::SubjectKeyMissing, "subject-key-missing"),
            (DropReason::AlreadyContributed, "already-contributed"),
        ];
        assert_eq!(pinned.len(), DropReason::COUNT);
        for (i, (r, label)) in pinned.into_iter().enumerate() {
            assert_eq!(r.as_str(), label);
            assert_eq!(r.index(), i);
            assert_eq!(DropReason::VARIANTS[i], r);
        }
    }
}
