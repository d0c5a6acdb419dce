//! Nothing at rest re-identifies: `telegate.consent-state` read without the operator's key
//! file names no VIN and holds no secret that opens a sealed VIN; with the key file,
//! pseudonyms and sealed VINs are the same across a restart and a wrapping-key rotation; a
//! topic in the first format (raw-VIN keys, secrets in the clear) migrates on start without
//! losing a vehicle's settings or changing its pseudonyms. Against Apache Kafka.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use telegate_frame::pb::{self, vehicle_frame::Body};
use telegate_frame::{Vin, decode};
use telegate_gateway::state::census::{Census, rewrap};
use telegate_gateway::{Config, Gateway, PackSource};
use telegate_kafka::{KafkaConfig, LogWriter, scan};
use telegate_policy::{Keyring, PurposeId, SubjectRecord, SubjectSecret, sealed_subject, unseal};
use telegate_tests::*;

const PURPOSE: &str = "component-status";

fn namespace() -> String {
    format!("r{:08x}.", rand::random::<u32>())
}

fn status(vin: &str, seq: u64) -> (String, Vec<u8>) {
    let body = Body::Status(pb::Status {
        odometer_km: Some(1000.0 + seq as f64),
        ..Default::default()
    });
    message(vin, seq, now_ms() - 1_000, body)
}

fn privacy(vin: &str, seq: u64, private_mode: bool) -> (String, Vec<u8>) {
    let body = Body::Privacy(pb::PrivacySettings {
        private_mode,
        location_services: true,
        non_location_services: true,
        ..Default::default()
    });
    message(vin, seq, now_ms() - 60_000, body)
}

/// Writes a key file with these wrapping keys (id, active) and returns its path.
fn keys_at(dir: &Path, name: &str, wrapping: &[(&str, bool)]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, key_file_text(wrapping)).expect("key file");
    path
}

fn keyring(path: &Path) -> Keyring {
    Keyring::from_toml(&std::fs::read_to_string(path).expect("read")).expect("keys")
}

fn config(ns: &str, dir: &Path, key_file: &Path) -> Config {
    let mut c = gateway_config("porsche-connect", ns, dir);
    c.key_file = Some(key_file.to_owned());
    c
}

/// What the state topic holds, as these keys read it.
async fn census(topic: &str, keys: &telegate_policy::StateKeys) -> Census {
    Census::take(&kafka_config(), topic, keys, Duration::from_secs(30))
        .await
        .expect("census")
}

fn kafka_config() -> KafkaConfig {
    KafkaConfig {
        bootstrap: kafka(),
        ..Default::default()
    }
}

/// Starts a gateway; returns it with its MQTT address.
async fn start(config: &Config) -> (Gateway, std::net::SocketAddr) {
    let gw = Gateway::start(config, PackSource::Config)
        .await
        .expect("gateway starts");
    (gw, config.mqtt.listen.expect("mqtt"))
}

/// What Smart Service received with sequence number `seq`, one record per vehicle: its key
/// (the pseudonym) and its sealed VIN.
async fn received(ns: &str, vins: &[String], seq: u64) -> Vec<(Vec<u8>, String)> {
    let topic = format!("{ns}telegate.smart-service");
    let c = consumer(&[&topic]);
    let got = collect(&c, vins.len(), Duration::from_secs(30), |g| {
        g.header("telegate-seq") == Some(&seq.to_string())
    })
    .await;
    assert_eq!(got.len(), vins.len(), "one record per vehicle of seq {seq}");
    got.into_iter()
        .map(|g| {
            let (frame, _) = decode(&g.payload).expect("record");
            (g.key.expect("keyed"), frame.vin)
        })
        .collect()
}

