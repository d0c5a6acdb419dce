//! Validation: every reason reachable, decode round trips in both formats.

use proptest::prelude::*;
use telegate_frame::pb::{self, VehicleFrame, vehicle_frame::Body};
use telegate_frame::{
    FrameKind, PayloadFormat, RejectReason, ValidationConfig, check_digit, decode, encode,
    validate, vehicle_topic,
};

const VIN: &str = "WP0ZZZ99ZTS392124";
const NOW: i64 = 1_790_000_000_000;

fn status_frame() -> VehicleFrame {
    VehicleFrame {
        vin: VIN.into(),
        seq: 7,
        captured_at_ms: NOW - 1_000,
        body: Some(Body::Status(pb::Status {
            odometer_km: Some(12_345.6),
            fuel_level_pct: Some(40.0),
            ignition: pb::Ignition::On as i32,
            ..Default::default()
        })),
    }
}

fn run(topic: &str, frame: &VehicleFrame, format: PayloadFormat) -> Result<(), RejectReason> {
    validate(
        topic,
        &encode(frame, format),
        NOW,
        &ValidationConfig::default(),
    )
    .map(|_| ())
    .map_err(|r| r.reason)
}

fn status_topic() -> String {
    vehicle_topic(VIN, FrameKind::Status)
}

#[test]
fn a_good_frame_passes_in_both_formats() {
    for format in [PayloadFormat::Protobuf, PayloadFormat::Json] {
        let payload = encode(&status_frame(), format);
        let frame = validate(&status_topic(), &payload, NOW, &ValidationConfig::default())
            .expect("valid frame");
        assert_eq!(frame.kind(), FrameKind::Status);
        assert_eq!(frame.seq(), 7);
        assert_eq!(frame.vin().expose(), VIN);
        assert_eq!(frame.format(), format);
    }
}

#[test]
fn the_contract_json_example_decodes() {
    let json = format!(
        r#"{{"vin":"{VIN}","seq":"7","capturedAtMs":"{}","location":{{"latDeg":48.8,"lonDeg":9.2}}}}"#,
        NOW - 5
    );
    let frame = validate(
        &vehicle_topic(VIN, FrameKind::Location),
        json.as_bytes(),
        NOW,
        &ValidationConfig::default(),
    )
    .expect("the README example is valid");
    let Body::Location(l) = frame.body() else {
        panic!("location body expected")
    };
    assert_eq!((l.lat_deg, l.lon_deg), (48.8, 9.2));
}

#[test]
fn unknown_json_fields_are_ignored_like_unknown_protobuf_fields() {
    let json = format!(
        r#"{{"vin":"{VIN}","seq":"1","capturedAtMs":"{NOW}","futureField":1,"status":{{"newSensor":3}}}}"#
    );
    assert!(
        validate(
            &status_topic(),
            json.as_bytes(),
            NOW,
            &ValidationConfig::default()
        )
        .is_ok()
    );
}

#[test]
fn each_failure_has_its_own_reason() {
    let f = status_frame();
    let p = PayloadFormat::Protobuf;
    assert_eq!(run("/tenants/x", &f, p), Err(RejectReason::TopicMalformed));
    assert_eq!(
        run(&format!("/tenants/{VIN}/v1/gossip"), &f, p),
        Err(RejectReason::KindUnknown)
    );
    assert_eq!(
        run("/tenants/WP0ZZZ99ZTS39212I/v1/status", &f, p),
        Err(RejectReason::VinMalformed)
    );
    let mut bad_vin = f.clone();
    bad_vin.vin = "SHORT".into();
    assert_eq!(
        run(&status_topic(), &bad_vin, p),
        Err(RejectReason::VinMalformed)
    );
    let mut other_vin = f.clone();
    other_vin.vin = "WP0ZZZ99ZTS392125".into();
    assert_eq!(
        run(&status_topic(), &other_vin, p),
        Err(RejectReason::VinMismatch)
    );
    assert_eq!(
        run(&vehicle_topic(VIN, FrameKind::Location), &f, p),
        Err(RejectReason::KindMismatch)
    );
    let mut no_body = f.clone();
    no_body.body = None;
    assert_eq!(
        run(&status_topic(), &no_body, p),
        Err(RejectReason::BodyMissing)
    );
    let mut no_seq = f.clone();
    no_seq.seq = 0;
    assert_eq!(
        run(&status_topic(), &no_seq, p),
        Err(RejectReason::SeqMissing)
    );
    let mut no_time = f.clone();
    no_time.captured_at_ms = 0;
    assert_eq!(
        run(&status_topic(), &no_time, p),
        Err(RejectReason::CapturedAtMissing)
    );
    let mut future = f.clone();
    future.captured_at_ms = NOW + 3_600_000;
    assert_eq!(
        run(&status_topic(), &future, p),
        Err(RejectReason::CapturedInFuture)
    );
    let mut old = f.clone();
    old.captured_at_ms = NOW - 90 * 24 * 3_600_000;
    assert_eq!(
        run(&status_topic(), &old, p),
        Err(RejectReason::CapturedTooOld)
    );
    let mut nan = f.clone();
    if let Some(Body::Status(s)) = nan.body.as_mut() {
        s.fuel_level_pct = Some(f32::NAN);
    }
    assert_eq!(
        run(&status_topic(), &nan, p),
        Err(RejectReason::ValueOutOfRange)
    );
    let garbage = validate(
        &status_topic(),
        b"{not json",
        NOW,
        &ValidationConfig::default(),
    );
    assert_eq!(
        garbage.map(|_| ()).map_err(|r| r.reason),
        Err(RejectReason::DecodeFailed)
    );
    let big = vec![0u8; ValidationConfig::default().max_payload_bytes + 1];
    let too_big = validate(&status_topic(), &big, NOW, &ValidationConfig::default());
    assert_eq!(
        too_big.map(|_| ()).map_err(|r| r.reason),
        Err(RejectReason::PayloadTooLarge)
    );
}

