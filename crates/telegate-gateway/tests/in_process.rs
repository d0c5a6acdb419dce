//! The gateway's pipeline and its consent state with no Kafka broker to start: librdkafka's
//! in-process mock cluster holds every topic in memory and speaks the real protocol, so the
//! same code paths (the sink, the consent-state log and its follower, the ledger) run
//! wherever `cargo test` does. Durability, compaction and broker faults are the system
//! tests' (tests/, against Apache Kafka).

use rdkafka::mocking::MockCluster;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;
use telegate_frame::pb::{self, vehicle_frame::Body};
use telegate_frame::{FrameKind, PayloadFormat, Vin, encode, now_ms, vehicle_topic};
use telegate_gateway::{Config, Gateway, PackSource, StateStore};
use telegate_policy::consent_topics;

/// A key file with fixed secrets, so that a second store can read what the gateway wrote.
const KEYS: &str = "[[keys]]\nid = \"k1\"\nsecret_hex = \"5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a\"\nactive = true\n\n[state]\nindex_hex = \"1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d\"\n[[state.wrapping]]\nid = \"w1\"\nsecret_hex = \"7777777777777777777777777777777777777777777777777777777777777777\"\nactive = true\n";

const VIN: &str = "WP0ZZZ99ZTS392124";

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// A gateway configuration on `mock`, with every topic it needs created there (the mock has
/// no CreateTopics).
fn on_mock(
    mock: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
    dir: &std::path::Path,
) -> Config {
    let mut config = Config::default();
    config.kafka.bootstrap = mock.bootstrap_servers();
    config.kafka.manage_topics = false;
    config.kafka.linger_ms = 1;
    config.mqtt.listen = Some(free_addr());
    config.mqtt.listen_v5 = None;
    config.mqtt.allow_anonymous = true;
    config.metrics_listen = None;
    config.policy = Some(concat!(env!("CARGO_MANIFEST_DIR"), "/../../packs/reference.toml").into());
    let keys = dir.join("keys.toml");
    std::fs::write(&keys, KEYS).expect("key file");
    config.key_file = Some(keys);
    let checked = config
        .check(&PackSource::Config)
        .expect("a valid configuration");
    for topic in checked.topics() {
        mock.create_topic(&topic.name, 1, 1).expect("topic");
    }
    config
}

/// Publishes `payload` to `topic` at QoS 1 with a raw MQTT 3.1.1 client and waits for the
/// PUBACK: the frame's records and its state change are then in the (mock) cluster.
fn publish_acknowledged(addr: SocketAddr, topic: &str, payload: &[u8]) {
    let string = |s: &[u8]| [&(s.len() as u16).to_be_bytes()[..], s].concat();
    let packet = |first: u8, body: Vec<u8>| {
        let mut out = vec![first];
        let mut n = body.len();
        loop {
            let b = (n % 128) as u8;
            n /= 128;
            out.push(if n > 0 { b | 0x80 } else { b });
            if n == 0 {
                break;
            }
        }
        out.extend(body);
        out
    };
    let mut s = TcpStream::connect(addr).expect("connects");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let connect = [
        &string(b"MQTT")[..],
        &[4, 0x02, 0, 30],
        &string(b"in-process"),
    ]
    .concat();
    s.write_all(&packet(0x10, connect)).expect("CONNECT");
    let mut connack = [0u8; 4];
    s.read_exact(&mut connack).expect("CONNACK");
    assert_eq!((connack[0], connack[3]), (0x20, 0));
    let publish = [&string(topic.as_bytes())[..], &[0, 1], payload].concat();
    s.write_all(&packet(0x32, publish)).expect("PUBLISH");
    let mut puback = [0u8; 4];
    s.read_exact(&mut puback).expect("PUBACK");
    assert_eq!(puback, [0x40, 2, 0, 1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_privacy_frame_reaches_the_consent_state_log_and_a_new_store_reads_it_back() {
    let mock = MockCluster::new(1).expect("mock cluster");
    let dir = tempfile::tempdir().expect("tmp");
    let config = on_mock(&mock, dir.path());
    let gw = Gateway::start(&config, PackSource::Config)
        .await
        .expect("gateway starts on the mock cluster");
    let frame = pb::VehicleFrame {
        vin: VIN.to_owned(),
        seq: 1,
        captured_at_ms: now_ms() - 1_000,
        body: Some(Body::Privacy(pb::PrivacySettings {
            private_mode: true,
            location_services: true,
            non_location_services: true,
            ..Default::default()
        })),
    };
    let addr = config.mqtt.listen.expect("listener");
    let topic = vehicle_topic(VIN, FrameKind::Privacy);
    let payload = encode(&frame, PayloadFormat::Protobuf);
    tokio::task::spawn_blocking(move || publish_acknowledged(addr, &topic, &payload))
        .await
        .expect("vehicle");
    let vin = Vin::parse(VIN).expect("VIN");
    let private_now =
        |store: &StateStore| store.with(&vin, |r| r.is_some_and(|r| r.settings_now().private_mode));
    assert!(
        private_now(gw.state()),
        "the gateway did not take private mode"
    );

    // Another instance starting now reads the consent-state log to its end first: the PUBACK
    // meant the change was in it.
    let keys = config.check(&PackSource::Config).expect("valid").keys;
    let [state_topic, _] = consent_topics("", config.ledger_retention);
    let other = StateStore::replicated(
        &config.kafka,
        &state_topic.name,
        Duration::from_secs(30),
        keys.state().clone(),
    )
    .await
    .expect("a second store reads the log");
    assert!(
        private_now(&other),
        "the second store did not read the change"
    );
    other.close(Duration::from_secs(5)).await;
    gw.shutdown().await;
}
