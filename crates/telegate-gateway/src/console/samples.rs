//! A frame of each kind, for asking the policy what it would do: the vehicle page's "active
//! now" column and the policy page's "what happens to a frame". The contents are ordinary
//! readings; what the decisions depend on is the kind, the time and the vehicle's state.

use telegate_frame::{Frame, FrameKind, ValidationConfig, validate, vehicle_topic};

/// The body of a plausible frame of `kind`, as proto3 JSON.
fn body(kind: FrameKind, now_ms: i64) -> serde_json::Value {
    use serde_json::json;
    let location = json!({"latDeg": 48.83412, "lonDeg": 9.15277, "accuracyM": 4});
    let status = json!({"odometerKm": 48211.4, "fuelLevelPct": 52.5, "ignition": "IGNITION_ON"});
    let dtc = json!({"code": "P0301", "ecu": "engine", "status": "DTC_STATUS_ACTIVE",
        "severity": "DTC_SEVERITY_WARNING"});
    match kind {
        FrameKind::Status => json!({"status": status}),
        FrameKind::Diagnostics => {
            json!({"diagnostics": {"dtcs": [dtc], "trigger": "DIAGNOSTICS_TRIGGER_EVENT"}})
        }
        FrameKind::Location => json!({"location": location}),
        FrameKind::Privacy => json!({"privacy": {"locationServices": true,
            "nonLocationServices": true}}),
        FrameKind::Breakdown => json!({"breakdown": {"callId": "call-1",
            "trigger": "BREAKDOWN_TRIGGER_VEHICLE", "consent": {"assistance": true},
            "snapshot": {"status": status, "dtcs": [dtc], "location": location}}}),
        FrameKind::Charging => json!({"charging": {"sessionId": "session-1",
            "phase": "CHARGING_PHASE_ENDED", "energyKwh": 31.5,
            "startedAtMs": (now_ms - 3_600_000).to_string(), "endedAtMs": now_ms.to_string(),
            "current": "CHARGING_CURRENT_DC", "location": location}}),
        FrameKind::Software => json!({"software": {"ecus": [{"ecu": "engine", "version": "4.2.1"}],
            "headUnitVersion": "HU 5.1", "event": "SOFTWARE_EVENT_PERIODIC_REPORT"}}),
    }
}

/// The frame as proto3 JSON, the form `telegate policy explain` reads.
pub(super) fn frame_json(kind: FrameKind, vin: &str, now_ms: i64) -> String {
    let mut frame = body(kind, now_ms);
    if let Some(o) = frame.as_object_mut() {
        o.insert("vin".into(), vin.into());
        o.insert("seq".into(), "1".into());
        o.insert("capturedAtMs".into(), now_ms.to_string().into());
    }
    frame.to_string()
}

/// The frame, validated as the edge would (`None` only if a sample did not validate, which a
/// unit test rules out).
pub(super) fn frame(kind: FrameKind, vin: &str, now_ms: i64) -> Option<Frame> {
    validate(
        &vehicle_topic(vin, kind),
        frame_json(kind, vin, now_ms).as_bytes(),
        now_ms,
        &ValidationConfig::default(),
    )
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use strum::VariantArray;

    #[test]
    fn every_kind_has_a_sample_that_validates() {
        let now = 1_790_000_000_000;
        for kind in FrameKind::VARIANTS {
            let f = frame(*kind, "WP0ZZZ99ZTS392124", now);
            assert_eq!(f.map(|f| f.kind()), Some(*kind), "{kind:?}");
        }
    }
}
