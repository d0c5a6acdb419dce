//! Topic parsing: `/tenants/{VIN}/v1/{kind}` from whatever string a vehicle publishes on, and
//! the VIN in it.

use crate::fixtures::{CAPTURED_AT_MS, FRAMES, VIN};
use std::sync::LazyLock;
use telegate_frame::VehicleTopic;
use telegate_frame::{
    FrameKind, PayloadFormat, RejectReason, ValidationConfig, Vin, check_digit, decode, encode,
    validate, vehicle_topic,
};

/// The example status frame in protobuf: valid on the topic `/tenants/{VIN}/v1/status`.
static STATUS: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let (raw, _) = decode(FRAMES[0].1.trim().as_bytes()).expect("the status example decodes");
    encode(&raw, PayloadFormat::Protobuf)
});

/// Checks that
/// - a topic that parses is exactly `/tenants/{vin}/v1/{kind}` again, with non-empty parts
///   and a kind of one level, and a known kind round-trips through `vehicle_topic`;
/// - a VIN that parses is the same 17 characters, and neither its `Debug` nor its `Display`
///   shows it;
/// - validation of a valid frame on this topic refuses a topic that does not parse as
///   `topic-malformed`, an unknown kind as `kind-unknown`, and accepts only the frame's own
///   topic.
pub fn topic(data: &[u8]) {
    // A VIN straight from the bytes, and its check digit.
    if let Ok(bytes) = <[u8; 17]>::try_from(data) {
        let _ = check_digit(&bytes);
    }
    let Ok(topic) = std::str::from_utf8(data) else {
        return;
    };
    vin(topic);
    let parts = VehicleTopic::parse(topic);
    if let Some(p) = parts {
        assert_eq!(format!("/tenants/{}/v1/{}", p.vin, p.kind), topic);
        assert!(!p.vin.is_empty() && !p.kind.is_empty() && !p.kind.contains('/'));
        if let Some(kind) = FrameKind::parse(p.kind) {
            assert_eq!(kind.as_str(), p.kind);
            assert_eq!(vehicle_topic(p.vin, kind), topic);
        }
        vin(p.vin);
    }
    let cfg = ValidationConfig::default();
    match validate(topic, &STATUS, CAPTURED_AT_MS, &cfg) {
        Ok(frame) => {
            assert_eq!(topic, vehicle_topic(VIN, FrameKind::Status));
            assert_eq!(frame.vin().expose(), VIN);
        }
        Err(rej) => match parts {
            None => assert_eq!(rej.reason, RejectReason::TopicMalformed),
            Some(p) if FrameKind::parse(p.kind).is_none() => {
                assert_eq!(rej.reason, RejectReason::KindUnknown)
            }
            Some(p) => {
                assert_eq!(rej.subject.as_deref(), Some(p.vin));
                assert!(
                    matches!(
                        rej.reason,
                        RejectReason::VinMalformed
                            | RejectReason::VinMismatch
                            | RejectReason::KindMismatch
                    ),
                    "{rej:?} for a well-formed topic"
                );
            }
        },
    }
}

fn vin(s: &str) {
    let Ok(vin) = Vin::parse(s) else {
        return;
    };
    assert_eq!(vin.expose(), s);
    assert_eq!(s.len(), 17);
    let _ = vin.check_digit_ok();
    let shown = format!("{vin:?} {vin}");
    assert!(!shown.contains(s), "a VIN's Debug or Display shows it");
}