/// The records by VIN: the topic does not say whose a record is, so the test opens each
/// sealed VIN with the gateway's key material.
fn by_vin(gw: &Gateway, got: Vec<(Vec<u8>, String)>) -> BTreeMap<String, (Vec<u8>, String)> {
    got.into_iter()
        .map(|(key, sealed)| {
            let id = sealed_subject(&sealed).expect("sealed");
            let secret = gw.state().secret_of_subject(id).expect("key material");
            let vin = unseal(&secret, &sealed).expect("opens");
            (vin.expose().to_owned(), (key, sealed))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_topic_without_the_key_file_links_no_record_to_a_vin() {
    let dir = tempfile::tempdir().expect("tmp");
    let ns = namespace();
    let key_file = keys_at(dir.path(), "keys.toml", &[("test-w1", true)]);
    let (gw, mqtt) = start(&config(&ns, dir.path(), &key_file)).await;
    let vins: Vec<String> = (0..5).map(|_| unique_vin()).collect();
    let mut msgs: Vec<_> = vins.iter().map(|v| privacy(v, 1, false)).collect();
    msgs.extend(vins.iter().map(|v| status(v, 2)));
    publish_v4(mqtt, msgs).await;
    let sealed: Vec<String> = received(&ns, &vins, 2)
        .await
        .into_iter()
        .map(|(_, s)| s)
        .collect();
    let secrets: Vec<SubjectSecret> = vins
        .iter()
        .map(|v| {
            gw.state()
                .get(&Vin::parse(v).expect("VIN"))
                .and_then(|r| r.secret)
                .expect("every vehicle has key material")
        })
        .collect();
    gw.shutdown().await;

    // Everything the topic holds, as bytes: keys, values, headers.
    let state_topic = format!("{ns}telegate.consent-state");
    let log = scan(&kafka_config(), &state_topic, |_| true)
        .await
        .expect("scan");
    assert!(log.len() >= vins.len(), "a record per vehicle");
    let mut text = String::new();
    for r in &log {
        let key = String::from_utf8(r.key.clone()).expect("text key");
        assert!(
            key.len() == 32 && key.bytes().all(|b| b.is_ascii_hexdigit()),
            "a keyed hash, not a VIN: {key}"
        );
        text.push_str(&key);
        text.push_str(&String::from_utf8_lossy(
            r.value.as_deref().unwrap_or_default(),
        ));
        for (k, v) in &r.headers {
            text.push_str(k);
            text.push_str(v);
        }
    }
    for v in &vins {
        assert!(!text.contains(v.as_str()), "a VIN at rest");
        assert!(!text.contains(&v[11..]), "a VIN's serial at rest");
    }
    for s in &secrets {
        assert!(!text.contains(&s.key), "a secret in the clear");
        assert!(
            !text.contains(&s.id),
            "a subject id in the clear: it would tie the record to the sealed values naming it"
        );
    }
    // Without the key file: try every string the topic holds as a vehicle's key against every
    // sealed VIN Smart Service received. None opens one.
    let mut strings = Vec::new();
    for r in &log {
        let Some(v) = &r.value else { continue };
        let value: serde_json::Value = serde_json::from_slice(v).expect("JSON");
        collect_strings(&value, &mut strings);
    }
    assert!(!strings.is_empty());
    for s in &sealed {
        let id = sealed_subject(s).expect("sealed").to_owned();
        for candidate in &strings {
            let guess = SubjectSecret {
                id: id.clone(),
                key: candidate.clone(),
            };
            assert_eq!(unseal(&guess, s), None, "the topic opened a sealed VIN");
        }
    }
    // With the key file, every record is read, wrapped under the active key.
    let census = census(&state_topic, keyring(&key_file).state()).await;
    assert_eq!(census.wrapped_under.get("test-w1"), Some(&vins.len()));
    assert!(census.all_under("test-w1"), "{census}");
}

fn collect_strings(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(a) => a.iter().for_each(|v| collect_strings(v, out)),
        serde_json::Value::Object(o) => o.iter().for_each(|(k, v)| {
            out.push(k.clone());
            collect_strings(v, out)
        }),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pseudonyms_and_sealed_vins_survive_a_restart_and_a_wrapping_key_rotation() {
    let dir = tempfile::tempdir().expect("tmp");
    let ns = namespace();
    let state_topic = format!("{ns}telegate.consent-state");
    let w1 = keys_at(dir.path(), "w1.toml", &[("test-w1", true)]);
    let both = keys_at(
        dir.path(),
        "both.toml",
        &[("test-w1", false), ("test-w2", true)],
    );
    let w2 = keys_at(dir.path(), "w2.toml", &[("test-w2", true)]);
    let vins: Vec<String> = (0..3).map(|_| unique_vin()).collect();

    // The first run: each vehicle's pseudonym and sealed VIN.
    let (gw, mqtt) = start(&config(&ns, dir.path(), &w1)).await;
    publish_v4(mqtt, vins.iter().map(|v| status(v, 1)).collect()).await;
    let first = by_vin(&gw, received(&ns, &vins, 1).await);
    gw.shutdown().await;

    // Each later run: the same pseudonyms, and the first run's sealed VINs still open.
    async fn run_again(
        ns: &str,
        dir: &Path,
        key_file: &Path,
        vins: &[String],
        seq: u64,
        first: &BTreeMap<String, (Vec<u8>, String)>,
    ) -> Gateway {
        let (gw, mqtt) = start(&config(ns, dir, key_file)).await;
        publish_v4(mqtt, vins.iter().map(|v| status(v, seq)).collect()).await;
        let now = by_vin(&gw, received(ns, vins, seq).await);
        for v in vins {
            assert_eq!(now[v].0, first[v].0, "the same pseudonym (seq {seq})");
            let id = sealed_subject(&first[v].1).expect("sealed");
            let secret = gw.state().secret_of_subject(id).expect("key material");
            assert_eq!(
                unseal(&secret, &first[v].1).map(|x| x.expose().to_owned()),
                Some(v.clone()),
                "the first run's sealed VIN opens (seq {seq})"
            );
        }
        gw
    }
    // A restart with the same key file.
    run_again(&ns, dir.path(), &w1, &vins, 2, &first)
        .await
        .shutdown()
        .await;

    // Only the new wrapping key, before anything is rewrapped: refused, naming why.
    let err = Gateway::start(&config(&ns, dir.path(), &w2), PackSource::Config)
        .await
        .expect_err("the old key is still needed");
    let msg = format!("{err:#}");
    assert!(msg.contains("cannot be read"), "{msg}");
    assert!(msg.contains("\"test-w1\""), "names the missing key: {msg}");
    for v in &vins {
        assert!(!msg.contains(v.as_str()));
    }

    // Rotation: the new key active, the old one listed. The documented command rewraps.
    let keys = keyring(&both);
    let done = rewrap(
        &kafka_config(),
        &state_topic,
        keys.state(),
        Duration::from_secs(60),
    )
    .await
    .expect("rewrap");
    assert_eq!(done.before.wrapped_under.get("test-w1"), Some(&vins.len()));
    assert_eq!(done.rewritten, vins.len());
    assert!(done.after.all_under("test-w2"), "{}", done.after);
    assert_eq!(done.after.wrapped_under.get("test-w2"), Some(&vins.len()));

    // Now the old key can go.
    let gw = run_again(&ns, dir.path(), &w2, &vins, 3, &first).await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_topic_in_the_first_format_migrates_on_start() {
    let dir = tempfile::tempdir().expect("tmp");
    let ns = namespace();
    let state_topic = format!("{ns}telegate.consent-state");
    let key_file = keys_at(dir.path(), "keys.toml", &[("test-w1", true)]);
    let keys = keyring(&key_file);
    let cfg = config(&ns, dir.path(), &key_file);
    // An earlier deployment's topics.
    Gateway::start(&cfg, PackSource::Config)
        .await
        .expect("creates the topics")
        .shutdown()
        .await;

    // Its records: keyed by VIN, the secret in the clear.
    let [kept, private, erased] = [unique_vin(), unique_vin(), unique_vin()];
    let secret = SubjectSecret::from_random(rand::random(), rand::random());
    let mut kept_record = SubjectRecord {
        secret: Some(secret.clone()),
        ..Default::default()
    };
    kept_record.record_settings(
        now_ms() - 3_600_000,
        &pb::PrivacySettings {
            location_services: true,
            non_location_services: true,
            ..Default::default()
        },
    );
    let mut private_record = SubjectRecord {
        secret: Some(SubjectSecret::from_random(rand::random(), rand::random())),
        ..Default::default()
    };
    private_record.record_settings(
        now_ms() - 3_600_000,
        &pb::PrivacySettings {
            private_mode: true,
            location_services: true,
            non_location_services: true,
            ..Default::default()
        },
    );
    let writer = LogWriter::new(&kafka_config()).expect("writer");
    for (vin, record) in [
        (&kept, Some(&kept_record)),
        (&private, Some(&private_record)),
        (&erased, Some(&kept_record)),
        (&erased, None),
    ] {
        let value = record.map(|r| serde_json::to_vec(r).expect("JSON"));
        writer
            .put(&state_topic, Some(vin.as_bytes()), value.as_deref())
            .await
            .expect("format-1 record");
    }

    // Started on it: the records are rewritten, their VIN keys tombstoned.
    let (gw, mqtt) = start(&cfg).await;
    assert!(gw.state().flushed(Duration::from_secs(30)).await);
    assert_eq!(gw.state().migrated(), 2);
    let vin = |s: &str| Vin::parse(s).expect("VIN");
    assert!(gw.state().get(&vin(&erased)).is_none(), "an erasure stays");
    // The kept vehicle's pseudonym and seal are what its secret made before; the vehicle in
    // private mode stays private.
    publish_v4(mqtt, vec![status(&kept, 5), status(&private, 5)]).await;
    let topic = format!("{ns}telegate.smart-service");
    let got = collect_expecting(&consumer(&[&topic]), 1, Duration::from_secs(3), |_| true).await;
    assert_eq!(got.len(), 1, "the vehicle in private mode sends nothing");
    let expected = keys.pseudonym(&PurposeId::from(PURPOSE), &vin(&kept), Some(&secret));
    assert_eq!(got[0].key.as_deref(), Some(expected.as_bytes()));
    let (frame, _) = decode(&got[0].payload).expect("record");
    assert_eq!(unseal(&secret, &frame.vin), Some(vin(&kept)));
    gw.shutdown().await;

    // The topic: no VIN key holds a record any more; everything is current.
    let log = scan(&kafka_config(), &state_topic, |_| true)
        .await
        .expect("scan");
    let mut latest = BTreeMap::new();
    for r in &log {
        latest.insert(r.key.clone(), r.value.is_some());
    }
    for v in [&kept, &private, &erased] {
        assert_eq!(
            latest.get(v.as_bytes()),
            Some(&false),
            "the VIN key ends in a tombstone"
        );
    }
    let census = census(&state_topic, keys.state()).await;
    assert_eq!(census.format_one, 0);
    assert!(census.all_under("test-w1"), "{census}");

    // A restart reads the migration's own tombstones as what they are, not as erasures.
    let (gw, _) = start(&cfg).await;
    assert_eq!(
        gw.state().get(&vin(&kept)).and_then(|r| r.secret),
        Some(secret)
    );
    assert!(
        gw.state()
            .get(&vin(&private))
            .is_some_and(|r| r.settings_at(now_ms()).private_mode)
    );
    assert!(gw.state().get(&vin(&erased)).is_none());
    gw.shutdown().await;
}
