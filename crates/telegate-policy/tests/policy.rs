//! Pack loading, decisions and shaping on the shipped reference pack.

use telegate_frame::pb::{self, VehicleFrame, vehicle_frame::Body};
use telegate_frame::{
    FrameKind, PayloadFormat, RejectReason, ValidationConfig, decode, encode, validate,
    vehicle_topic,
};
use telegate_policy::{
    ConsentState, DropReason, Keyring, Pack, Verdict, decide_all, header, rejected_record, shape,
};

const VIN: &str = "WP0ZZZ99ZTS392124";
const NOW: i64 = 1_790_000_000_000;

fn reference() -> Pack {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../packs/reference.toml"
    ))
    .expect("reference pack is in the repo");
    Pack::from_toml(&text).expect("reference pack is valid")
}

fn frame(body: Body) -> telegate_frame::Frame {
    let kind = FrameKind::of_body(&body);
    let f = VehicleFrame {
        vin: VIN.into(),
        seq: 42,
        captured_at_ms: NOW - 10,
        body: Some(body),
    };
    validate(
        &vehicle_topic(VIN, kind),
        &encode(&f, PayloadFormat::Json),
        NOW,
        &ValidationConfig::default(),
    )
    .expect("valid")
}

fn keys() -> Keyring {
    Keyring::ephemeral([7; 32])
}

/// A vehicle the gateway has seen: it has its own key material.
static SUBJECT: std::sync::LazyLock<telegate_policy::SubjectRecord> =
    std::sync::LazyLock::new(|| telegate_policy::SubjectRecord {
        secret: Some(telegate_policy::SubjectSecret::from_random(
            [3; 16], [4; 32],
        )),
        ..Default::default()
    });

#[test]
fn every_error_is_reported_at_once_with_its_path() {
    let bad = r#"
        id = "Bad Id"
        version = ""
        [services.a]
        encoding = "xml"
        [services.b]
        topic = "telegate.rejected"
        [purposes.p]
        service = "nope"
        legal_basis = "vibes"
        kinds = ["status", "teleport", "status"]
        identity = "face"
        categories = ["status"]
        retention = "forever"
    "#;
    let errs = Pack::from_toml(bad).expect_err("invalid").0;
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    for expected in [
        "id",
        "version",
        "services.a.encoding",
        "services.b.topic",
        "purposes.p.service",
        "purposes.p.legal_basis",
        "purposes.p.identity",
        "purposes.p.retention",
        "purposes.p.kinds[1]",
        "purposes.p.kinds[2]",
        "services.a",
        "services.b",
    ] {
        assert!(paths.contains(&expected), "missing {expected} in {paths:?}");
    }
}

#[test]
fn missing_fields_are_all_reported() {
    let errs = Pack::from_toml(
        "id = \"x\"\nversion = \"1\"\n[services.s]\n[purposes.a]\nservice = \"s\"\n[purposes.b]\nservice = \"s\"\n",
    )
    .expect_err("incomplete")
    .0;
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    for p in ["a", "b"] {
        for f in [
            "legal_basis",
            "identity",
            "retention",
            "categories",
            "kinds",
        ] {
            let want = format!("purposes.{p}.{f}");
            assert!(
                paths.contains(&want.as_str()),
                "missing {want} in {paths:?}"
            );
        }
    }
}

#[test]
fn syntax_errors_say_where() {
    let errs = Pack::from_toml("id = \"x\"\nversion = 1\n")
        .expect_err("wrong type")
        .to_string();
    assert!(errs.contains("line 2, column"), "{errs}");
}

#[test]
fn one_purpose_per_kind_and_service() {
    let text = r#"
        id = "x"
        version = "1"
        [services.s]
        [purposes.a]
        service = "s"
        legal_basis = "contract"
        kinds = ["status"]
        categories = ["identification", "status"]
        identity = "vin"
        retention = "1day"
        [purposes.b]
        service = "s"
        legal_basis = "contract"
        kinds = ["status"]
        categories = ["identification", "status"]
        identity = "vin"
        retention = "1day"
    "#;
    let errs = Pack::from_toml(text).expect_err("conflict").0;
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].path, "purposes.b.kinds[0]");
}

#[test]
fn topic_retention_is_the_strictest_purpose() {
    let pack = reference();
    let topics = pack.topics();
    let get = |n: &str| {
        topics
            .iter()
            .find(|t| t.name == n)
            .map(|t| t.retention.as_secs())
    };
    assert_eq!(get("telegate.breakdown-call"), Some(7 * 86_400));
    assert_eq!(get("telegate.trip-log"), Some(90 * 86_400));
    assert_eq!(get("telegate.rejected"), Some(7 * 86_400));
    for p in &pack.purposes {
        let topic = &pack.service_of(p).topic;
        assert!(get(topic).expect("topic exists") <= p.retention.as_secs());
    }
}

