//! Shaping: a forwarded frame becomes the record its service may see (identity form, encoded
//! in the service's format) with the decision in its headers. Also builds the
//! `telegate.rejected` record for a refused frame.

use crate::decide::ConsentState;
use crate::keys::Keyring;
use crate::pack::{Identity, Pack, Purpose, REJECTED_TOPIC};
use telegate_frame::pb::{RejectedFrame, VehicleFrame};
use telegate_frame::{Frame, PayloadFormat, Rejection, encode};

/// Header names of the public contract.
pub mod header {
    pub const PURPOSE: &str = "telegate-purpose";
    pub const LEGAL_BASIS: &str = "telegate-legal-basis";
    pub const CONSENT: &str = "telegate-consent";
    pub const SUBJECT: &str = "telegate-subject";
    pub const KEY_ID: &str = "telegate-key-id";
    pub const POLICY: &str = "telegate-policy";
    pub const CAPTURED_AT_MS: &str = "telegate-captured-at-ms";
    pub const SEQ: &str = "telegate-seq";
    /// How the value is encoded: `protobuf` (`telegate.v1.VehicleFrame`) or `json`.
    pub const ENCODING: &str = "telegate-encoding";
    /// On `telegate.rejected`: the reason.
    pub const REASON: &str = "telegate-reason";
}

/// A record ready for the Kafka sink. Keys and payloads are already in the form the
/// service may see; the sink adds nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutRecord {
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub headers: Vec<(&'static str, String)>,
    pub payload: Vec<u8>,
}

impl OutRecord {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The record `purpose` may receive for `frame`.
///
/// The payload is always re-encoded from the decoded frame, never copied from the vehicle's
/// bytes: fields unknown to this build would otherwise pass through unchecked.
pub fn shape(
    pack: &Pack,
    policy_label: &str,
    frame: &Frame,
    purpose: &Purpose,
    consent: ConsentState,
    keys: &Keyring,
) -> OutRecord {
    let service = pack.service_of(purpose);
    let mut headers = Vec::with_capacity(10);
    headers.push((header::PURPOSE, purpose.id.to_string()));
    headers.push((header::LEGAL_BASIS, purpose.legal_basis.as_str().to_owned()));
    headers.push((header::CONSENT, consent.as_str().to_owned()));
    headers.push((header::SUBJECT, purpose.identity.as_str().to_owned()));

    let (key, vin_field) = match purpose.identity {
        Identity::Vin => {
            let vin = frame.vin().expose();
            (Some(vin.as_bytes().to_vec()), vin.to_owned())
        }
        Identity::Pseudonym => {
            headers.push((header::KEY_ID, keys.active_id().to_string()));
            let p = keys.pseudonym(&purpose.id, frame.vin());
            (Some(p.into_bytes()), String::new())
        }
        Identity::Anonymous => (None, String::new()),
    };
    headers.push((header::POLICY, policy_label.to_owned()));
    headers.push((header::CAPTURED_AT_MS, frame.captured_at_ms().to_string()));
    headers.push((header::SEQ, frame.seq().to_string()));
    headers.push((header::ENCODING, service.encoding.as_str().to_owned()));

    let src = frame.proto();
    let shaped = VehicleFrame {
        vin: vin_field,
        seq: src.seq,
        captured_at_ms: src.captured_at_ms,
        body: src.body.clone(),
    };
    OutRecord {
        topic: service.topic.clone(),
        key,
        headers,
        payload: encode(&shaped, service.encoding),
    }
}

/// The `telegate.rejected` record for a refused frame: reason, kind, times and a keyed hash
/// of the subject. Never the payload, never a raw VIN.
pub fn rejected_record(
    policy_label: &str,
    rejection: &Rejection,
    received_at_ms: i64,
    payload_bytes: usize,
    keys: &Keyring,
) -> OutRecord {
    let subject_hash = rejection
        .subject
        .as_deref()
        .map(|s| keys.subject_hash(s))
        .unwrap_or_default();
    let body = RejectedFrame {
        reason: rejection.reason.as_str().to_owned(),
        kind: rejection
            .kind
            .map(|k| k.as_str().to_owned())
            .unwrap_or_default(),
        received_at_ms,
        captured_at_ms: rejection.captured_at_ms.unwrap_or_default(),
        key_id: if subject_hash.is_empty() {
            String::new()
        } else {
            keys.active_id().to_string()
        },
        subject_hash,
        detail: rejection.detail.to_owned(),
        payload_bytes: payload_bytes as u64,
    };
    OutRecord {
        topic: REJECTED_TOPIC.to_owned(),
        key: (!body.subject_hash.is_empty()).then(|| body.subject_hash.clone().into_bytes()),
        headers: vec![
            (header::REASON, body.reason.clone()),
            (header::POLICY, policy_label.to_owned()),
            (header::ENCODING, PayloadFormat::Json.as_str().to_owned()),
        ],
        payload: encode(&body, PayloadFormat::Json),
    }
}
