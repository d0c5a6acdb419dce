//! The consumers a backend team writes, in Python (consumers/python/telegate_consume.py:
//! confluent-kafka) and Java (consumers/java: kafka-clients), each with classes protoc
//! generates from proto/, read the topics `telegate serve` wrote from a vehicle's MQTT frames
//! on Apache Kafka, and find in each record what the contract says: the purpose, legal basis
//! and subject form in the headers, the VIN as key and in the value where the purpose may see
//! it, a pseudonym and no VIN where it may not.
//!
//! Needs consumers/python/requirements.txt in the Python of TELEGATE_TEST_PYTHON and the jar
//! consumers/build makes: scripts/test provides both.

mod tls_gateway;

use serde_json::Value;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use telegate_sim::tls::VehicleCertificates;
use telegate_tests::*;
use tls_gateway::Gateway;
use tls_gateway::raw::*;

fn python() -> String {
    std::env::var("TELEGATE_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// The consumer called `name` (`python` or `java`), as a command.
fn consumer(name: &str) -> Command {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    if name == "python" {
        let mut python = Command::new(python());
        python.arg(root.join("consumers/python/telegate_consume.py"));
        return python;
    }
    let jar = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("consumers/java/telegate-consume.jar");
    assert!(
        jar.exists(),
        "{} is missing: consumers/build makes it (scripts/test runs it)",
        jar.display()
    );
    let mut java = Command::new("java");
    java.arg("-jar").arg(jar);
    java
}

/// What a consumer printed for `topic`: one JSON object per record.
fn consume(name: &str, topic: &str, records: usize) -> Vec<Value> {
    let out = consumer(name)
        .args(["--bootstrap", &kafka(), "--topic", topic])
        .args(["--max", &records.to_string(), "--timeout", "60"])
        .output()
        .expect("the consumer runs");
    assert!(
        out.status.success(),
        "the {name} consumer failed on {topic}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_java_consumers_read_what_the_contract_promises() {
    let g = Gateway::start(&[]).await;
    let certs = VehicleCertificates::open(&g.pki).expect("fleet CA");
    let vin = unique_vin();
    g.issue(&vin);
    let addr = g.tls;
    let v = vin.clone();
    tokio::task::spawn_blocking(move || {
        let mut s = connected(&certs, addr, &v, true);
        let at = now_ms() - 1_000;
        let frames = [
            (
                "status",
                r#""status":{"odometerKm":48211.4,"fuelLevelPct":52.5,"ignition":"IGNITION_ON"}"#,
            ),
            (
                "location",
                r#""location":{"latDeg":48.83412,"lonDeg":9.15277,"accuracyM":4}"#,
            ),
            (
                "status",
                r#""status":{"odometerKm":48215.0,"fuelLevelPct":52.0,"ignition":"IGNITION_ON"}"#,
            ),
        ];
        for (i, (kind, body)) in frames.iter().enumerate() {
            let seq = i as u64 + 1;
            let payload = format!(r#"{{"vin":"{v}","seq":"{seq}","capturedAtMs":"{at}",{body}}}"#);
            let pkid = seq as u16;
            s.write_all(&publish(
                &format!("/tenants/{v}/v1/{kind}"),
                pkid,
                payload.as_bytes(),
            ))
            .expect("publish");
            let mut ack = [0u8; 4];
            s.read_exact(&mut ack).expect("PUBACK");
            assert_eq!(ack, [0x40, 2, 0, seq as u8]);
        }
    })
    .await
    .expect("vehicle");

    for name in ["python", "java"] {
        check(name, &g.ns, &vin);
    }
}

/// What the consumer called `name` reads of the vehicle's records.
fn check(name: &str, ns: &str, vin: &str) {
    // Component status: contract, the VIN as key and in the value; status frames only.
    let smart = consume(name, &format!("{ns}telegate.smart-service"), 2);
    assert_eq!(smart.len(), 2, "{smart:?}");
    for r in &smart {
        assert_eq!(r["purpose"], "component-status", "{name}: {r}");
        assert_eq!(r["legal_basis"], "contract", "{name}: {r}");
        assert_eq!(r["subject"], "vin", "{name}: {r}");
        assert_eq!(r["key"], vin, "{name}: {r}");
        assert_eq!(r["vin"], vin, "{name}: {r}");
        assert_eq!(r["kind"], "status", "{name}: {r}");
    }
    // Trip log: a pseudonym as key, no VIN in the value; status and location frames.
    let trips = consume(name, &format!("{ns}telegate.trip-log"), 3);
    assert_eq!(trips.len(), 3, "{trips:?}");
    let pseudonym = trips[0]["key"].as_str().expect("a key").to_owned();
    assert_ne!(pseudonym, vin);
    for r in &trips {
        assert_eq!(r["purpose"], "trip-log", "{name}: {r}");
        assert_eq!(r["subject"], "pseudonym", "{name}: {r}");
        assert_eq!(
            r["key"],
            pseudonym.as_str(),
            "one pseudonym per vehicle: {name}: {r}"
        );
        assert_eq!(
            r["vin"], "",
            "no VIN where the purpose may not see it: {name}: {r}"
        );
    }
    let mut kinds: Vec<&str> = trips.iter().filter_map(|r| r["kind"].as_str()).collect();
    kinds.sort_unstable();
    assert_eq!(kinds, ["location", "status", "status"]);
}
