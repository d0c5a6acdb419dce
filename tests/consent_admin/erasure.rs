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
    //    out of the log itself. telegate bounds that (1 h 5 min 15 s by default,
    //    docs/operations.md); here the topic is set to compact within seconds, and the log is
    //    read record by record.
    assert!(
        records
            .iter()
            .any(|r| r.key == state_key.as_bytes() && r.value.is_some()),
        "before compaction the log still holds the erased vehicle's state"
    );
    compact_within_seconds(&cfg, &state_topic, "0.01").await;
    let writer = telegate_kafka::LogWriter::new(&cfg).expect("writer");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        // A write after segment.ms rolls the segment holding the erased records, so the
        // cleaner may take it (it never cleans the active segment); the gateway's own roll
        // markers come only every 5 minutes here. A tombstone for a vehicle nobody knows
        // changes nothing.
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

/// Makes a compacted topic roll segments and compact within seconds; a log is also cleaned
/// once this share of it is dirty (Kafka's default is 0.5). AlterConfigs replaces the topic's
/// own settings, so the compaction ones telegate set are given again.
async fn compact_within_seconds(
    cfg: &telegate_kafka::KafkaConfig,
    topic: &str,
    min_cleanable_dirty_ratio: &str,
) {
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
        .set("min.cleanable.dirty.ratio", min_cleanable_dirty_ratio)
        .set("delete.retention.ms", "86400000")];
    let done = admin
        .alter_configs(&fast, &AdminOptions::new())
        .await
        .expect("alter request");
    assert!(done.iter().all(Result::is_ok), "{done:?}");
}

/// The attack review's case: an erased vehicle whose record sits alone on its partition while
/// every other partition is written to. Kafka closes a segment only when a record arrives, and
/// never cleans the open one, so only the gateway's roll markers close the segment holding the
/// tombstone and let the cleaner take the erased record. Here `segment.ms`,
/// `max.compaction.lag.ms` and the roll interval are 1 s and the dirty ratio is Kafka's
/// default, so the bound (compaction lag + roll interval + log.cleaner.backoff.ms, 1 s on the
/// suite's broker, + the cleaner's own time) is seconds. With the markers off
/// (`state_roll_interval = 0s`) the record stays, and this test fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_record_leaves_a_partition_nothing_else_is_written_to() {
    const PARTITIONS: i32 = 3;
    const BOUND: Duration = Duration::from_secs(30);
    let dir = tempfile::tempdir().expect("tmp");
    let ns = namespace();
    let mut s = settings("ev-charging", &ns, dir.path());
    s.kafka.partitions = PARTITIONS;
    s.state_roll_interval = Duration::from_secs(1);
    let a = start(&s).await;
    let state_topic = format!("{ns}telegate.consent-state");
    let cfg = telegate_kafka::KafkaConfig {
        bootstrap: kafka(),
        ..Default::default()
    };
    compact_within_seconds(&cfg, &state_topic, "0.5").await;

    // The vehicle's first record holds its wrapped key material.
    let vin_s = unique_vin();
    let vin = Vin::parse(&vin_s).expect("vin");
    let mut api = client(a.admin, Some(TOKEN)).await;
    api.set_consent(pb::ConsentChange {
        vin: vin_s.clone(),
        purpose: "charging-location".into(),
        granted: true,
        origin: origin(now_ms()),
    })
    .await
    .expect("granted");
    let keys = Keyring::from_toml(&std::fs::read_to_string(key_file(dir.path())).expect("keys"))
        .expect("keys");
    let state_key = keys.state().key_of(&vin).to_hex();
    // The producer's partitioner picks the partition from the key: find where it went.
    let mut home = None;
    for p in 0..PARTITIONS {
        let (values, _) = records_of(&state_topic, p, state_key.as_bytes()).await;
        if let Some(v) = values.first() {
            assert!(
                String::from_utf8_lossy(v).contains("wrapped_secret"),
                "the record holds the wrapped key material"
            );
            home = Some(p);
        }
    }
    let home = home.expect("the vehicle's record is on some partition");

    api.erase(pb::Subject { vin: vin_s.clone() })
        .await
        .expect("erased");
    let erased = Instant::now();
    // Every other partition keeps receiving writes (a tombstone for a vehicle nobody knows);
    // the vehicle's own partition gets nothing but what the gateway writes by itself.
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka())
        .create()
        .expect("producer");
    let nobody = keys
        .state()
        .key_of(&Vin::parse(&unique_vin()).expect("VIN"))
        .to_hex();
    loop {
        for p in (0..PARTITIONS).filter(|p| *p != home) {
            producer
                .send(
                    rdkafka::producer::FutureRecord::<str, [u8]>::to(&state_topic)
                        .partition(p)
                        .key(&nobody),
                    Duration::from_secs(10),
                )
                .await
                .expect("a neighbouring partition written");
        }
        let (values, tombstones) = records_of(&state_topic, home, state_key.as_bytes()).await;
        if values.is_empty() {
            assert!(
                tombstones > 0,
                "the tombstone stays for delete.retention.ms"
            );
            break;
        }
        assert!(
            erased.elapsed() < BOUND,
            "{} records with the erased vehicle's key material are still on partition {home} \
             {BOUND:?} after the erasure",
            values.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "erased record gone from its quiet partition {:?} after the erasure",
        erased.elapsed()
    );

    // No reader of the topic sees a roll marker: the census finds the erasure's tombstone and
    // the neighbours', and nothing it cannot place.
    let census =
        telegate_gateway::state::census::Census::take(&cfg, &state_topic, keys.state(), BOUND)
            .await
            .expect("census");
    assert_eq!(census.records(), 0, "{census}");
    assert_eq!(census.tombstones, 2, "{census}");
    a.gw.shutdown().await;
}

/// Every record under `key` on one partition, read from its beginning with a plain consumer:
/// the values, and how many tombstones.
async fn records_of(topic: &str, partition: i32, key: &[u8]) -> (Vec<Vec<u8>>, usize) {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::Message;
    let c: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka())
        .set(
            "group.id",
            format!("telegate-test-{:016x}", rand::random::<u64>()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .expect("consumer");
    let mut assignment = rdkafka::TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, partition, rdkafka::Offset::Beginning)
        .expect("partition");
    c.assign(&assignment).expect("assigned");
    let (mut values, mut tombstones) = (Vec::new(), 0);
    loop {
        match tokio::time::timeout(Duration::from_secs(20), c.recv()).await {
            Err(_) => panic!("partition {partition} of {topic} not read to its end"),
            Ok(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => break,
            Ok(Err(e)) => panic!("reading {topic}: {e}"),
            Ok(Ok(m)) if m.key() == Some(key) => match m.payload() {
                Some(v) => values.push(v.to_vec()),
                None => tombstones += 1,
            },
            Ok(Ok(_)) => {}
        }
    }
    (values, tombstones)
}
