//! The decision: for one validated frame and each purpose that could take it, forward or
//! drop, and why. Pure: the caller supplies everything, including time.

use crate::pack::{LegalBasis, Pack, Purpose};
use telegate_frame::Frame;

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

/// Why a purpose did not receive a frame. A closed set: each is a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// The purpose rests on consent and no consent was in force at capture time.
    ConsentMissing,
}

impl DropReason {
    pub const ALL: [DropReason; 1] = [DropReason::ConsentMissing];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::ConsentMissing => "consent-missing",
        }
    }
}

/// The outcome for one purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Forward(ConsentState),
    Drop(DropReason),
}

/// What the decision needs to know about a subject beyond the frame. Backed by a state file
/// or the replicated consent store; the engine only asks.
pub trait SubjectState {
    /// Whether standing consent for `purpose` was in force at `at_ms` (capture time).
    fn consent_at(&self, frame: &Frame, purpose: &Purpose, at_ms: i64) -> bool;
}

/// No consents recorded for anyone: every consent-based purpose drops.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoConsents;

impl SubjectState for NoConsents {
    fn consent_at(&self, _: &Frame, _: &Purpose, _: i64) -> bool {
        false
    }
}

/// Decides one purpose for one frame.
pub fn decide(frame: &Frame, purpose: &Purpose, state: &impl SubjectState) -> Verdict {
    match purpose.legal_basis {
        LegalBasis::Consent => {
            if state.consent_at(frame, purpose, frame.captured_at_ms()) {
                Verdict::Forward(ConsentState::Granted)
            } else {
                Verdict::Drop(DropReason::ConsentMissing)
            }
        }
        LegalBasis::Contract | LegalBasis::LegitimateInterest | LegalBasis::LegalObligation => {
            Verdict::Forward(ConsentState::NotRequired)
        }
    }
}

/// Every purpose the pack routes this frame's kind to, with its verdict, in pack order. An
/// empty result means no purpose takes the kind at all (the caller counts it as unrouted).
pub fn decide_all<'p>(
    pack: &'p Pack,
    frame: &'p Frame,
    state: &'p impl SubjectState,
) -> impl Iterator<Item = (&'p Purpose, Verdict)> + 'p {
    pack.routes(frame.kind())
        .map(move |p| (p, decide(frame, p, state)))
}