#[test]
fn status_goes_to_smart_service_with_vin_and_trip_log_with_pseudonym() {
    let pack = reference();
    let f = frame(Body::Status(pb::Status {
        odometer_km: Some(1.0),
        ..Default::default()
    }));
    let decisions: Vec<_> = decide_all(&pack, &f, Some(&*SUBJECT)).collect();
    let ids: Vec<&str> = decisions.iter().map(|(p, _)| p.id.as_str()).collect();
    assert_eq!(ids, ["component-status", "trip-log"]);

    for (purpose, decision) in decisions {
        let Verdict::Forward(consent) = decision.verdict else {
            panic!("contract purposes forward")
        };
        assert_eq!(consent, ConsentState::NotRequired);
        let rec = shape(
            &pack,
            &pack.label(),
            &f,
            purpose,
            consent,
            &keys(),
            Some(&*SUBJECT),
        );
        assert_eq!(rec.header(header::PURPOSE), Some(purpose.id.as_str()));
        assert_eq!(rec.header(header::LEGAL_BASIS), Some("contract"));
        assert_eq!(rec.header(header::CONSENT), Some("not-required"));
        assert_eq!(rec.header(header::POLICY), Some("reference@2026.11.0"));
        assert_eq!(rec.header(header::SEQ), Some("42"));
        assert_eq!(
            rec.header(header::CAPTURED_AT_MS),
            Some(&*(NOW - 10).to_string())
        );
        let (payload, _) = decode(&rec.payload).expect("service payload decodes");
        match purpose.id.as_str() {
            "component-status" => {
                assert_eq!(rec.topic, "telegate.smart-service");
                assert_eq!(rec.key.as_deref(), Some(VIN.as_bytes()));
                assert_eq!(rec.header(header::SUBJECT), Some("vin"));
                assert_eq!(rec.header(header::KEY_ID), None);
                assert_eq!(payload.vin, VIN);
            }
            "trip-log" => {
                assert_eq!(rec.topic, "telegate.trip-log");
                assert_eq!(rec.header(header::SUBJECT), Some("pseudonym"));
                assert_eq!(rec.header(header::KEY_ID), Some("ephemeral"));
                let key = String::from_utf8(rec.key.clone().expect("keyed")).expect("hex");
                assert_eq!(
                    key,
                    keys().pseudonym(&purpose.id, f.vin(), SUBJECT.secret.as_ref())
                );
                assert!(payload.vin.is_empty(), "no VIN beside a pseudonym");
            }
            other => panic!("unexpected purpose {other}"),
        }
    }
}

#[test]
fn anonymous_records_have_no_key_and_no_vin() {
    let pack = reference();
    let f = frame(Body::Diagnostics(pb::Diagnostics {
        dtcs: vec![pb::Dtc {
            code: "P0301".into(),
            ..Default::default()
        }],
        ..Default::default()
    }));
    let (purpose, decision) = decide_all(&pack, &f, Some(&*SUBJECT))
        .find(|(p, _)| p.id.as_str() == "product-improvement")
        .expect("routed");
    let Verdict::Forward(c) = decision.verdict else {
        panic!("forwards")
    };
    let rec = shape(
        &pack,
        &pack.label(),
        &f,
        purpose,
        c,
        &keys(),
        Some(&*SUBJECT),
    );
    assert_eq!(rec.key, None);
    assert_eq!(rec.header(header::SUBJECT), Some("anonymous"));
    assert!(!String::from_utf8_lossy(&rec.payload).contains(VIN));
    assert!(rec.headers.iter().all(|(_, v)| !v.contains(VIN)));
}

#[test]
fn breakdown_purposes_drop_without_consent_in_the_call() {
    let pack = reference();
    let f = frame(Body::Breakdown(pb::BreakdownCall {
        call_id: "c1".into(),
        ..Default::default()
    }));
    let decisions: Vec<_> = decide_all(&pack, &f, Some(&*SUBJECT)).collect();
    assert_eq!(decisions.len(), 2, "assistance and dealer");
    for (_, d) in decisions {
        assert_eq!(d.verdict, Verdict::Drop(DropReason::EventConsentMissing));
    }
}

