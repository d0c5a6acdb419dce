//! What one vehicle's privacy frames can make the gateway store: 1,000 of them, repeated and
//! changing, with toggles the pack does not name, leave a small consent-state record, a
//! restart reads the topic in seconds, and another vehicle's frames are acknowledged as
//! quickly meanwhile. Against Apache Kafka, through the gateway's MQTT edge.

use std::time::{Duration, Instant};
use telegate_frame::Vin;
use telegate_frame::pb::{self, vehicle_frame::Body};
use telegate_gateway::{Gateway, PackSource};
use telegate_kafka::{KafkaConfig, scan};
use telegate_tests::*;

fn privacy(vin: &str, seq: u64, at: i64, private_mode: bool, junk: usize) -> Outbound {
    let mut services: std::collections::HashMap<String, bool> =
        [("smart-service".to_owned(), !private_mode)].into();
    for j in 0..junk {
        services.insert(format!("{seq:0>32}{j:0>32}"), j % 2 == 0);
    }
    let body = Body::Privacy(pb::PrivacySettings {
        private_mode,
        location_services: true,
        non_location_services: true,
        services,
        ..Default::default()
    });
    message(vin, seq, at, body)
}

fn status(vin: &str, seq: u64) -> Outbound {
    let body = Body::Status(pb::Status {
        odometer_km: Some(1000.0 + seq as f64),
        ..Default::default()
    });
    message(vin, seq, now_ms() - 1_000, body)
}

/// Publishes one frame at a time (QoS 1) until `stop`, and returns each PUBACK's latency
/// after the first (connecting and the first frame are not timed), saying `ready` when the
/// first was acknowledged.
async fn one_at_a_time(
    addr: std::net::SocketAddr,
    vin: String,
    ready: tokio::sync::oneshot::Sender<()>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<Duration> {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let o = MqttOptions::new(
        format!("t-{:x}", rand::random::<u32>()),
        "127.0.0.1",
        addr.port(),
    );
    let (c, mut ev) = AsyncClient::new(o, 8);
    let mut latencies = Vec::new();
    let mut seq = 1;
    let mut ready = Some(ready);
    while !*stop.borrow() {
        let (topic, payload) = status(&vin, seq);
        seq += 1;
        let sent = Instant::now();
        c.publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .expect("queued");
        loop {
            match tokio::time::timeout(Duration::from_secs(30), ev.poll()).await {
                Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => break,
                Ok(Ok(_)) => {}
                other => panic!("the other vehicle's publish failed: {other:?}"),
            }
        }
        match ready.take() {
            Some(ready) => _ = ready.send(()),
            None => latencies.push(sent.elapsed()),
        }
    }
    let _ = c.disconnect().await;
    latencies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_privacy_frames_leave_a_small_record_and_delay_no_one() {
    let dir = tempfile::tempdir().expect("tmp");
    let ns = format!("b{:08x}.", rand::random::<u32>());
    let config = gateway_config("reference", &ns, dir.path());
    let gw = Gateway::start(&config, PackSource::Config)
        .await
        .expect("gateway starts");
    let mqtt = config.mqtt.listen.expect("mqtt");
    let (flooder, other) = (unique_vin(), unique_vin());

    // 300 identical frames, 300 identical but captured later, 400 alternating with 200
    // toggles each that the pack does not name.
    let start = now_ms() - 3_600_000;
    let mut frames = Vec::new();
    for i in 0..1_000u64 {
        let seq = i + 1;
        frames.push(match i {
            0..300 => privacy(&flooder, seq, start, true, 0),
            300..600 => privacy(&flooder, seq, start + i as i64, true, 0),
            _ => privacy(&flooder, seq, start + i as i64, i % 2 == 0, 200),
        });
    }

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let (ready, warmed) = tokio::sync::oneshot::channel();
    let measuring = tokio::spawn(one_at_a_time(mqtt, other.clone(), ready, stopped));
    warmed.await.expect("the other vehicle publishes");
    let flooding = Instant::now();
    publish_v4(mqtt, frames).await;
    let flood_took = flooding.elapsed();
    let _ = stop.send(true);
    let mut latencies = measuring.await.expect("measured");
    assert!(gw.state().flushed(Duration::from_secs(30)).await);

    latencies.sort();
    let p99 = latencies[(latencies.len() * 99).div_ceil(100).saturating_sub(1)];
    println!(
        "flood of 1,000 privacy frames: {flood_took:?}; the other vehicle's {} frames: \
         p50 {:?}, p99 {p99:?}, max {:?}",
        latencies.len(),
        latencies[latencies.len() / 2],
        latencies.last().expect("some")
    );
    assert!(!latencies.is_empty());
    assert!(p99 < Duration::from_secs(1), "p99 {p99:?}");

    let vin = Vin::parse(&flooder).expect("VIN");
    let key = gw.state().key_of(&vin).to_hex();
    let record = gw.state().get(&vin).expect("a record");
    assert!(
        !record.settings_now().private_mode,
        "the last frame turned it off"
    );
    gw.shutdown().await;

    // What the topic holds for the vehicle: its newest record is small.
    let state_topic = format!("{ns}telegate.consent-state");
    let cfg = KafkaConfig {
        bootstrap: kafka(),
        ..Default::default()
    };
    let log = scan(&cfg, &state_topic, |k| k == key.as_bytes())
        .await
        .expect("scan");
    let newest = log.last().and_then(|r| r.value.as_ref()).expect("a record");
    println!(
        "{} records written for the vehicle; the newest is {} bytes",
        log.len(),
        newest.len()
    );
    assert!(newest.len() <= 8 * 1024, "{} bytes", newest.len());
    let total: usize = log
        .iter()
        .filter_map(|r| r.value.as_ref())
        .map(Vec::len)
        .sum();
    assert!(total <= 1_000 * 8 * 1024, "{total} bytes in all");

    // A new gateway reads the topic to its end well within its 60 s.
    let started = Instant::now();
    let gw = Gateway::start(&config, PackSource::Config)
        .await
        .expect("gateway starts again");
    let took = started.elapsed();
    println!("restart: {took:?}");
    assert!(took < Duration::from_secs(30), "{took:?}");
    let again = gw.state().get(&vin).expect("the record");
    assert_eq!(again.settings, record.settings);
    gw.shutdown().await;
}
