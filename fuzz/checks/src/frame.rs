//! `VehicleFrame` decoding and validation, as the pipeline does it for every MQTT publish, and
//! what the pipeline then does with a valid frame: admission under a shipped pack (decide and
//! shape for each purpose) and re-encoding in either format.

use crate::fixtures::{CAPTURED_AT_MS, KEYS, PACKS, VIN, secret};
use telegate_frame::{
    Frame, FrameKind, PayloadFormat, RejectReason, ValidationConfig, classify, decode, encode,
    validate, vehicle_topic,
};
use telegate_policy::{SubjectRecord, admit, explain, header};

/// Times of arrival relative to the frame's capture: on time, a minute early, ten minutes
/// late (beyond the allowed clock skew) and forty days late (older than the default maximum
/// age).
const ARRIVAL: [i64; 4] = [0, 60_000, -600_000, 40 * 24 * 3600 * 1000];

/// Byte 0 steers (check digit required or not, the topic the frame's own or the example's,
/// the arrival time, the pack); the rest is a binary protobuf payload.
pub fn frame_protobuf(data: &[u8]) {
    frame(data, PayloadFormat::Protobuf);
}

/// Byte 0 steers as for [`frame_protobuf`]; the rest is a proto3-JSON payload.
pub fn frame_json(data: &[u8]) {
    frame(data, PayloadFormat::Json);
}

/// Checks that
/// - a payload that does not decode is refused as `decode-failed` (or earlier, by its size);
/// - a valid frame is the decoded frame, in the format it came in;
/// - a valid frame re-encoded in either format (as shaping does for a service) decodes and
///   validates to the same frame;
/// - admission under a shipped pack yields records whose payloads decode in the encoding
///   their header names, each with a body;
/// - `telegate policy explain` explains it.
fn frame(data: &[u8], format: PayloadFormat) {
    let Some((&steer, payload)) = data.split_first() else {
        return;
    };
    if PayloadFormat::sniff(payload) != format {
        return;
    }
    let cfg = ValidationConfig {
        require_check_digit: steer & 1 != 0,
        ..ValidationConfig::default()
    };
    let decoded = decode(payload);
    // The topic a vehicle would publish this frame on, so that validation gets past the
    // topic checks; or the example vehicle's status topic.
    let (topic, now) = match &decoded {
        Ok((raw, _)) if steer & 2 == 0 => {
            let kind = raw
                .body
                .as_ref()
                .map_or(FrameKind::Status, FrameKind::of_body);
            let late = ARRIVAL[usize::from((steer >> 2) & 3)];
            (
                vehicle_topic(&raw.vin, kind),
                raw.captured_at_ms.saturating_add(late),
            )
        }
        _ => (vehicle_topic(VIN, FrameKind::Status), CAPTURED_AT_MS),
    };
    let frame = match validate(&topic, payload, now, &cfg) {
        Ok(frame) => frame,
        Err(rej) => {
            assert!(!rej.detail.is_empty());
            if decoded.is_err() {
                assert!(
                    matches!(
                        rej.reason,
                        RejectReason::DecodeFailed | RejectReason::PayloadTooLarge
                    ),
                    "{rej:?} for a payload that does not decode"
                );
            }
            return;
        }
    };
    let (raw, decoded_as) = decoded.expect("a valid frame decodes");
    assert_eq!(frame.proto(), &raw);
    assert_eq!(frame.format(), decoded_as);
    assert_eq!(decoded_as, format);
    let _ = classify(&frame);
    re_encoded(&frame, &topic, now, &cfg);
    admitted(&frame, now, &cfg, usize::from(steer >> 4));
}

/// Both encodings a service may take hold the same frame.
fn re_encoded(frame: &Frame, topic: &str, now: i64, cfg: &ValidationConfig) {
    let any_size = ValidationConfig {
        max_payload_bytes: usize::MAX,
        ..cfg.clone()
    };
    for format in [PayloadFormat::Protobuf, PayloadFormat::Json] {
        let bytes = encode(frame.proto(), format);
        let again = validate(topic, &bytes, now, &any_size).unwrap_or_else(|rej| {
            panic!(
                "a valid frame re-encoded in {} is refused: {rej:?}",
                format.as_str()
            )
        });
        assert_eq!(
            again.proto(),
            frame.proto(),
            "{} round trip",
            format.as_str()
        );
        assert_eq!(again.format(), format);
    }
}

fn admitted(frame: &Frame, now: i64, cfg: &ValidationConfig, which: usize) {
    let pack = &PACKS[which % PACKS.len()];
    let mut record = SubjectRecord::default();
    let admission = admit(
        pack,
        &pack.label(),
        &KEYS,
        frame,
        &mut record,
        now.saturating_sub(cfg.max_age_ms),
        secret,
    );
    for r in &admission.records {
        let (shaped, format) = decode(&r.payload)
            .unwrap_or_else(|e| panic!("a record for {} does not decode: {e}", r.topic));
        assert_eq!(
            Some(format.as_str()),
            r.header(header::ENCODING),
            "a record's encoding header"
        );
        assert!(
            shaped.body.is_some(),
            "a record for {} has no body",
            r.topic
        );
    }
    let json = String::from_utf8(encode(frame.proto(), PayloadFormat::Json))
        .expect("proto3-JSON is UTF-8");
    explain(pack, &json, None, Some(now)).expect("a valid frame can be explained");
}
