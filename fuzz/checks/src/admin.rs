//! Admin requests: the protobuf messages the admin API decodes (tonic hands their bytes to
//! prost) and what its handlers make of their fields before any state changes: the VIN, the
//! purpose or feature, the origin, a call id, an explanation's `frame_json`, a sealed value.
//! The handlers themselves live in the gateway (crates/telegate-gateway/src/admin.rs); this
//! check calls the same library functions they call, on the decoded fields.

use crate::fixtures::{PACKS, VIN, secret};
use prost::Message;
use telegate_admin_proto::pb;
use telegate_frame::pb::PlatformRequest;
use telegate_frame::{Vin, decode};
use telegate_policy::{ConsentRule, StateFile, sealed_subject, unseal};

/// Byte 0 picks the request message; the rest is its protobuf encoding. Checks that no
/// request panics its handler's parsing, that a call consent's snapshot request encodes and
/// reads back, and that a sealed value opens only to the VIN it was sealed from.
pub fn admin_request(data: &[u8]) {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    let pack = &PACKS[0];
    match which % 8 {
        0 => {
            if let Ok(r) = pb::ConsentChange::decode(bytes) {
                let _ = vin(&r.vin);
                if let Some(p) = pack.purpose(&r.purpose) {
                    let _ = p.consent == ConsentRule::Standing;
                }
                origin(r.origin);
            }
        }
        1 => {
            if let Ok(r) = pb::PurposeFlag::decode(bytes) {
                let _ = vin(&r.vin);
                let _ = pack.purpose(&r.purpose);
                origin(r.origin);
            }
        }
        2 => {
            if let Ok(r) = pb::Flag::decode(bytes) {
                let _ = vin(&r.vin);
                origin(r.origin);
            }
        }
        3 => {
            if let Ok(r) = pb::ActivationChange::decode(bytes) {
                let _ = vin(&r.vin);
                let feature = ConsentRule::Activation(r.feature.clone());
                let _ = pack.purposes.iter().any(|p| p.consent == feature);
                origin(r.origin);
            }
        }
        4 => {
            if let Ok(r) = pb::CallConsent::decode(bytes) {
                call_consent(r);
            }
        }
        5 => {
            if let Ok(r) = pb::Subject::decode(bytes) {
                let _ = vin(&r.vin);
            }
        }
        6 => {
            if let Ok(r) = pb::ExplainRequest::decode(bytes) {
                explain(&r.frame_json);
            }
        }
        _ => {
            if let Ok(r) = pb::UnsealRequest::decode(bytes) {
                open(&r.sealed);
            }
        }
    }
}

fn vin(s: &str) -> Option<Vin> {
    let vin = Vin::parse(s).ok()?;
    assert_eq!(vin.expose(), s);
    Some(vin)
}

/// The handlers' reading of an origin: an unknown channel counts as the API, a time at or
/// before 0 as now.
fn origin(o: Option<pb::Origin>) {
    let o = o.unwrap_or_default();
    let _ = pb::Channel::try_from(o.channel).unwrap_or(pb::Channel::Api);
    let _ = o.at_ms > 0;
}

fn call_consent(r: pb::CallConsent) {
    if vin(&r.vin).is_none() || r.call_id.is_empty() || r.call_id.len() > 64 {
        return;
    }
    origin(r.origin);
    if r.request_snapshot {
        // The request published to the vehicle, with the call id it was given.
        let request = PlatformRequest {
            request_id: "req-0000000000000001".into(),
            kind: "breakdown-snapshot".into(),
            call_id: r.call_id,
            issued_at_ms: 1,
        };
        let payload = serde_json::to_vec(&request).expect("a platform request serialises");
        let back: PlatformRequest =
            serde_json::from_slice(&payload).expect("a platform request reads back");
        assert_eq!(back, request);
    }
}

/// `Explain`: the handler decodes the frame to find the vehicle's state, then explains the
/// frame under the gateway's pack with that state.
fn explain(frame_json: &str) {
    let Ok((raw, _)) = decode(frame_json.as_bytes()) else {
        return;
    };
    let mut file = StateFile::default();
    if Vin::parse(&raw.vin).is_ok() {
        file.subjects.insert(raw.vin.clone(), Default::default());
    }
    let now = raw.captured_at_ms;
    let _ = telegate_policy::explain(&PACKS[0], frame_json, Some(&file), Some(now));
}

/// `Unseal`: the subject id names the secret; only a value sealed under it opens, to its VIN.
fn open(sealed: &str) {
    let Some(id) = sealed_subject(sealed) else {
        return;
    };
    let secret = secret();
    if id != secret.id {
        assert_eq!(unseal(&secret, sealed), None);
        return;
    }
    if let Some(opened) = unseal(&secret, sealed) {
        assert_eq!(opened.expose(), VIN, "a sealed value opened to another VIN");
    }
}
