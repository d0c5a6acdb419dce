//! The gateway in process, against the embedded broker and the real Kafka-protocol broker:
//! real MQTT clients publish, a real Kafka consumer checks topics, keys and headers.

use std::time::Duration;
use telegate_frame::pb::{self, VehicleFrame, vehicle_frame::Body};
use telegate_frame::{FrameKind, PayloadFormat, decode, encode, vehicle_topic};
use telegate_gateway::{Config, Gateway, PackSource};
use telegate_policy::{Keyring, PurposeId};
use telegate_tests::*;

async fn start(dir: &std::path::Path) -> (Gateway, Config) {
    let mut s = Config::default();
    s.mqtt.listen = Some(free_addr());
    s.mqtt.listen_v5 = Some(free_addr());
    s.mqtt.allow_anonymous = true;
    s.metrics_listen = Some(free_addr());
    s.kafka.bootstrap = kafka();
    s.kafka.linger_ms = 1;
    s.policy = Some(concat!(env!("CARGO_MANIFEST_DIR"), "/../packs/reference.toml").into());
    s.key_file = Some(key_file(dir));
    let g = Gateway::start(&s, PackSource::Config)
        .await
        .expect("gateway starts");
    (g, s)
}

/// Publishes with MQTT 5 and waits for the PUBACKs.
async fn publish_v5(addr: std::net::SocketAddr, msgs: Vec<(String, Vec<u8>)>) {
    for vehicle in by_vehicle(msgs) {
        publish_v5_one(addr, vehicle).await;
    }
}

async fn publish_v5_one(addr: std::net::SocketAddr, msgs: Vec<(String, Vec<u8>)>) {
    use rumqttc::v5::mqttbytes::QoS as QoS5;
    use rumqttc::v5::mqttbytes::v5::Packet as P5;
    use rumqttc::v5::{AsyncClient as C5, Event as E5, MqttOptions as O5};
    let o = O5::new(
        format!("t5-{:x}", rand::random::<u32>()),
        "127.0.0.1",
        addr.port(),
    );
    let (c, mut ev) = C5::new(o, 64);
    let n = msgs.len();
    for (t, p) in msgs {
        c.publish(t, QoS5::AtLeastOnce, false, p)
            .await
            .expect("queued");
    }
    let mut acked = 0;
    while acked < n {
        match tokio::time::timeout(Duration::from_secs(10), ev.poll()).await {
            Ok(Ok(E5::Incoming(P5::PubAck(_)))) => acked += 1,
            Ok(Ok(_)) => {}
            other => panic!("MQTT v5 publish failed: {other:?}"),
        }
    }
}

fn frame(vin: &str, seq: u64, body: Body) -> VehicleFrame {
    VehicleFrame {
        vin: vin.into(),
        seq,
        captured_at_ms: now_ms() - 1_000,
        body: Some(body),
    }
}

fn status() -> Body {
    Body::Status(pb::Status {
        odometer_km: Some(42_000.0),
        fuel_level_pct: Some(55.0),
        ignition: pb::Ignition::On as i32,
        ..Default::default()
    })
}