#[test]
fn privacy_frames_are_routed_nowhere_by_this_pack() {
    let pack = reference();
    let f = frame(Body::Privacy(pb::PrivacySettings::default()));
    assert_eq!(decide_all(&pack, &f, Some(&*SUBJECT)).count(), 0);
}

#[test]
fn rejected_records_hash_the_subject_and_carry_no_payload() {
    let pack = reference();
    let payload = b"{\"vin\":\"WP0ZZZ99ZTS392125\",\"seq\":\"1\"}";
    let rej = validate(
        &vehicle_topic(VIN, FrameKind::Status),
        payload,
        NOW,
        &ValidationConfig::default(),
    )
    .expect_err("vin mismatch");
    assert_eq!(rej.reason, RejectReason::VinMismatch);
    let rec = rejected_record(&pack, &pack.label(), &rej, NOW, payload.len(), &keys());
    assert_eq!(rec.topic, "telegate.rejected");
    let text = String::from_utf8(rec.payload.clone()).expect("json");
    assert!(
        !text.contains("392124") && !text.contains("392125"),
        "{text}"
    );
    let body: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(body["reason"], "vin-mismatch");
    assert_eq!(body["kind"], "status");
    assert_eq!(body["subjectHash"], keys().subject_hash(VIN));
    assert_eq!(body["payloadBytes"], payload.len().to_string());
    assert_eq!(rec.header(header::REASON), Some("vin-mismatch"));
}

#[test]
fn objections_bind_legitimate_interest_and_direct_marketing_absolutely() {
    let text = r#"
        id = "x"
        version = "1"
        [services.ads]
        [services.stats]
        [services.care]
        [purposes.offers]
        service = "ads"
        legal_basis = "consent"
        consent = "standing"
        direct_marketing = true
        kinds = ["status"]
        categories = ["identification", "status"]
        identity = "vin"
        retention = "30days"
        [purposes.stats]
        service = "stats"
        legal_basis = "legitimate-interest"
        kinds = ["status"]
        categories = ["identification", "status"]
        identity = "vin"
        retention = "30days"
        [purposes.care]
        service = "care"
        legal_basis = "contract"
        kinds = ["status"]
        categories = ["identification", "status"]
        identity = "vin"
        retention = "30days"
    "#;
    let pack = Pack::from_toml(text).expect("valid");
    let f = frame(Body::Status(pb::Status::default()));
    let mut s = SUBJECT.clone();
    s.consents.entry("offers".into()).or_default().set(0, true);
    for p in ["offers", "stats", "care"] {
        s.objections.entry(p.into()).or_default().set(0, true);
    }
    let verdicts: std::collections::BTreeMap<String, Verdict> = decide_all(&pack, &f, Some(&s))
        .map(|(p, d)| (p.id.to_string(), d.verdict))
        .collect();
    // Direct marketing stops on objection even with consent in force (Art. 21(3)).
    assert_eq!(verdicts["offers"], Verdict::Drop(DropReason::Objected));
    assert_eq!(verdicts["stats"], Verdict::Drop(DropReason::Objected));
    // An objection does not reach a contract purpose.
    assert!(matches!(verdicts["care"], Verdict::Forward(_)));
}

#[test]
fn once_per_vehicle_forwards_one_record_per_vehicle_kind_and_period() {
    let pack = reference();
    let day = 86_400_000;
    let at = |t: i64| {
        let raw = VehicleFrame {
            vin: VIN.into(),
            seq: 1,
            captured_at_ms: t,
            body: Some(Body::Diagnostics(pb::Diagnostics::default())),
        };
        validate(
            &vehicle_topic(VIN, FrameKind::Diagnostics),
            &encode(&raw, PayloadFormat::Protobuf),
            NOW,
            &ValidationConfig::default(),
        )
        .expect("valid")
    };
    let purpose = pack.purpose("product-improvement").expect("purpose");
    let mut s = SUBJECT.clone();
    let today = at(NOW - 10);
    assert!(matches!(
        telegate_policy::decide(&pack, &today, purpose, Some(&s)).verdict,
        Verdict::Forward(_)
    ));
    let (key, start) =
        telegate_policy::contribution_period(purpose, &today).expect("limited purpose");
    s.contributions.insert(key, start);
    for again in [at(NOW - 5), at(start - day + 1)] {
        // The same day again, or a late frame from an earlier day: not counted twice.
        let d = telegate_policy::decide(&pack, &again, purpose, Some(&s));
        assert_eq!(d.verdict, Verdict::Drop(DropReason::AlreadyContributed));
    }
}
