//! Shaping: a forwarded frame becomes the record its service may see (identity form, encoded
//! in the service's format) with the decision in its headers. Also builds the
//! `telegate.rejected` record for a refused frame.

use crate::decide::ConsentState;
use crate::keys::{Keyring, seal};
use crate::pack::{Identity, LocationPrecision, Pack, Purpose, RecordEncoding};
use crate::state::SubjectRecord;
use telegate_frame::pb::{self, RejectedFrame, VehicleFrame, vehicle_frame::Body};
use telegate_frame::schema::confluent_encode;
use telegate_frame::{Categories, DataCategory, Frame, PayloadFormat, Rejection, encode};

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
    /// How the value is encoded: `protobuf` (`telegate.v1.VehicleFrame`), `json` or
    /// `confluent-protobuf` (the Confluent wire format around the protobuf).
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

/// The record `purpose` may receive for `frame`: only its categories and allow-listed
/// fields, location and time at its precision, the subject in its identity form. Anonymous
/// records also lose the per-vehicle sequence number and call, session and charge-point ids.
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
    subject: Option<&SubjectRecord>,
) -> OutRecord {
    let service = pack.service_of(purpose);
    let secret = subject.and_then(|s| s.secret.as_ref());
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
            let p = keys.pseudonym(&purpose.id, frame.vin(), secret);
            (Some(p.into_bytes()), String::new())
        }
        Identity::Sealed => {
            headers.push((header::KEY_ID, keys.active_id().to_string()));
            let p = keys.pseudonym(&purpose.id, frame.vin(), secret);
            // decide() drops sealed purposes for vehicles without key material.
            let sealed = secret
                .map(|s| {
                    let context =
                        format!("{}/{}/{}", purpose.id, frame.seq(), frame.captured_at_ms());
                    seal(s, frame.vin(), context.as_bytes())
                })
                .unwrap_or_default();
            (Some(p.into_bytes()), sealed)
        }
        Identity::Anonymous => (None, String::new()),
    };
    let anonymous = purpose.identity == Identity::Anonymous;
    let captured_at_ms = coarsen_time(frame.captured_at_ms(), purpose.time_precision);
    headers.push((header::POLICY, policy_label.to_owned()));
    headers.push((header::CAPTURED_AT_MS, captured_at_ms.to_string()));
    if !anonymous {
        headers.push((header::SEQ, frame.seq().to_string()));
    }
    headers.push((header::ENCODING, service.encoding.as_str().to_owned()));

    let mut body = frame.body().clone();
    strip_categories(&mut body, purpose.categories);
    purpose.fields.apply(&mut body);
    for_each_location(&mut body, |l| coarsen_location(l, purpose.location));
    if let (Body::Charging(c), Some(_)) = (&mut body, purpose.time_precision) {
        c.started_at_ms = c
            .started_at_ms
            .map(|t| coarsen_time(t, purpose.time_precision));
        c.ended_at_ms = c
            .ended_at_ms
            .map(|t| coarsen_time(t, purpose.time_precision));
    }
    if anonymous {
        strip_identifiers(&mut body);
    }
    let shaped = VehicleFrame {
        vin: vin_field,
        seq: if anonymous { 0 } else { frame.seq() },
        captured_at_ms,
        body: Some(body),
    };
    OutRecord {
        topic: service.topic.clone(),
        key,
        headers,
        payload: match service.encoding {
            RecordEncoding::Protobuf => encode(&shaped, PayloadFormat::Protobuf),
            RecordEncoding::Json => encode(&shaped, PayloadFormat::Json),
            // Id 0 (no registry gives it) only where no gateway registered the schema:
            // `telegate policy explain`.
            RecordEncoding::ConfluentProtobuf => {
                confluent_encode(service.schema_id.unwrap_or(0), &shaped)
            }
        },
    }
}

/// Removes the parts of a frame whose category the purpose may not receive.
fn strip_categories(body: &mut Body, allowed: Categories) {
    let no_location = !allowed.contains(DataCategory::Location);
    match body {
        Body::Breakdown(b) => {
            if let Some(snap) = b.snapshot.as_mut() {
                if !allowed.contains(DataCategory::Status) {
                    snap.status = None;
                }
                if !allowed.contains(DataCategory::Diagnostics) {
                    snap.dtcs.clear();
                }
                if no_location {
                    snap.location = None;
                }
            }
        }
        Body::Charging(c) if no_location => c.location = None,
        _ => {}
    }
}

/// Calls `f` on every location inside a body.
fn for_each_location(body: &mut Body, mut f: impl FnMut(&mut pb::Location)) {
    match body {
        Body::Location(l) => f(l),
        Body::Breakdown(b) => {
            if let Some(l) = b.snapshot.as_mut().and_then(|s| s.location.as_mut()) {
                f(l)
            }
        }
        Body::Charging(c) => {
            if let Some(l) = c.location.as_mut() {
                f(l)
            }
        }
        _ => {}
    }
}

const METRES_PER_DEGREE: f64 = 111_320.0;

/// Snaps a position to the centre of its grid cell of `metres` and drops what would refine
/// it again (altitude); the reported accuracy becomes the cell size.
fn coarsen_location(l: &mut pb::Location, precision: LocationPrecision) {
    let LocationPrecision::Coarse { metres } = precision else {
        return;
    };
    let lat_step = metres / METRES_PER_DEGREE;
    let lat = ((l.lat_deg / lat_step).floor() + 0.5) * lat_step;
    let lon_step = metres / (METRES_PER_DEGREE * lat.to_radians().cos().max(0.01));
    let lon = ((l.lon_deg / lon_step).floor() + 0.5) * lon_step;
    l.lat_deg = lat.clamp(-90.0, 90.0);
    l.lon_deg = lon.clamp(-180.0, 180.0);
    l.altitude_m = None;
    l.accuracy_m = Some(l.accuracy_m.unwrap_or(0.0).max(metres as f32));
}

fn coarsen_time(ms: i64, precision: Option<std::time::Duration>) -> i64 {
    match precision.map(|d| d.as_millis() as i64).filter(|p| *p > 1) {
        Some(p) => ms.div_euclid(p) * p,
        None => ms,
    }
}

/// Ids that link an anonymous record to one vehicle or person.
fn strip_identifiers(body: &mut Body) {
    match body {
        Body::Breakdown(b) => b.call_id.clear(),
        Body::Charging(c) => {
            c.session_id.clear();
            c.evse_id.clear();
        }
        Body::Software(s) => s.campaign_id.clear(),
        _ => {}
    }
}

/// The `telegate.rejected` record for a refused frame: reason, kind, times and a keyed hash
/// of the subject. Never the payload, never a raw VIN.
pub fn rejected_record(
    pack: &Pack,
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
        topic: pack.rejected_topic.clone(),
        key: (!body.subject_hash.is_empty()).then(|| body.subject_hash.clone().into_bytes()),
        headers: vec![
            (header::REASON, body.reason.clone()),
            (header::POLICY, policy_label.to_owned()),
            (header::ENCODING, PayloadFormat::Json.as_str().to_owned()),
        ],
        payload: encode(&body, PayloadFormat::Json),
    }
}
