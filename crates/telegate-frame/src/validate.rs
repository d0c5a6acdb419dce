//! Every check a frame passes before policy sees it. Each failure is a distinct, bounded
//! [`RejectReason`], so rejections can be counted by reason and explained without content.

use crate::decode::{PayloadFormat, decode};
use crate::kind::{FrameKind, VehicleTopic};
use crate::pb::{VehicleFrame, vehicle_frame::Body};
use crate::vin::{Vin, VinError};

/// Limits a deployment sets. Times are milliseconds here and durations such as `"30days"` in
/// a config file (`max_future_skew`, `max_age`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ValidationConfig {
    /// Require the ISO 3779 check digit (position 9). Off by default: many European VINs
    /// carry none.
    pub require_check_digit: bool,
    /// How far in the future `captured_at_ms` may lie (vehicle clock drift).
    #[serde(rename = "max_future_skew", with = "duration_ms")]
    pub max_future_skew_ms: i64,
    /// How old a frame may be when it arrives (vehicles buffer frames while offline).
    #[serde(rename = "max_age", with = "duration_ms")]
    pub max_age_ms: i64,
    /// Largest payload accepted, in bytes.
    pub max_payload_bytes: usize,
}

impl Default for ValidationConfig {
    fn default() -> Self {
        Self {
            require_check_digit: false,
            max_future_skew_ms: 5 * 60 * 1000,
            max_age_ms: 30 * 24 * 3600 * 1000,
            max_payload_bytes: 64 * 1024,
        }
    }
}

/// Milliseconds written as a human duration (`"5m"`, `"30days"`).
mod duration_ms {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};
    use std::time::Duration;

    pub(super) fn serialize<S: Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
        let d = Duration::from_millis(u64::try_from(*ms).unwrap_or_default());
        s.serialize_str(&humantime::format_duration(d).to_string())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        let text = String::deserialize(d)?;
        let d = humantime::parse_duration(&text).map_err(D::Error::custom)?;
        i64::try_from(d.as_millis()).map_err(D::Error::custom)
    }
}

/// The closed set of rejection reasons; `as_str`, the kebab-case name, is the metric label and
/// the `reason` field of `telegate.rejected`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[derive(strum::EnumCount, strum::VariantArray, strum::IntoStaticStr)]
#[strum(serialize_all = "kebab-case")]
pub enum RejectReason {
    TopicMalformed,
    KindUnknown,
    PayloadTooLarge,
    DecodeFailed,
    VinMalformed,
    VinCheckDigit,
    VinMismatch,
    KindMismatch,
    BodyMissing,
    SeqMissing,
    CapturedAtMissing,
    CapturedInFuture,
    CapturedTooOld,
    ValueOutOfRange,
    /// Refused at the MQTT edge: a topic the sending vehicle may not publish to (another
    /// vehicle's). Never decided by validation; the edge hands such a publish on only to
    /// have its rejection written.
    TopicNotPermitted,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// A dense index, for per-reason tables of [`strum::EnumCount::COUNT`] entries.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// A refused frame: why, and what little may be said about it. `subject` is the raw VIN
/// segment of the topic, kept only so the caller can hash it; it is never displayed.
#[derive(Clone, PartialEq)]
pub struct Rejection {
    pub reason: RejectReason,
    /// Which field or check, bounded (a static path such as `location.lat_deg`).
    pub detail: &'static str,
    pub kind: Option<FrameKind>,
    pub captured_at_ms: Option<i64>,
    pub subject: Option<String>,
}

impl std::fmt::Debug for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rejection")
            .field("reason", &self.reason)
            .field("detail", &self.detail)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// A frame that passed validation: VIN parsed, topic and body agree, values in range.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    vin: Vin,
    kind: FrameKind,
    format: PayloadFormat,
    inner: VehicleFrame,
}

impl Frame {
    pub fn vin(&self) -> &Vin {
        &self.vin
    }
    pub fn kind(&self) -> FrameKind {
        self.kind
    }
    pub fn seq(&self) -> u64 {
        self.inner.seq
    }
    pub fn captured_at_ms(&self) -> i64 {
        self.inner.captured_at_ms
    }
    /// The format the vehicle used.
    pub fn format(&self) -> PayloadFormat {
        self.format
    }
    pub fn body(&self) -> &Body {
        self.inner
            .body
            .as_ref()
            .expect("validate() only builds frames that have a body")
    }
    pub fn proto(&self) -> &VehicleFrame {
        &self.inner
    }
}