/// Found by the frame_protobuf fuzz target: a protobuf frame with an enum number its schema
/// does not name (status trigger 18) passed validation, and could then not be written as
/// proto3-JSON for a service that takes JSON (the encoder wrote nothing).
#[test]
fn enum_numbers_outside_the_schema_are_out_of_range() {
    let unknown = 18;
    let mut frames = Vec::new();
    let mut f = status_frame();
    if let Some(Body::Status(s)) = f.body.as_mut() {
        s.trigger = unknown;
    }
    frames.push((f, FrameKind::Status, "status.trigger"));
    let mut f = status_frame();
    if let Some(Body::Status(s)) = f.body.as_mut() {
        s.openings = Some(pb::Openings {
            sunroof: unknown,
            ..Default::default()
        });
    }
    frames.push((f, FrameKind::Status, "status.openings.sunroof"));
    let mut f = status_frame();
    f.body = Some(Body::Diagnostics(pb::Diagnostics {
        dtcs: vec![pb::Dtc {
            code: "P0301".into(),
            severity: unknown,
            ..Default::default()
        }],
        ..Default::default()
    }));
    frames.push((f, FrameKind::Diagnostics, "dtc.severity"));
    let mut f = status_frame();
    f.body = Some(Body::Charging(pb::ChargingSession {
        session_id: "cs-1".into(),
        current: unknown,
        ..Default::default()
    }));
    frames.push((f, FrameKind::Charging, "charging.current"));
    for (frame, kind, field) in frames {
        let payload = encode(&frame, PayloadFormat::Protobuf);
        let rej = validate(
            &vehicle_topic(VIN, kind),
            &payload,
            NOW,
            &ValidationConfig::default(),
        )
        .expect_err("an unknown enum number");
        assert_eq!(
            (rej.reason, rej.detail),
            (RejectReason::ValueOutOfRange, field)
        );
    }
    // Every named value passes, the unspecified one included.
    let mut f = status_frame();
    if let Some(Body::Status(s)) = f.body.as_mut() {
        s.trigger = pb::StatusTrigger::OnRequest as i32;
        s.ignition = pb::Ignition::Unspecified as i32;
    }
    assert_eq!(run(&status_topic(), &f, PayloadFormat::Protobuf), Ok(()));
    assert_eq!(run(&status_topic(), &f, PayloadFormat::Json), Ok(()));
}

#[test]
fn check_digit_is_a_setting() {
    // VIN's position 9 is 'Z', not its check digit.
    let strict = ValidationConfig {
        require_check_digit: true,
        ..Default::default()
    };
    let payload = encode(&status_frame(), PayloadFormat::Protobuf);
    let r = validate(&status_topic(), &payload, NOW, &strict);
    assert_eq!(
        r.map(|_| ()).map_err(|r| r.reason),
        Err(RejectReason::VinCheckDigit)
    );

    let mut bytes: [u8; 17] = VIN.as_bytes().try_into().expect("17");
    bytes[8] = check_digit(&bytes);
    let good = String::from_utf8(bytes.to_vec()).expect("ascii");
    let mut frame = status_frame();
    frame.vin = good.clone();
    let payload = encode(&frame, PayloadFormat::Json);
    assert!(
        validate(
            &vehicle_topic(&good, FrameKind::Status),
            &payload,
            NOW,
            &strict
        )
        .is_ok()
    );
}

#[test]
fn a_rejection_never_prints_the_vin() {
    let mut f = status_frame();
    f.vin = "WP0ZZZ99ZTS392125".into();
    let rej = validate(
        &status_topic(),
        &encode(&f, PayloadFormat::Json),
        NOW,
        &ValidationConfig::default(),
    )
    .expect_err("mismatch");
    assert!(!format!("{rej:?}").contains("392124"));
}

fn arb_location() -> impl Strategy<Value = pb::Location> {
    (
        -90.0f64..=90.0,
        -180.0f64..=180.0,
        proptest::option::of(0.0f32..300.0),
        proptest::option::of(0.0f32..360.0),
    )
        .prop_map(|(lat, lon, speed, heading)| pb::Location {
            lat_deg: lat,
            lon_deg: lon,
            speed_kmh: speed,
            heading_deg: heading,
            ..Default::default()
        })
}

proptest! {
    #[test]
    fn frames_round_trip_through_both_formats(
        loc in arb_location(),
        seq in 1u64..u64::MAX,
        age in 0i64..1_000_000,
    ) {
        let frame = VehicleFrame {
            vin: VIN.into(),
            seq,
            captured_at_ms: NOW - age,
            body: Some(Body::Location(loc)),
        };
        for format in [PayloadFormat::Protobuf, PayloadFormat::Json] {
            let (back, seen) = decode(&encode(&frame, format)).expect("decodes");
            prop_assert_eq!(seen, format);
            prop_assert_eq!(&back, &frame);
            let valid = validate(
                &vehicle_topic(VIN, FrameKind::Location),
                &encode(&frame, format),
                NOW,
                &ValidationConfig::default(),
            );
            prop_assert!(valid.is_ok());
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(topic in "\\PC{0,60}", payload in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = validate(&topic, &payload, NOW, &ValidationConfig::default());
        let _ = validate(&status_topic(), &payload, NOW, &ValidationConfig::default());
    }
}
