//! The per-frame hot path, stage by stage: decode, validate, and classify + decide + shape
//! for a status frame that three services receive.

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use telegate_benches::{NOW, THREE_SERVICES, VIN, known_vehicle, status_frame};
use telegate_frame::{
    FrameKind, PayloadFormat, ValidationConfig, classify, decode, encode, validate, vehicle_topic,
};
use telegate_policy::{Keyring, Pack, Verdict, admit, decide_all, shape};

fn hot_path(c: &mut Criterion) {
    let frame = status_frame();
    let topic = vehicle_topic(VIN, FrameKind::Status);
    let proto = encode(&frame, PayloadFormat::Protobuf);
    let json = encode(&frame, PayloadFormat::Json);
    let cfg = ValidationConfig::default();
    let pack = Pack::from_toml(THREE_SERVICES).expect("bench pack is valid");
    let label = pack.label();
    let keys = Keyring::ephemeral([7; 32]);
    let valid = validate(&topic, &proto, NOW, &cfg).expect("valid");
    let subject = known_vehicle();

    c.bench_function("decode/protobuf", |b| b.iter(|| decode(black_box(&proto))));
    c.bench_function("decode/json", |b| b.iter(|| decode(black_box(&json))));
    c.bench_function("validate/protobuf (decode + checks)", |b| {
        b.iter(|| validate(black_box(&topic), black_box(&proto), NOW, &cfg))
    });
    c.bench_function("policy/classify+decide+shape status -> 3 services", |b| {
        b.iter(|| {
            let f = black_box(&valid);
            let cats = classify(f);
            let mut out = Vec::with_capacity(3);
            for (purpose, decision) in decide_all(&pack, f, Some(&subject)) {
                if let Verdict::Forward(consent) = decision.verdict {
                    out.push(shape(
                        &pack,
                        &label,
                        f,
                        purpose,
                        consent,
                        &keys,
                        Some(&subject),
                    ));
                }
            }
            assert_eq!(out.len(), 3);
            (cats, out)
        })
    });
    // What the gateway runs per frame since admission became one function: the same policy
    // work plus the state changes, on the vehicle's record as its lock holds it.
    c.bench_function(
        "policy/admit status -> 3 services (one state access)",
        |b| {
            let mut record = subject.clone();
            b.iter(|| {
                let admission = admit(
                    &pack,
                    &label,
                    &keys,
                    black_box(&valid),
                    &mut record,
                    0,
                    || unreachable!("the vehicle has key material"),
                );
                assert_eq!(admission.records.len(), 3);
                admission
            })
        },
    );
    let shaped = {
        let purpose = pack.purpose("vin-status").expect("purpose");
        shape(
            &pack,
            &label,
            &valid,
            purpose,
            telegate_policy::ConsentState::NotRequired,
            &keys,
            Some(&subject),
        )
    };
    let (record, _) = decode(&shaped.payload).expect("shaped record decodes");
    c.bench_function("encode/protobuf (shaped record)", |b| {
        b.iter(|| encode(black_box(&record), PayloadFormat::Protobuf))
    });
    c.bench_function("encode/json (shaped record)", |b| {
        b.iter(|| encode(black_box(&record), PayloadFormat::Json))
    });
    c.bench_function("pseudonym/hmac-sha256", |b| {
        let purpose = telegate_policy::PurposeId::from("pseudonymous-status");
        b.iter(|| keys.pseudonym(black_box(&purpose), valid.vin(), subject.secret.as_ref()))
    });
    c.bench_function("state-key/hmac-sha256", |b| {
        b.iter(|| keys.state().key_of(black_box(valid.vin())))
    });
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
