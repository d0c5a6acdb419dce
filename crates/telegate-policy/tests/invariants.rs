//! Property tests: the promises every shipped pack must keep, over random frames and random
//! timelines of settings, consents and activations.

use proptest::prelude::*;
use std::sync::LazyLock;
use telegate_frame::pb::{self, VehicleFrame, vehicle_frame::Body};
use telegate_frame::{
    Frame, FrameKind, PayloadFormat, ValidationConfig, decode, encode, validate, vehicle_topic,
};
use telegate_policy::{
    ConsentRule, Identity, Keyring, LegalBasis, LocationPrecision, Pack, SubjectRecord, Verdict,
    decide_all, header, shape,
};

const VIN: &str = "KNAZZZ99ZTS392124";
const T0: i64 = 1_790_000_000_000;

static PACKS: LazyLock<Vec<Pack>> = LazyLock::new(|| {
    ["reference", "porsche-connect", "kia-connect", "ev-charging"]
        .iter()
        .map(|name| {
            let path = format!("{}/../../packs/{name}.toml", env!("CARGO_MANIFEST_DIR"));
            let text = std::fs::read_to_string(&path).expect("pack exists");
            Pack::from_toml(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
        })
        .collect()
});

fn keys() -> Keyring {
    Keyring::ephemeral([9; 32])
}

fn arb_location() -> impl Strategy<Value = pb::Location> {
    (
        -89.0f64..89.0,
        -179.0f64..179.0,
        proptest::option::of(0.0f32..250.0),
    )
        .prop_map(|(lat, lon, speed)| pb::Location {
            lat_deg: lat,
            lon_deg: lon,
            altitude_m: Some(300.0),
            speed_kmh: speed,
            heading_deg: Some(90.0),
            accuracy_m: Some(3.0),
        })
}

fn arb_status() -> impl Strategy<Value = pb::Status> {
    (
        0.0f64..300_000.0,
        0.0f32..100.0,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(odo, level, on, alert)| pb::Status {
            odometer_km: Some(odo),
            fuel_level_pct: Some(level),
            ignition: if on {
                pb::Ignition::On
            } else {
                pb::Ignition::Off
            } as i32,
            hv_battery: Some(pb::HighVoltageBattery {
                soc_pct: Some(level),
                alert,
                ..Default::default()
            }),
            ..Default::default()
        })
}

fn arb_body() -> impl Strategy<Value = Body> {
    let dtc = pb::Dtc {
        code: "P0301".into(),
        ecu: "engine".into(),
        ..Default::default()
    };
    prop_oneof![
        arb_status().prop_map(Body::Status),
        Just(Body::Diagnostics(pb::Diagnostics {
            dtcs: vec![dtc.clone()],
            ..Default::default()
        })),
        arb_location().prop_map(Body::Location),
        (any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(p, o, l)| Body::Privacy(
            pb::PrivacySettings {
                private_mode: p,
                offline_mode: o,
                location_services: l,
                non_location_services: true,
                services: Default::default(),
            }
        )),
        (any::<bool>(), any::<bool>(), arb_status(), arb_location()).prop_map(
            move |(a, d, s, l)| {
                Body::Breakdown(pb::BreakdownCall {
                    call_id: "call-1".into(),
                    trigger: pb::BreakdownTrigger::Vehicle as i32,
                    consent: Some(pb::BreakdownConsent {
                        assistance: a,
                        dealer: d,
                    }),
                    snapshot: Some(pb::BreakdownSnapshot {
                        status: Some(s),
                        dtcs: vec![dtc.clone()],
                        location: Some(l),
                    }),
                })
            }
        ),
        arb_location().prop_map(|l| Body::Charging(pb::ChargingSession {
            session_id: "s-1".into(),
            evse_id: "DE*ABC*E1".into(),
            energy_kwh: Some(20.0),
            location: Some(l),
            ..Default::default()
        })),
        Just(Body::Software(pb::SoftwareState {
            map_version: "EU-2026".into(),
            head_unit_version: "1.0".into(),
            ..Default::default()
        })),
    ]
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    (arb_body(), 1u64..1_000_000, 0i64..100_000).prop_map(|(body, seq, dt)| {
        let kind = FrameKind::of_body(&body);
        let raw = VehicleFrame {
            vin: VIN.into(),
            seq,
            captured_at_ms: T0 + dt,
            body: Some(body),
        };
        validate(
            &vehicle_topic(VIN, kind),
            &encode(&raw, PayloadFormat::Protobuf),
            T0 + 200_000,
            &ValidationConfig::default(),
        )
        .expect("generated frames are valid")
    })
}

/// A random history: settings changes, consents and activations at random times.
fn arb_subject() -> impl Strategy<Value = SubjectRecord> {
    let settings = proptest::collection::vec(
        (
            0i64..100_000,
            any::<bool>(),
            proptest::bool::weighted(0.2),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
        ),
        0..4,
    );
    let flips = proptest::collection::vec((0i64..100_000, any::<bool>()), 0..3);
    (settings, flips.clone(), flips.clone(), flips).prop_map(
        |(settings, consents, activations, gis)| {
            let mut r = SubjectRecord {
                secret: Some(telegate_policy::SubjectSecret::from_random(
                    [5; 16], [6; 32],
                )),
                ..Default::default()
            };
            for (t, private, offline, loc, nonloc, svc) in settings {
                let mut toggles = std::collections::HashMap::new();
                toggles.insert("smart-service".to_owned(), svc);
                let gis_on = gis
                    .iter()
                    .rfind(|(gt, _)| *gt <= t)
                    .map(|(_, on)| *on)
                    .unwrap_or(true);
                toggles.insert("gis".to_owned(), gis_on);
                r.record_settings(
                    T0 + t,
                    &pb::PrivacySettings {
                        private_mode: private,
                        offline_mode: offline,
                        location_services: loc,
                        non_location_services: nonloc,
                        services: toggles,
                    },
                );
            }
            for purpose in ["product-improvement", "charging-location"] {
                for (t, on) in &consents {
                    r.consents
                        .entry(purpose.into())
                        .or_default()
                        .set(T0 + t, *on);
                }
            }
            for feature in ["valet-alert", "geofence-alert", "speed-alert", "idle-alert"] {
                for (t, on) in &activations {
                    r.activations
                        .entry(feature.into())
                        .or_default()
                        .set(T0 + t, *on);
                }
            }
            r
        },
    )
}

fn has_location(body: &Body) -> bool {
    match body {
        Body::Location(_) => true,
        Body::Breakdown(b) => b.snapshot.as_ref().is_some_and(|s| s.location.is_some()),
        Body::Charging(c) => c.location.is_some(),
        _ => false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn promises_hold_for_every_pack(frame in arb_frame(), subject in arb_subject(), known in any::<bool>()) {
        let subject = known.then_some(&subject);
        let t = frame.captured_at_ms();
        for pack in PACKS.iter() {
            let offline = subject.is_some_and(|s| s.settings_at(t).offline_mode || s.settings_now().offline_mode);
            for (purpose, decision) in decide_all(pack, &frame, subject) {
                let Verdict::Forward(consent) = decision.verdict else { continue };
                // Offline mode: no output at all.
                prop_assert!(!offline, "{}: forwarded a frame captured in offline mode", purpose.id);
                // Consent purposes: never without consent at capture time and now.
                if purpose.legal_basis == LegalBasis::Consent {
                    prop_assert_eq!(consent.as_str(), "granted");
                    if purpose.consent == ConsentRule::Standing {
                        let s = subject.expect("consent needs a record");
                        prop_assert!(s.consent_at(purpose.id.as_str(), t) && s.consent_now(purpose.id.as_str()));
                    }
                }
                let rec = shape(pack, &pack.label(), &frame, purpose, consent, &keys(), subject);
                let (payload, _) = decode(&rec.payload).expect("shaped records decode");
                let text = format!("{:?} {:?} {}", rec.key, rec.headers, String::from_utf8_lossy(&rec.payload));
                // The raw VIN only where the identity is the VIN.
                if purpose.identity != Identity::Vin {
                    prop_assert!(!text.contains(VIN), "{}: VIN leaked", purpose.id);
                }
                // Sealed: a value only the vehicle's own key opens, to exactly its VIN.
                if purpose.identity == Identity::Sealed {
                    let secret = subject.and_then(|s| s.secret.as_ref()).expect("sealed needs key material");
                    let opened = telegate_policy::unseal(secret, &payload.vin);
                    prop_assert_eq!(opened.as_ref().map(|v| v.expose()), Some(VIN));
                    let other = telegate_policy::SubjectSecret::from_random([9; 16], [9; 32]);
                    prop_assert!(telegate_policy::unseal(&other, &payload.vin).is_none());
                } else if purpose.identity != Identity::Vin {
                    prop_assert!(payload.vin.is_empty());
                }
                // Anonymous: no key, no sequence, no call, session or charge-point id.
                if purpose.identity == Identity::Anonymous {
                    prop_assert!(rec.key.is_none() && payload.seq == 0 && rec.header(header::SEQ).is_none());
                    prop_assert!(!text.contains("call-1") && !text.contains("s-1") && !text.contains("DE*ABC"));
                }
                // No location where the purpose has none; never finer than its grid.
                let body = payload.body.as_ref().expect("body");
                if purpose.location == LocationPrecision::None {
                    prop_assert!(!has_location(body), "{}: location leaked", purpose.id);
                }
                if let (LocationPrecision::Coarse { .. }, Body::Location(l)) = (purpose.location, body) {
                    prop_assert!(l.altitude_m.is_none());
                }
                // Time never finer than allowed.
                if let Some(p) = purpose.time_precision {
                    prop_assert_eq!(payload.captured_at_ms % p.as_millis() as i64, 0);
                }
            }
        }
    }

    #[test]
    fn a_withdrawal_after_capture_stops_late_frames(frame in arb_frame(), withdraw_after in 1i64..1_000_000) {
        for pack in PACKS.iter() {
            for purpose in pack.routes(frame.kind()).filter(|p| p.consent == ConsentRule::Standing) {
                let mut s = SubjectRecord {
                    secret: Some(telegate_policy::SubjectSecret::from_random([5; 16], [6; 32])),
                    ..Default::default()
                };
                let mut gis = std::collections::HashMap::new();
                gis.insert("gis".to_owned(), true);
                s.record_settings(0, &pb::PrivacySettings { location_services: true, non_location_services: true, services: gis, ..Default::default() });
                let consents = s.consents.entry(purpose.id.to_string()).or_default();
                consents.set(0, true);
                consents.set(frame.captured_at_ms() + withdraw_after, false);
                let d = telegate_policy::decide(pack, &frame, purpose, Some(&s));
                prop_assert_eq!(d.verdict, Verdict::Drop(telegate_policy::DropReason::ConsentWithdrawn));
            }
        }
    }
}

#[test]
fn topic_retention_never_exceeds_a_purpose_maximum() {
    for pack in PACKS.iter() {
        let topics = pack.topics();
        for p in &pack.purposes {
            let topic = &pack.service_of(p).topic;
            let t = topics
                .iter()
                .find(|t| &t.name == topic)
                .expect("topic listed");
            assert!(
                t.retention <= p.retention,
                "{}: {} keeps longer than {} allows",
                pack.id,
                topic,
                p.id
            );
        }
    }
}

#[test]
fn a_topic_retention_above_a_purpose_maximum_fails_the_check() {
    let text = r#"
        id = "x"
        version = "1"
        [services.s]
        retention = "30days"
        [purposes.p]
        service = "s"
        legal_basis = "contract"
        kinds = ["status"]
        categories = ["identification", "status"]
        identity = "vin"
        retention = "7days"
    "#;
    let errs = Pack::from_toml(text).expect_err("too long").0;
    assert_eq!(errs[0].path, "services.s.retention", "{errs:?}");
}