fn topic_of(f: &VehicleFrame) -> String {
    vehicle_topic(&f.vin, FrameKind::of_body(f.body.as_ref().expect("body")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_over_mqtt3_reaches_each_service_in_its_form() {
    let dir = tempfile::tempdir().expect("tmp");
    let (gw, s) = start(dir.path()).await;
    let vin = unique_vin();
    let f = frame(&vin, 11, status());
    let c = consumer(&["telegate.smart-service", "telegate.trip-log"]);
    publish_v4(
        s.mqtt.listen.expect("v4"),
        vec![(topic_of(&f), encode(&f, PayloadFormat::Protobuf))],
    )
    .await;

    let keys = Keyring::from_toml(&std::fs::read_to_string(key_file(dir.path())).expect("keys"))
        .expect("keys");
    // The pseudonym mixes in key material the gateway made for this vehicle on first sight.
    let parsed = telegate_frame::Vin::parse(&vin).expect("vin");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let secret = loop {
        if let Some(s) = gw.state().get(&parsed).and_then(|r| r.secret) {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "no key material made");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let pseudonym = keys.pseudonym(&PurposeId::from("trip-log"), &parsed, Some(&secret));
    let got = collect(&c, 2, Duration::from_secs(30), |g| {
        g.key.as_deref() == Some(vin.as_bytes()) || g.key.as_deref() == Some(pseudonym.as_bytes())
    })
    .await;
    assert_eq!(got.len(), 2, "one record per service: {got:?}");

    let smart = got
        .iter()
        .find(|g| g.topic == "telegate.smart-service")
        .expect("smart-service record");
    assert_eq!(smart.key.as_deref(), Some(vin.as_bytes()));
    for (h, v) in [
        ("telegate-purpose", "component-status"),
        ("telegate-legal-basis", "contract"),
        ("telegate-consent", "not-required"),
        ("telegate-subject", "vin"),
        ("telegate-policy", "reference@2026.11.0"),
        ("telegate-seq", "11"),
        ("telegate-encoding", "protobuf"),
    ] {
        assert_eq!(smart.header(h), Some(v), "{h}");
    }
    assert_eq!(
        smart.header("telegate-captured-at-ms"),
        Some(&*f.captured_at_ms.to_string())
    );
    assert_eq!(smart.header("telegate-key-id"), None);
    let (payload, _) = decode(&smart.payload).expect("a VehicleFrame");
    assert_eq!(payload, f, "the VIN service receives the frame as sent");

    let trip = got
        .iter()
        .find(|g| g.topic == "telegate.trip-log")
        .expect("trip-log record");
    assert_eq!(trip.header("telegate-subject"), Some("pseudonym"));
    assert_eq!(trip.header("telegate-key-id"), Some("test-1"));
    assert!(
        !String::from_utf8_lossy(&trip.payload).contains(&vin),
        "no VIN beside a pseudonym"
    );
    assert!(trip.headers.values().all(|v| !v.contains(&vin)));
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_over_mqtt5_is_accepted_and_routed_by_kind() {
    let dir = tempfile::tempdir().expect("tmp");
    let (gw, s) = start(dir.path()).await;
    let vin = unique_vin();
    // A code no other test sends: the anonymous copy can only be recognised by content.
    let code = format!("U{:06X}", rand::random::<u32>() & 0xFF_FFFF);
    let json = format!(
        r#"{{"vin":"{vin}","seq":"3","capturedAtMs":"{}","diagnostics":{{"dtcs":[{{"code":"{code}","ecu":"engine"}}]}}}}"#,
        now_ms() - 500
    );
    let c = consumer(&["telegate.smart-service", "telegate.product-insights"]);
    publish_v5(
        s.mqtt.listen_v5.expect("v5"),
        vec![(
            vehicle_topic(&vin, FrameKind::Diagnostics),
            json.into_bytes(),
        )],
    )
    .await;
    // One pass over both topics: they arrive in either order.
    let got = collect(&c, 2, Duration::from_secs(30), |g| {
        g.key.as_deref() == Some(vin.as_bytes())
            || (g.topic == "telegate.product-insights"
                && String::from_utf8_lossy(&g.payload).contains(code.as_str()))
    })
    .await;
    let (anon, smart): (Vec<Got>, Vec<Got>) = got
        .into_iter()
        .partition(|g| g.topic == "telegate.product-insights");
    assert_eq!(smart.len(), 1, "smart-service record");
    assert_eq!(smart[0].topic, "telegate.smart-service");
    assert_eq!(smart[0].header("telegate-seq"), Some("3"));
    // The anonymous copy carries no key, no sequence and an hour-granular time.
    assert_eq!(anon.len(), 1, "anonymous product-insights record");
    assert_eq!(anon[0].key, None);
    assert_eq!(anon[0].header("telegate-subject"), Some("anonymous"));
    assert_eq!(anon[0].header("telegate-seq"), None);
    let (payload, _) = decode(&anon[0].payload).expect("frame");
    assert!(payload.vin.is_empty() && payload.seq == 0);
    assert_eq!(payload.captured_at_ms % 3_600_000, 0);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_become_rejected_records_without_the_vin() {
    let dir = tempfile::tempdir().expect("tmp");
    let (gw, s) = start(dir.path()).await;
    let vin = unique_vin();
    let other = unique_vin();
    let keys = Keyring::from_toml(&std::fs::read_to_string(key_file(dir.path())).expect("keys"))
        .expect("keys");
    let c = consumer(&["telegate.rejected"]);

    let mut mismatched = frame(&other, 1, status());
    let good_topic = vehicle_topic(&vin, FrameKind::Status);
    let bad_vin = format!("{}I", &vin[..16]);
    mismatched.vin = other.clone();
    let msgs = vec![
        (good_topic.clone(), encode(&mismatched, PayloadFormat::Json)),
        (
            vehicle_topic(&bad_vin, FrameKind::Status),
            encode(&frame(&bad_vin, 1, status()), PayloadFormat::Json),
        ),
        (good_topic.clone(), b"{\"vin\": trunc".to_vec()),
        (
            vehicle_topic(&vin, FrameKind::Location),
            encode(&frame(&vin, 2, status()), PayloadFormat::Protobuf),
        ),
    ];
    publish_v4(s.mqtt.listen.expect("v4"), msgs).await;
    let hashes = [keys.subject_hash(&vin), keys.subject_hash(&bad_vin)];
    let got = collect(&c, 4, Duration::from_secs(30), |g| {
        g.key
            .as_deref()
            .is_some_and(|k| hashes.iter().any(|h| h.as_bytes() == k))
    })
    .await;
    let mut reasons: Vec<String> = got
        .iter()
        .map(|g| g.header("telegate-reason").unwrap_or("").to_owned())
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            "decode-failed",
            "kind-mismatch",
            "vin-malformed",
            "vin-mismatch"
        ]
    );
    for g in &got {
        let text = String::from_utf8_lossy(&g.payload);
        for v in [&vin, &other, &bad_vin] {
            assert!(
                !text.contains(v.as_str()),
                "raw VIN in rejected payload: {text}"
            );
            assert!(g.headers.values().all(|h| !h.contains(v.as_str())));
        }
        let body: serde_json::Value =
            serde_json::from_str(&text).expect("rejected records are JSON");
        assert_eq!(body["keyId"], "test-1");
        assert!(body["receivedAtMs"].as_str().is_some_and(|t| !t.is_empty()));
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_purposes_drop_and_the_drop_is_counted() {
    let dir = tempfile::tempdir().expect("tmp");
    let (gw, s) = start(dir.path()).await;
    let metrics = s.metrics_listen.expect("metrics");
    let vin = unique_vin();
    let call = frame(
        &vin,
        5,
        Body::Breakdown(pb::BreakdownCall {
            call_id: "call-1".into(),
            consent: Some(pb::BreakdownConsent {
                assistance: false,
                dealer: false,
            }),
            ..Default::default()
        }),
    );
    // A status frame after the call proves the pipeline went past the breakdown frame.
    let after = frame(&vin, 6, status());
    let c = consumer(&["telegate.breakdown-call", "telegate.smart-service"]);
    publish_v4(
        s.mqtt.listen.expect("v4"),
        vec![
            (topic_of(&call), encode(&call, PayloadFormat::Protobuf)),
            (topic_of(&after), encode(&after, PayloadFormat::Protobuf)),
        ],
    )
    .await;
    let got = collect(&c, 1, Duration::from_secs(30), |g| {
        g.key.as_deref() == Some(vin.as_bytes()) && g.topic == "telegate.smart-service"
    })
    .await;
    assert_eq!(got.len(), 1);
    let stray = collect(&c, 1, Duration::from_secs(3), |g| {
        g.key.as_deref() == Some(vin.as_bytes()) && g.topic == "telegate.breakdown-call"
    })
    .await;
    assert!(
        stray.is_empty(),
        "no consent given in the call: the breakdown purposes must drop"
    );
    let (code, body) = http_get(metrics, "/metrics").expect("metrics");
    assert_eq!(code, 200);
    let dropped = telegate_gateway::http::samples(&body, "telegate_records_dropped_total")
        .into_iter()
        .find(|(l, _)| l.contains("breakdown-assistance") && l.contains("event-consent-missing"))
        .map(|(_, v)| v)
        .unwrap_or(0.0);
    assert!(dropped >= 1.0, "drop counted: {body}");
    assert!(!body.contains(&vin), "no VIN in metrics");
    assert_eq!(http_get(metrics, "/healthz").expect("healthz").0, 200);
    assert_eq!(http_get(metrics, "/readyz").expect("readyz").0, 200);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_that_keeps_records_longer_than_policy_is_tightened_at_start() {
    let dir = tempfile::tempdir().expect("tmp");
    let ns = format!("r{:08x}.", rand::random::<u32>());
    let config = gateway_config("reference", &ns, dir.path());
    let kafka_cfg = config.kafka.clone();
    let topic = format!("{ns}telegate.rejected");
    // Someone created the topic before telegate, keeping records for 400 days.
    telegate_kafka::ensure_topics(
        &kafka_cfg,
        &[telegate_policy::TopicSpec {
            name: topic.clone(),
            retention: Duration::from_secs(400 * 86_400),
            compact: false,
        }],
    )
    .await
    .expect("pre-existing topic");
    // The broker applies the topic's settings through its metadata log: wait until it
    // describes them, as it would long before telegate starts.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while telegate_kafka::topic_retention_ms(&kafka_cfg, &topic)
        .await
        .expect("described")
        != Some(400 * 86_400_000)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the topic's retention never showed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let gw = Gateway::start(&config, PackSource::Config)
        .await
        .expect("gateway starts");
    let policy = gw
        .pack()
        .topics()
        .into_iter()
        .find(|t| t.name == topic)
        .expect("the pack writes the topic");
    assert!(policy.retention < Duration::from_secs(400 * 86_400));
    assert_eq!(
        telegate_kafka::topic_retention_ms(&kafka_cfg, &topic)
            .await
            .expect("described"),
        Some(policy.retention.as_millis() as i64),
        "the topic keeps records only as long as policy allows"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_puback_means_kafka_holds_the_frames_records() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let dir = tempfile::tempdir().expect("tmp");
    let ns = format!("d{:08x}.", rand::random::<u32>());
    let mut config = gateway_config("reference", &ns, dir.path());
    // The producer holds records for a second and a half before it sends them: a PUBACK
    // that did not wait for Kafka would come long before the records are there.
    config.kafka.linger_ms = 1_500;
    let gw = Gateway::start(&config, PackSource::Config)
        .await
        .expect("gateway starts");
    let vin = unique_vin();
    let f = frame(&vin, 1, status());
    let addr = config.mqtt.listen.expect("mqtt");
    let (client, mut ev) =
        AsyncClient::new(MqttOptions::new("puback", "127.0.0.1", addr.port()), 8);
    client
        .publish(
            vehicle_topic(&vin, FrameKind::Status),
            QoS::AtLeastOnce,
            false,
            encode(&f, PayloadFormat::Protobuf),
        )
        .await
        .expect("queued");
    loop {
        match tokio::time::timeout(Duration::from_secs(20), ev.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => break,
            Ok(Ok(_)) => {}
            other => panic!("no PUBACK: {other:?}"),
        }
    }
    let probe: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka())
        .create()
        .expect("consumer");
    let topic = format!("{ns}telegate.smart-service");
    let (_, high) = probe
        .fetch_watermarks(&topic, 0, Duration::from_secs(10))
        .expect("watermarks");
    assert_eq!(high, 1, "at PUBACK time Kafka holds the frame's record");
    gw.shutdown().await;
}

/// One way to stop: when `Gateway::shutdown` returns, every task the gateway started has
/// ended (listeners, connections, the pipeline and its state writes, the followers of the
/// state and request topics, the admin API and its sweeper, the roll markers, the HTTP
/// endpoints), even with a vehicle still connected and one client that never sent its
/// CONNECT.
#[test]
fn when_shutdown_returns_every_task_of_the_gateway_has_ended() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let alive = || rt.metrics().num_alive_tasks();
    let dir = tempfile::tempdir().expect("tmp");
    let ns = format!("s{:08x}.", rand::random::<u32>());
    let mut config = gateway_config("reference", &ns, dir.path());
    config.metrics_listen = Some(free_addr());
    config.admin.listen = Some(free_addr());
    config.admin.token = Some("shutdown-test-token-0123456789".to_owned());
    config.state_roll_interval = Duration::from_secs(1);
    let before = alive();
    rt.block_on(async {
        let gw = Gateway::start(&config, PackSource::Config)
            .await
            .expect("gateway starts");
        let addr = config.mqtt.listen.expect("mqtt");
        // A vehicle connected, with a frame acknowledged.
        let vin = unique_vin();
        let f = frame(&vin, 1, status());
        let topic = vehicle_topic(&vin, FrameKind::Status);
        publish_v4(addr, vec![(topic, encode(&f, PayloadFormat::Protobuf))]).await;
        let mut connected = std::net::TcpStream::connect(addr).expect("connects");
        use std::io::{Read, Write};
        connected
            .write_all(&[
                0x10, 0x10, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 30, 0, 4, b's', b'h', b'u', b't',
            ])
            .expect("CONNECT");
        let mut connack = [0u8; 4];
        connected.read_exact(&mut connack).expect("CONNACK");
        // And a client that never sends its CONNECT.
        let _silent = std::net::TcpStream::connect(addr).expect("connects");
        assert!(alive() > before, "the gateway runs tasks");
        gw.shutdown().await;
    });
    assert_eq!(alive(), before, "tasks outlived Gateway::shutdown");
}
