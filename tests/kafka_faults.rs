//! Faults on a three-node Apache Kafka cluster (replication factor 3, min.insync.replicas 2,
//! the gateway's idempotent acks=all producer): the leader of a service topic's partition is
//! killed with -9 while vehicles publish. Nothing is lost, nothing is doubled, and the consent
//! state and ledger survive. The test starts its own cluster with scripts/kafka (the suite's
//! single node stays untouched) and prints how long deliveries stalled.

use rdkafka::consumer::{BaseConsumer, Consumer};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use telegate_frame::pb::{self, vehicle_frame::Body};
use telegate_gateway::{Gateway, PackSource};
use telegate_tests::*;

/// The broker id leading partition 0 of `topic`.
fn leader(bootstrap: &str, topic: &str) -> i32 {
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("metadata client");
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    md.topics()[0].partitions()[0].leader()
}

fn status(vin: &str, seq: u64) -> (String, Vec<u8>) {
    let body = Body::Status(pb::Status {
        odometer_km: Some(1000.0 + seq as f64),
        ..Default::default()
    });
    message(vin, seq, now_ms() - 500, body)
}

/// A settings change: the vehicle switches Smart Service on explicitly (a report of the
/// factory settings alone changes nothing, so it is neither a point nor a ledger entry).
fn privacy(vin: &str, seq: u64) -> (String, Vec<u8>) {
    let body = Body::Privacy(pb::PrivacySettings {
        location_services: true,
        non_location_services: true,
        services: [("smart-service".to_owned(), true)].into(),
        ..Default::default()
    });
    message(vin, seq, now_ms() - 60_000, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_partition_leader_loses_and_doubles_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let cluster = KafkaCluster::start(3, &dir.path().join("kafka"));
    let ns = format!("f{:08x}.", rand::random::<u32>());
    let mut config = gateway_config("reference", &ns, dir.path());
    config.kafka.bootstrap = cluster.bootstrap().to_owned();
    config.kafka.replication_factor = 3;
    let gw = Gateway::start(&config, PackSource::Config)
        .await
        .expect("gateway starts on the cluster");
    let mqtt = config.mqtt.listen.expect("mqtt");
    let topic = format!("{ns}telegate.smart-service");

    // Each vehicle's settings first: the consent state and the ledger have something to lose.
    let vins: Vec<String> = (0..20).map(|_| unique_vin()).collect();
    publish_v4(mqtt, vins.iter().map(|v| privacy(v, 1)).collect()).await;

    // Deliveries, sampled every 50 ms, to find how long they stalled.
    let sampling = Arc::new(AtomicBool::new(true));
    let stats = gw.sink_stats();
    let sampler = {
        let sampling = sampling.clone();
        tokio::spawn(async move {
            let (mut last, mut since, mut longest) = (0, Instant::now(), Duration::ZERO);
            while sampling.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let now = stats.delivered();
                if now != last {
                    longest = longest.max(since.elapsed());
                    (last, since) = (now, Instant::now());
                }
            }
            longest
        })
    };

    // 20 vehicles × 150 frames over about 15 s; the leader dies after about 4 s.
    let rounds = 150u64;
    let publisher = {
        let vins = vins.clone();
        tokio::spawn(async move {
            for round in 0..rounds {
                let batch = vins.iter().map(|v| status(v, round + 2)).collect();
                publish_v4(mqtt, batch).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(4)).await;
    let victim = leader(cluster.bootstrap(), &topic);
    cluster.kill(victim);
    let killed_at = Instant::now();
    publisher.await.expect("publisher");

    // Every frame forwarded exactly once, by (VIN, seq).
    let c = consumer_on(cluster.bootstrap(), &[&topic]);
    let expected = vins.len() * rounds as usize;
    let got = collect(&c, expected, Duration::from_secs(120), |g| {
        g.key
            .as_deref()
            .is_some_and(|k| vins.iter().any(|v| v.as_bytes() == k))
    })
    .await;
    sampling.store(false, Ordering::Relaxed);
    let stall = sampler.await.expect("sampler");
    let stray = collect(&c, usize::MAX, Duration::from_secs(4), |_| true).await;
    let mut seen: HashMap<(Vec<u8>, String), u32> = HashMap::new();
    for g in got.iter().chain(&stray) {
        let seq = g.header("telegate-seq").unwrap_or_default().to_owned();
        *seen
            .entry((g.key.clone().unwrap_or_default(), seq))
            .or_default() += 1;
    }
    let doubled = seen.values().filter(|n| **n > 1).count();
    let missing = vins
        .iter()
        .flat_map(|v| (2..rounds + 2).map(move |s| (v.as_bytes().to_vec(), s.to_string())))
        .filter(|k| !seen.contains_key(k))
        .count();
    println!(
        "killed broker {victim}; longest stall in deliveries {:.1} s; {} records, {missing} missing, {doubled} doubled; failed deliveries {}",
        stall.as_secs_f64(),
        got.len() + stray.len(),
        gw.sink_stats().failed()
    );
    assert_eq!(missing, 0, "records lost after the leader died");
    assert_eq!(doubled, 0, "records doubled after the leader died");
    assert_eq!(gw.sink_stats().failed(), 0);
    assert!(killed_at.elapsed() < Duration::from_secs(300));

    // The state and the ledger survive: a new instance reads every vehicle's settings back
    // from the two remaining nodes, and every settings change is in the ledger.
    gw.shutdown().await;
    let mut second = gateway_config("reference", &ns, dir.path());
    second.kafka.bootstrap = cluster.bootstrap().to_owned();
    second.kafka.replication_factor = 3;
    let again = Gateway::start(&second, PackSource::Config)
        .await
        .expect("a new instance starts with one node down");
    for v in &vins {
        let vin = telegate_frame::Vin::parse(v).expect("vin");
        let record = again.state().get(&vin).expect("state survived");
        assert!(record.settings.latest().is_some(), "settings survived");
    }
    let ledger = telegate_kafka::scan(
        &config.kafka,
        &format!("{ns}telegate.consent-ledger"),
        |_| true,
    )
    .await
    .expect("ledger scan");
    assert!(
        ledger.len() >= vins.len(),
        "every settings change is in the ledger: {} entries",
        ledger.len()
    );
    again.shutdown().await;
}
