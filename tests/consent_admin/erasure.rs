//! Erasure: the vehicle's key material goes, earlier records can no longer be linked to its
//! VIN, later ones cannot be joined to them, and Kafka's compaction takes the earlier state
//! records out of the log itself.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_makes_earlier_records_unlinkable_and_later_ones_unjoinable() {
    let dir = tempfile::tempdir().expect("tmp");
    let ns = namespace();
    let a = start(&settings("porsche-connect", &ns, dir.path())).await;
    let vin_s = unique_vin();
    let vin = Vin::parse(&vin_s).expect("vin");
    let topic = format!("{ns}telegate.smart-service");
    send(a.mqtt, &[status(&vin_s, 1, now_ms() - 2_000)]).await;
    let c = consumer(&[&topic]);
    let before = collect(&c, 1, Duration::from_secs(20), |_| true).await;
    assert_eq!(before.len(), 1);
    let old_key = before[0].key.clone().expect("pseudonymous key");
    let (frame, _) = decode(&before[0].payload).expect("record");
    let sealed = frame.vin.clone();
    assert!(sealed.starts_with("tgs1.") && !sealed.contains(&vin_s));

    let mut api = client(a.admin, Some(TOKEN)).await;
    let opened = api
        .unseal(pb::UnsealRequest {
            sealed: sealed.clone(),
        })
        .await
        .expect("opens");
    assert_eq!(
        opened.into_inner().vin,
        vin_s,
        "while the key material exists, the VIN is readable"
    );

    let erased = api
        .erase(pb::Subject { vin: vin_s.clone() })
        .await
        .expect("erased");
    assert!(erased.into_inner().existed);

    // 1. The API can no longer open it.
    let err = api
        .unseal(pb::UnsealRequest {
            sealed: sealed.clone(),
        })
        .await
        .expect_err("gone");
    assert_eq!(err.code(), tonic::Code::NotFound);
    // 2. Try it as an attacker with the operator's key file and every secret the state topic
    //    holds once compacted (the latest record per key, which is what compaction leaves):
    //    neither the key nor the sealed VIN can be tied to the VIN any more. Step 3 shows
    //    Kafka's compaction really removes the earlier records from the log.
    let keys = Keyring::from_toml(&std::fs::read_to_string(key_file(dir.path())).expect("keys"))
        .expect("keys");
    let state_topic = format!("{ns}telegate.consent-state");
    let cfg = telegate_kafka::KafkaConfig {
        bootstrap: kafka(),
        ..Default::default()
    };
    let records = telegate_kafka::scan(&cfg, &state_topic, |_| true)
        .await
        .expect("scan");
    let mut compacted = std::collections::HashMap::new();
    for r in &records {
        compacted.insert(r.key.clone(), r.value.clone());
    }
    let secrets: Vec<SubjectSecret> = compacted
        .iter()
        .filter_map(
            |(k, v)| match record::decode(keys.state(), k, v.as_deref()) {
                record::Read::Record { record, .. } => record.secret,
                _ => None,
            },
        )
        .collect();
    let state_key = keys.state().key_of(&vin).to_hex();
    assert!(
        records
            .iter()
            .any(|r| r.key == state_key.as_bytes() && r.value.is_none()),
        "tombstone written"
    );
    let purpose = PurposeId::from("component-status");
    for s in &secrets {
        assert_ne!(
            keys.pseudonym(&purpose, &vin, Some(s)).as_bytes(),
            old_key.as_slice()
        );
        assert_eq!(unseal(s, &sealed), None);
    }
    assert_ne!(
        keys.pseudonym(&purpose, &vin, None).as_bytes(),
        old_key.as_slice()
    );
    // 3. Compaction takes the vehicle's earlier state records, and the key material in them,
    //    out of the log itself. telegate bounds that by max.compaction.lag.ms (1 h); here the
    //    topic is set to compact within seconds, and the log is read record by record.
    assert!(
        records
            .iter()
            .any(|r| r.key == state_key.as_bytes() && r.value.is_some()),
        "before compaction the log still holds the erased vehicle's state"
    );
    compact_within_seconds(&cfg, &state_topic).await;
    let writer = telegate_kafka::LogWriter::new(&cfg).expect("writer");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        // A write after segment.ms rolls the segment holding the erased records, so the
        // cleaner may take it (it never cleans the active segment). A tombstone for a vehicle
        // nobody knows changes nothing.
        let nobody = keys
            .state()
            .key_of(&Vin::parse(&unique_vin()).expect("VIN"));
        writer
            .put(&state_topic, Some(nobody.to_hex().as_bytes()), None)
            .await
            .expect("roll the segment");
        let log = telegate_kafka::scan(&cfg, &state_topic, |_| true)
            .await
            .expect("scan");
        let left = log
            .iter()
            .filter(|r| r.key == state_key.as_bytes() && r.value.is_some())
            .count();
        if left == 0 {
            assert!(
                log.iter()
                    .any(|r| r.key == state_key.as_bytes() && r.value.is_none()),
                "the tombstone stays for delete.retention.ms, so every follower sees it"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} state records of the erased vehicle are still in the log"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    // 4. Every instance forgets: a new one starts without the vehicle.
    let b = start(&settings("porsche-connect", &ns, dir.path())).await;
    assert!(b.gw.state().get(&vin).is_none());
    assert!(a.gw.state().get(&vin).is_none());
    // 5. The vehicle comes back: its new records cannot be joined to the old ones.
    send(a.mqtt, &[status(&vin_s, 2, now_ms() - 1_000)]).await;
    let after = collect(&c, 1, Duration::from_secs(20), |_| true).await;
    assert_eq!(after.len(), 1);
    assert_ne!(
        after[0].key.as_deref(),
        Some(old_key.as_slice()),
        "new pseudonym after erasure"
    );
    a.gw.shutdown().await;
    b.gw.shutdown().await;
}

/// Makes a compacted topic roll segments and compact within seconds. AlterConfigs replaces
/// the topic's own settings, so the compaction ones telegate set are given again.
async fn compact_within_seconds(cfg: &telegate_kafka::KafkaConfig, topic: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, ResourceSpecifier};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &cfg.bootstrap)
        .create()
        .expect("admin client");
    let fast = [AlterConfig::new(ResourceSpecifier::Topic(topic))
        .set("cleanup.policy", "compact")
        .set("segment.ms", "1000")
        .set("min.compaction.lag.ms", "0")
        .set("max.compaction.lag.ms", "1000")
        .set("min.cleanable.dirty.ratio", "0.01")
        .set("delete.retention.ms", "86400000")];
    let done = admin
        .alter_configs(&fast, &AdminOptions::new())
        .await
        .expect("alter request");
    assert!(done.iter().all(Result::is_ok), "{done:?}");
}