/// Validates one MQTT message. `now_ms` is the receive time (an input: this crate reads no
/// clock).
pub fn validate(
    topic: &str,
    payload: &[u8],
    now_ms: i64,
    cfg: &ValidationConfig,
) -> Result<Frame, Rejection> {
    let mut rej = Rejection {
        reason: RejectReason::TopicMalformed,
        detail: "topic",
        kind: None,
        captured_at_ms: None,
        subject: None,
    };
    let Some(parts) = VehicleTopic::parse(topic) else {
        return Err(rej);
    };
    rej.subject = Some(parts.vin.to_owned());
    let Some(topic_kind) = FrameKind::parse(parts.kind) else {
        return Err(fail(rej, RejectReason::KindUnknown, "topic.kind"));
    };
    rej.kind = Some(topic_kind);
    if payload.len() > cfg.max_payload_bytes {
        return Err(fail(rej, RejectReason::PayloadTooLarge, "payload"));
    }
    let topic_vin = match Vin::parse(parts.vin) {
        Ok(v) => v,
        Err(e) => {
            return Err(fail(
                rej,
                RejectReason::VinMalformed,
                vin_detail("topic", e),
            ));
        }
    };
    let (inner, format) = match decode(payload) {
        Ok(v) => v,
        Err(e) => return Err(fail(rej, RejectReason::DecodeFailed, e.0.as_str())),
    };
    if inner.captured_at_ms != 0 {
        rej.captured_at_ms = Some(inner.captured_at_ms);
    }
    let vin = match Vin::parse(&inner.vin) {
        Ok(v) => v,
        Err(e) => return Err(fail(rej, RejectReason::VinMalformed, vin_detail("vin", e))),
    };
    if vin != topic_vin {
        return Err(fail(rej, RejectReason::VinMismatch, "vin"));
    }
    if cfg.require_check_digit && !vin.check_digit_ok() {
        return Err(fail(rej, RejectReason::VinCheckDigit, "vin"));
    }
    let Some(body) = inner.body.as_ref() else {
        return Err(fail(rej, RejectReason::BodyMissing, "body"));
    };
    if FrameKind::of_body(body) != topic_kind {
        return Err(fail(rej, RejectReason::KindMismatch, "body"));
    }
    if inner.seq == 0 {
        return Err(fail(rej, RejectReason::SeqMissing, "seq"));
    }
    if inner.captured_at_ms <= 0 {
        return Err(fail(rej, RejectReason::CapturedAtMissing, "captured_at_ms"));
    }
    if inner.captured_at_ms > now_ms.saturating_add(cfg.max_future_skew_ms) {
        return Err(fail(rej, RejectReason::CapturedInFuture, "captured_at_ms"));
    }
    if inner.captured_at_ms < now_ms.saturating_sub(cfg.max_age_ms) {
        return Err(fail(rej, RejectReason::CapturedTooOld, "captured_at_ms"));
    }
    if let Err(field) = crate::ranges::check_body(body) {
        return Err(fail(rej, RejectReason::ValueOutOfRange, field));
    }
    Ok(Frame {
        vin,
        kind: topic_kind,
        format,
        inner,
    })
}

fn fail(mut rej: Rejection, reason: RejectReason, detail: &'static str) -> Rejection {
    rej.reason = reason;
    rej.detail = detail;
    rej
}

fn vin_detail(which: &'static str, e: VinError) -> &'static str {
    match (which, e) {
        ("topic", VinError::Length) => "topic.vin.length",
        ("topic", VinError::Character) => "topic.vin.character",
        (_, VinError::Length) => "vin.length",
        (_, VinError::Character) => "vin.character",
    }
}

#[cfg(test)]
mod tests {
    use super::RejectReason;
    use strum::{EnumCount, VariantArray};

    /// The labels are metric labels and `telegate.rejected`'s `reason`: pinned, in
    /// declaration order (the order is the index of per-reason tables).
    #[test]
    fn labels_are_pinned() {
        let pinned = [
            (RejectReason::TopicMalformed, "topic-malformed"),
            (RejectReason::KindUnknown, "kind-unknown"),
            (RejectReason::PayloadTooLarge, "payload-too-large"),
            (RejectReason::DecodeFailed, "decode-failed"),
            (RejectReason::VinMalformed, "vin-malformed"),
            (RejectReason::VinCheckDigit, "vin-check-digit"),
            (RejectReason::VinMismatch, "vin-mismatch"),
            (RejectReason::KindMismatch, "kind-mismatch"),
            (RejectReason::BodyMissing, "body-missing"),
            (RejectReason::SeqMissing, "seq-missing"),
            (RejectReason::CapturedAtMissing, "captured-at-missing"),
            (RejectReason::CapturedInFuture, "captured-in-future"),
            (RejectReason::CapturedTooOld, "captured-too-old"),
            (RejectReason::ValueOutOfRange, "value-out-of-range"),
            (RejectReason::TopicNotPermitted, "topic-not-permitted"),
        ];
        assert_eq!(pinned.len(), RejectReason::COUNT);
        for (i, (r, label)) in pinned.into_iter().enumerate() {
            assert_eq!(r.as_str(), label);
            assert_eq!(r.index(), i);
            assert_eq!(RejectReason::VARIANTS[i], r);
        }
    }
}
