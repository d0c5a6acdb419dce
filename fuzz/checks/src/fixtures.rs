//! What the checks judge fuzzed input against: the shipped packs, a valid frame of every kind,
//! a key ring and a vehicle secret. The seed generator writes its seeds from the same values.

use std::sync::LazyLock;
use telegate_frame::{
    Frame, FrameKind, PayloadFormat, ValidationConfig, decode, encode, validate, vehicle_topic,
};
use telegate_policy::{Keyring, Pack, SubjectSecret};

/// The examples' vehicle, and another.
pub const VIN: &str = "WP0ZZZ99ZTS392124";
pub const OTHER_VIN: &str = "KNAZZZ99ZTS392124";
/// When the example frames were captured (UTC ms).
pub const CAPTURED_AT_MS: i64 = 1_790_000_000_000;

/// Every shipped pack, by name.
pub const PACK_SOURCES: [(&str, &str); 5] = [
    ("reference", include_str!("../../../packs/reference.toml")),
    (
        "porsche-connect",
        include_str!("../../../packs/porsche-connect.toml"),
    ),
    (
        "kia-connect",
        include_str!("../../../packs/kia-connect.toml"),
    ),
    (
        "ev-charging",
        include_str!("../../../packs/ev-charging.toml"),
    ),
    ("loadgen", include_str!("../../../packs/loadgen.toml")),
];

pub static PACKS: LazyLock<Vec<Pack>> = LazyLock::new(|| {
    PACK_SOURCES
        .iter()
        .map(|(name, text)| {
            Pack::from_toml(text).unwrap_or_else(|e| panic!("shipped pack {name} is invalid: {e}"))
        })
        .collect()
});

/// One valid frame of every kind in proto3-JSON, the examples' two first. The privacy frame
/// names one service: protobuf writes a map in hash order, and regenerated seeds should not
/// change.
pub const FRAMES: [(&str, &str); 7] = [
    (
        "status",
        include_str!("../../../examples/frames/status.json"),
    ),
    (
        "breakdown",
        include_str!("../../../examples/frames/breakdown.json"),
    ),
    (
        "diagnostics",
        r#"{"vin":"WP0ZZZ99ZTS392124","seq":"43","capturedAtMs":"1790000000000","diagnostics":{"dtcs":[{"code":"P0301","ecu":"engine","status":"DTC_STATUS_CONFIRMED","occurrences":3,"severity":"DTC_SEVERITY_WARNING"},{"code":"U0100","status":"DTC_STATUS_PENDING"}],"trigger":"DIAGNOSTICS_TRIGGER_IGNITION_SCAN"}}"#,
    ),
    (
        "location",
        r#"{"vin":"WP0ZZZ99ZTS392124","seq":"44","capturedAtMs":"1790000000000","location":{"latDeg":48.83412,"lonDeg":9.15277,"altitudeM":310.5,"speedKmh":52.5,"headingDeg":270,"accuracyM":4}}"#,
    ),
    (
        "privacy",
        r#"{"vin":"WP0ZZZ99ZTS392124","seq":"45","capturedAtMs":"1790000000000","privacy":{"privateMode":false,"offlineMode":false,"locationServices":true,"nonLocationServices":true,"services":{"trip-log":false}}}"#,
    ),
    (
        "charging",
        r#"{"vin":"WP0ZZZ99ZTS392124","seq":"46","capturedAtMs":"1790000000000","charging":{"sessionId":"cs-1","phase":"CHARGING_PHASE_ENDED","energyKwh":41.5,"maxPowerKw":150,"socStartPct":20,"socEndPct":80,"startedAtMs":"1789996400000","endedAtMs":"1789999900000","evseId":"DE*ION*E1234","current":"CHARGING_CURRENT_DC","location":{"latDeg":48.7,"lonDeg":9.1}}}"#,
    ),
    (
        "software",
        r#"{"vin":"WP0ZZZ99ZTS392124","seq":"47","capturedAtMs":"1790000000000","software":{"ecus":[{"ecu":"engine","version":"1.2.3"},{"ecu":"head-unit","version":"24.1"}],"headUnitVersion":"24.1","mapVersion":"2026.10","event":"SOFTWARE_EVENT_UPDATE_INSTALLED","campaignId":"cmp-9"}}"#,
    ),
];

/// [`FRAMES`], validated.
pub static VALID_FRAMES: LazyLock<Vec<Frame>> = LazyLock::new(|| {
    FRAMES
        .iter()
        .map(|(name, json)| {
            let (raw, _) = decode(json.trim().as_bytes())
                .unwrap_or_else(|e| panic!("fixture frame {name}: {e}"));
            let kind = raw.body.as_ref().map(FrameKind::of_body);
            let topic = vehicle_topic(VIN, kind.unwrap_or(FrameKind::Status));
            let payload = encode(&raw, PayloadFormat::Protobuf);
            validate(
                &topic,
                &payload,
                CAPTURED_AT_MS,
                &ValidationConfig::default(),
            )
            .unwrap_or_else(|r| panic!("fixture frame {name} is refused: {r:?}"))
        })
        .collect()
});

/// The pseudonym and state keys every check uses.
pub static KEYS: LazyLock<Keyring> = LazyLock::new(|| Keyring::ephemeral([0x42; 32]));

/// The key material a vehicle gets on first sight, and the one [`sealed`] values are sealed
/// under.
pub fn secret() -> SubjectSecret {
    SubjectSecret::from_random([0x11; 16], [0x22; 32])
}
