//! `telegate policy asyncapi` for every shipped pack: the document is valid AsyncAPI 3.0 by the
//! AsyncAPI project's own parser (contract/asyncapi/validate.mjs, with its protobuf schema
//! parser), and its Kafka channels are the topics the gateway really creates on Apache Kafka,
//! with the cleanup policy and retention the broker reports.
//!
//! Needs `npm ci` in contract/asyncapi: `scripts/test` runs it.

use serde_json::Value;
use std::path::Path;
use std::process::Command;
use telegate_gateway::{Gateway, PackSource};
use telegate_kafka::{KafkaConfig, topic_config};
use telegate_tests::*;

fn validator_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contract/asyncapi")
}

/// The document for the shipped `pack` behind `namespace`, as the binary writes it.
fn document(pack: &str, namespace: &str, out: &Path) -> std::path::PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../packs/{pack}.toml"));
    document_of(&path, namespace, out)
}

/// The document for the pack at `path` behind `namespace`, written into `out`.
fn document_of(path: &Path, namespace: &str, out: &Path) -> std::path::PathBuf {
    let name = path.file_stem().expect("a file").to_string_lossy();
    let file = out.join(format!("{name}.asyncapi.json"));
    let run = Command::new(env!("CARGO_BIN_EXE_telegate"))
        .args(["policy", "asyncapi", "--topic-namespace", namespace])
        .arg(path)
        .output()
        .expect("telegate runs");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    std::fs::write(&file, &run.stdout).expect("write");
    file
}

/// What the AsyncAPI parser read from the document; fails on any error it reports.
fn validated(file: &Path) -> Value {
    let run = Command::new("node")
        .current_dir(validator_dir())
        .arg("validate.mjs")
        .arg(file)
        .output()
        .expect("node runs");
    assert!(
        run.status.success(),
        "the AsyncAPI parser refused {}: {}",
        file.display(),
        String::from_utf8_lossy(&run.stderr)
    );
    serde_json::from_slice(&run.stdout).expect("the validator's summary")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_packs_asyncapi_document_is_valid_and_names_the_topics_the_gateway_creates() {
    assert!(
        validator_dir()
            .join("node_modules/@asyncapi/parser")
            .exists(),
        "contract/asyncapi needs `npm ci`: scripts/test runs it"
    );
    let dir = tempfile::tempdir().expect("tmp");
    let kafka_cfg = KafkaConfig {
        bootstrap: kafka(),
        ..Default::default()
    };
    for pack in ["reference", "porsche-connect", "kia-connect", "ev-charging"] {
        let ns = format!("a{:08x}.", rand::random::<u32>());
        let summary = validated(&document(pack, &ns, dir.path()));
        assert_eq!(summary["warnings"], 0, "{pack}: {summary}");
        let channels = summary["channels"].as_array().cloned().unwrap_or_default();
        let kafka_channels: Vec<&Value> = channels
            .iter()
            .filter(|c| c["protocols"] == serde_json::json!(["kafka"]))
            .collect();
        // The MQTT side: the frames vehicles publish and the requests they receive.
        let mqtt: Vec<&str> = channels
            .iter()
            .filter(|c| c["protocols"] == serde_json::json!(["mqtt"]))
            .filter_map(|c| c["address"].as_str())
            .collect();
        assert_eq!(
            mqtt,
            ["/tenants/{vin}/v1/{kind}", "/tenants/{vin}/v1/request"],
            "{pack}"
        );

        // The gateway creates its topics; the document names exactly the pack's.
        let mut config = gateway_config(pack, &ns, dir.path());
        config.kafka.manage_topics = true;
        let gw = Gateway::start(&config, PackSource::Config)
            .await
            .unwrap_or_else(|e| panic!("{pack}: {e:#}"));
        let mut created: Vec<String> = gw.pack().topics().into_iter().map(|t| t.name).collect();
        created.sort();
        let mut named: Vec<String> = kafka_channels
            .iter()
            .filter_map(|c| c["address"].as_str().map(str::to_owned))
            .collect();
        named.sort();
        assert_eq!(named, created, "{pack}: the document's topics");
        for c in &kafka_channels {
            let topic = c["address"].as_str().expect("address");
            let policy = topic_config(&kafka_cfg, topic, "cleanup.policy")
                .await
                .expect("describe");
            let retention = topic_config(&kafka_cfg, topic, "retention.ms")
                .await
                .expect("describe");
            assert_eq!(
                policy.as_deref(),
                c["cleanupPolicy"][0].as_str(),
                "{pack}: {topic} cleanup.policy"
            );
            assert_eq!(
                retention.and_then(|r| r.parse::<u64>().ok()),
                c["retentionMs"].as_u64(),
                "{pack}: {topic} retention.ms"
            );
            // Every record message carries the purpose and its terms in its headers.
            for m in c["messages"].as_array().into_iter().flatten() {
                let headers = m["headers"].as_array().cloned().unwrap_or_default();
                assert!(
                    headers.iter().any(|h| h == "telegate-policy"),
                    "{pack}: {topic} {m}"
                );
            }
        }
        gw.shutdown().await;
    }
}

#[test]
fn a_confluent_protobuf_topic_names_its_schema_id_and_subject_strategy() {
    let dir = tempfile::tempdir().expect("tmp");
    let reference = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packs/reference.toml");
    let pack = std::fs::read_to_string(reference).expect("pack").replace(
        "[services.trip-log]\n",
        "[services.trip-log]\nencoding = \"confluent-protobuf\"\n",
    );
    assert!(pack.contains("confluent-protobuf"), "the pack changed");
    let pack_file = dir.path().join("framed.toml");
    std::fs::write(&pack_file, pack).expect("write");
    let file = document_of(&pack_file, "", dir.path());
    let summary = validated(&file);
    assert_eq!(summary["warnings"], 0, "{summary}");

    let doc: Value = serde_json::from_slice(&std::fs::read(&file).expect("read")).expect("JSON");
    let trip = &doc["components"]["messages"]["trip-logRecord"];
    assert_eq!(trip["contentType"], "application/vnd.confluent.protobuf");
    let binding = &trip["bindings"]["kafka"];
    assert_eq!(binding["schemaIdLocation"], "payload", "{binding}");
    assert_eq!(binding["schemaIdPayloadEncoding"], "confluent", "{binding}");
    assert_eq!(
        binding["schemaLookupStrategy"], "TopicNameStrategy",
        "{binding}"
    );
    let plain = &doc["components"]["messages"]["component-statusRecord"]["bindings"]["kafka"];
    assert_eq!(plain["schemaIdLocation"], Value::Null, "{plain}");
}
