//! The key and state commands as an operator runs them: `telegate keys new` makes a key file,
//! `telegate state census` finds an earlier deployment's records in the first format (and
//! fails), `telegate state rewrap` rewrites them, and the census then passes. Against Apache
//! Kafka; nothing the commands print names a VIN.

use std::process::{Command, Output};
use std::time::Duration;
use telegate_tests::*;

fn telegate(args: &[&str], ns: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_telegate"))
        .args(args)
        .env("TELEGATE__KAFKA__TOPIC_NAMESPACE", ns)
        .env("RUST_LOG", "warn")
        .output()
        .expect("telegate runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn census_finds_format_one_and_rewrap_brings_every_record_under_the_active_key() {
    let dir = tempfile::tempdir().expect("tmp");
    let ns = format!("c{:08x}.", rand::random::<u32>());
    let made = telegate(&["keys", "new"], &ns);
    assert!(made.status.success(), "{}", text(&made));
    let key_file = dir.path().join("keys.toml");
    std::fs::write(&key_file, &made.stdout).expect("key file");
    let key_file = key_file.to_str().expect("path");

    // An earlier deployment's topic: two records keyed by VIN, secrets in the clear.
    let [topic, _] = telegate_policy::consent_topics(&ns, Duration::from_secs(86_400));
    let cfg = telegate_kafka::KafkaConfig {
        bootstrap: kafka(),
        ..Default::default()
    };
    telegate_kafka::ensure_topics(&cfg, std::slice::from_ref(&topic))
        .await
        .expect("topic");
    let writer = telegate_kafka::LogWriter::new(&cfg).expect("writer");
    let vins = [unique_vin(), unique_vin()];
    for vin in &vins {
        let record = telegate_policy::SubjectRecord {
            secret: Some(telegate_policy::SubjectSecret::from_random(
                rand::random(),
                rand::random(),
            )),
            ..Default::default()
        };
        let value = serde_json::to_vec(&record).expect("JSON");
        writer
            .put(&topic.name, Some(vin.as_bytes()), Some(&value))
            .await
            .expect("format-1 record");
    }
    // A gateway's roll markers, which no count includes.
    let partitions = writer.partitions(&topic.name).await.expect("partitions");
    writer
        .roll(&topic.name, &partitions)
        .await
        .expect("roll markers");

    let bootstrap = kafka();
    let args = |cmd: &'static str| {
        [
            "state",
            cmd,
            "--kafka-bootstrap",
            bootstrap.as_str(),
            "--key-file",
            key_file,
        ]
    };
    let before = telegate(&args("census"), &ns);
    assert!(!before.status.success(), "format 1 is not current");
    let said = text(&before);
    assert!(said.contains("2 in format 1"), "{said}");
    assert!(
        said.contains("telegate state rewrap"),
        "says what to do: {said}"
    );

    let rewrap = telegate(&args("rewrap"), &ns);
    let said = text(&rewrap);
    assert!(rewrap.status.success(), "{said}");
    assert!(said.contains("2 format-1 keys tombstoned"), "{said}");
    assert!(said.contains("every record is current"), "{said}");

    let after = telegate(&args("census"), &ns);
    let said = text(&after);
    assert!(after.status.success(), "{said}");
    assert!(said.contains("2 records, 2 wrapped under"), "{said}");
    assert!(
        said.contains("; 2 tombstones"),
        "no roll marker counted: {said}"
    );
    for out in [&before, &rewrap, &after] {
        for vin in &vins {
            assert!(!text(out).contains(vin.as_str()), "a VIN in the output");
        }
    }

    // Without a key file there is nothing to read the topic with.
    let none = Command::new(env!("CARGO_BIN_EXE_telegate"))
        .args(["state", "census", "--kafka-bootstrap", &bootstrap])
        .env("TELEGATE__KAFKA__TOPIC_NAMESPACE", &ns)
        .env_remove("TELEGATE_KEY_FILE")
        .env_remove("TELEGATE_KEYS")
        .output()
        .expect("runs");
    assert!(!none.status.success());
    assert!(text(&none).contains("no key file"), "{}", text(&none));
}
