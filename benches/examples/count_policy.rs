//! Runs one policy stage N times, for instruction counts under callgrind (these machines'
//! timers are shared and noisy; instruction counts repeat):
//!
//!   valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/examples/count_policy admit 2000
//!
//! The difference between two runs of different N, divided by the difference in N, is the
//! stage's instructions per frame without the set-up. Stages: `decide-shape` (decide and shape
//! on a record read-only, as the pipeline did before admission was one function) and `admit`
//! (the same decisions plus the state changes, on the record the lock holds); `state-key`
//! (the keyed hash of the VIN that names the vehicle's record, once per frame). A third
//! argument, `confluent-protobuf`, has every service write the Confluent wire format (schema
//! id 1, as the gateway sets it at start), to compare with the plain protobuf records:
//!
//!   target/release/examples/count_policy admit 2000 confluent-protobuf

use std::hint::black_box;
use telegate_benches::{NOW, THREE_SERVICES, VIN, known_vehicle, status_frame};
use telegate_frame::{FrameKind, PayloadFormat, ValidationConfig, encode, validate, vehicle_topic};
use telegate_policy::{Keyring, Pack, RecordEncoding, Verdict, admit, decide_all, shape};

fn main() {
    let mut args = std::env::args().skip(1);
    let stage = args.next().unwrap_or_default();
    let n: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(1000);
    let mut pack = Pack::from_toml(THREE_SERVICES).expect("bench pack is valid");
    if args.next().as_deref() == Some("confluent-protobuf") {
        for service in &mut pack.services {
            service.encoding = RecordEncoding::ConfluentProtobuf;
            service.schema_id = Some(1);
        }
    }
    let label = pack.label();
    let keys = Keyring::ephemeral([7; 32]);
    let payload = encode(&status_frame(), PayloadFormat::Protobuf);
    let topic = vehicle_topic(VIN, FrameKind::Status);
    let frame = validate(&topic, &payload, NOW, &ValidationConfig::default()).expect("valid frame");
    let mut record = known_vehicle();
    let mut records = 0usize;
    for _ in 0..n {
        records += match stage.as_str() {
            "decide-shape" => decide_all(&pack, black_box(&frame), Some(&record))
                .filter_map(|(purpose, d)| match d.verdict {
                    Verdict::Forward(c) => Some(shape(
                        &pack,
                        &label,
                        &frame,
                        purpose,
                        c,
                        &keys,
                        Some(&record),
                    )),
                    Verdict::Drop(_) => None,
                })
                .count(),
            "admit" => admit(
                &pack,
                &label,
                &keys,
                black_box(&frame),
                &mut record,
                0,
                || unreachable!("the vehicle has key material"),
            )
            .records
            .len(),
            "state-key" => {
                black_box(keys.state().key_of(black_box(frame.vin())));
                3
            }
            other => panic!("stage {other:?}: decide-shape, admit or state-key"),
        };
    }
    assert_eq!(records as u64, 3 * n);
}
