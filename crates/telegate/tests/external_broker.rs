//! External-broker mode as an operator runs it: Mosquitto 2 (Debian's) takes the vehicles'
//! publishes, two `telegate serve --mqtt-external` workers share them through an MQTT 5
//! shared subscription, one worker is killed with -9 under load and started again with the
//! same client id, and every frame the broker accepted is in Kafka.

use rumqttc::{AsyncClient, Event, MqttOptions, QoS};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use telegate_frame::pb::{self, vehicle_frame::Body};
use telegate_tests::*;

/// A child process killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn mosquitto(dir: &Path) -> (Process, SocketAddr) {
    mosquitto_with(dir, "")
}

/// Mosquitto with a plain listener (returned) for the test's vehicles, and `more` appended
/// to its configuration.
fn mosquitto_with(dir: &Path, more: &str) -> (Process, SocketAddr) {
    let addr = free_addr();
    let conf = dir.join("mosquitto.conf");
    // No limit on messages queued for a worker that is away, none on those in flight to one
    // (its receive maximum applies): the settings docs/operations.md names for Mosquitto.
    std::fs::write(
        &conf,
        format!(
            "per_listener_settings false\nallow_anonymous true\nmax_queued_messages 0\n\
             max_inflight_messages 0\npersistence false\nlistener {} 127.0.0.1\n{more}",
            addr.port()
        ),
    )
    .expect("mosquitto.conf");
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto runs (apt-get install mosquitto; scripts/test does it)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "mosquitto did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    (Process(child), addr)
}

struct Worker {
    process: Process,
    metrics: SocketAddr,
    log: PathBuf,
}

fn worker(dir: &Path, ns: &str, broker: SocketAddr, id: &str) -> Worker {
    worker_at(dir, ns, &format!("mqtt://{broker}"), &[], id)
}

fn worker_at(dir: &Path, ns: &str, url: &str, tls: &[&str], id: &str) -> Worker {
    let metrics = free_addr();
    let log = dir.join(format!("{id}.log"));
    let child = Command::new(env!("CARGO_BIN_EXE_telegate"))
        .arg("serve")
        .args(["--mqtt-external", url])
        .args(tls)
        .args(["--mqtt-client-id", id])
        .args(["--metrics-listen", &metrics.to_string()])
        .arg("--key-file")
        .arg(dir.join("keys.toml"))
        .args([
            "--policy",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../../packs/loadgen.toml"),
        ])
        .env("TELEGATE_KAFKA_BOOTSTRAP", kafka())
        .env("TELEGATE__KAFKA__TOPIC_NAMESPACE", ns)
        // Records wait 300 ms in the producer: at the kill, hundreds of frames are in the
        // worker and not yet in Kafka, which a worker acknowledging early would lose.
        .env("TELEGATE__KAFKA__LINGER_MS", "300")
        .env("TELEGATE_LOG", "info,librdkafka=warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("telegate runs");
    Worker {
        process: Process(child),
        metrics,
        log,
    }
}

impl Worker {
    async fn ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let log = || std::fs::read_to_string(&self.log).unwrap_or_default();
            if http_get(self.metrics, "/readyz")
                .map(|(c, _)| c)
                .unwrap_or(0)
                == 200
                && log().contains("connected to the external MQTT broker")
            {
                return;
            }
            assert!(Instant::now() < deadline, "not ready: {}", log());
            assert!(
                self.process.0.try_wait().expect("status").is_none(),
                "exited: {}",
                log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Frames this worker handed to its pipeline, from its /metrics.
    fn received(&self) -> u64 {
        let (_, text) = http_get(self.metrics, "/metrics").unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix("telegate_ingress_received_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0) as u64
    }
}

fn status(vin: &str, seq: u64) -> (String, Vec<u8>) {
    let body = Body::Status(pb::Status {
        odometer_km: Some(1000.0 + seq as f64),
        ..Default::default()
    });
    message(vin, seq, now_ms() - 500, body)
}

/// Publishes every frame QoS 1 to the broker at about `per_second`, and returns once the
/// broker acknowledged them all.
async fn publish(broker: SocketAddr, frames: Vec<(String, Vec<u8>)>, per_second: u64) {
    let mut options = MqttOptions::new("vehicles", broker.ip().to_string(), broker.port());
    options.set_inflight(200);
    let (client, mut eventloop) = AsyncClient::new(options, 256);
    let total = frames.len();
    let acked = tokio::spawn(async move {
        let mut acks = 0;
        while acks < total {
            match eventloop.poll().await {
                Ok(Event::Incoming(rumqttc::Packet::PubAck(_))) => acks += 1,
                Ok(_) => {}
                Err(e) => panic!("the vehicles' connection failed: {e}"),
            }
        }
    });
    let pause = Duration::from_micros(1_000_000 / per_second);
    for (topic, payload) in frames {
        client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .expect("queued");
        tokio::time::sleep(pause).await;
    }
    tokio::time::timeout(Duration::from_secs(60), acked)
        .await
        .expect("the broker acknowledged every frame")
        .expect("publisher");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_the_broker_and_a_killed_one_loses_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    key_file(dir.path());
    let ns = format!("x{:08x}.", rand::random::<u32>());
    let (_broker, broker) = mosquitto(dir.path());
    let mut a = worker(dir.path(), &ns, broker, "worker-a");
    let mut b = worker(dir.path(), &ns, broker, "worker-b");
    a.ready().await;
    b.ready().await;

    let vins: Vec<String> = (0..20).map(|_| unique_vin()).collect();
    let per_vehicle = 150u64;
    let frames: Vec<_> = (1..=per_vehicle)
        .flat_map(|seq| vins.iter().map(move |v| status(v, seq)))
        .collect();
    let total = frames.len();
    let publishing = tokio::spawn(publish(broker, frames, 1_000));

    // Both workers take frames; then A is killed with -9 mid-stream and started again.
    let deadline = Instant::now() + Duration::from_secs(30);
    while a.received() < 200 || b.received() < 200 {
        assert!(Instant::now() < deadline, "both workers take frames");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let a_before = a.received();
    a.process.0.kill().expect("kill -9");
    let _ = a.process.0.wait();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut a = worker(dir.path(), &ns, broker, "worker-a");
    a.ready().await;
    publishing.await.expect("published");

    // Every frame the broker accepted is in Kafka.
    let topic = format!("{ns}telegate.loadgen");
    let c = consumer(&[&topic]);
    let mut seen: BTreeMap<(Vec<u8>, String), usize> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < total && Instant::now() < deadline {
        for g in collect(&c, usize::MAX, Duration::from_millis(500), |_| true).await {
            let seq = g.header("telegate-seq").unwrap_or_default().to_owned();
            *seen.entry((g.key.unwrap_or_default(), seq)).or_default() += 1;
        }
    }
    let expected: BTreeSet<(Vec<u8>, String)> = vins
        .iter()
        .flat_map(|v| (1..=per_vehicle).map(move |s| (v.as_bytes().to_vec(), s.to_string())))
        .collect();
    let missing = expected.iter().filter(|k| !seen.contains_key(*k)).count();
    let doubled: usize = seen.values().map(|n| n - 1).sum();
    eprintln!(
        "external broker: {total} frames; worker A took {a_before} before the kill, {} after; \
         worker B took {}; missing {missing}, in Kafka more than once {doubled}",
        a.received(),
        b.received()
    );
    assert_eq!(
        missing, 0,
        "frames the broker accepted are missing from Kafka"
    );
    assert!(
        a.received() > 0,
        "the restarted worker took its share again (its session's frames at least)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_reads_from_a_broker_over_mutual_tls() {
    let dir = tempfile::tempdir().expect("tmp");
    key_file(dir.path());
    let ns = format!("y{:08x}.", rand::random::<u32>());
    // The broker's TLS listener asks for a client certificate from the fleet PKI's CA; the
    // worker presents one issued by `telegate pki`.
    let pki = dir.path().join("pki");
    telegate_pki::init(&pki, &[]).expect("pki init");
    let worker_vin = telegate_frame::Vin::parse(&unique_vin()).expect("VIN");
    let identity = telegate_pki::issue(&pki, &worker_vin).expect("issue");
    // Mosquitto started as root reads its files as the user `mosquitto`.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        pki.join(telegate_pki::SERVER_KEY),
        std::fs::Permissions::from_mode(0o644),
    )
    .expect("chmod");
    let tls_addr = free_addr();
    let (_broker, plain) = mosquitto_with(
        dir.path(),
        &format!(
            "listener {} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
            tls_addr.port(),
            pki.join(telegate_pki::CA_CERT).display(),
            pki.join(telegate_pki::SERVER_CERT).display(),
            pki.join(telegate_pki::SERVER_KEY).display()
        ),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(tls_addr).is_err() {
        assert!(Instant::now() < deadline, "mosquitto's TLS listener");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let path = |p: &Path| p.to_str().expect("path").to_owned();
    let tls = [
        "--mqtt-external-ca".to_owned(),
        path(&pki.join(telegate_pki::CA_CERT)),
        "--mqtt-external-cert".to_owned(),
        path(&identity.cert),
        "--mqtt-external-key".to_owned(),
        path(&identity.key),
    ];
    let tls: Vec<&str> = tls.iter().map(String::as_str).collect();
    let mut w = worker_at(
        dir.path(),
        &ns,
        &format!("mqtts://127.0.0.1:{}", tls_addr.port()),
        &tls,
        "worker-tls",
    );
    w.ready().await;

    let vins: Vec<String> = (0..5).map(|_| unique_vin()).collect();
    let frames: Vec<_> = (1..=20u64)
        .flat_map(|seq| vins.iter().map(move |v| status(v, seq)))
        .collect();
    let total = frames.len();
    publish(plain, frames, 1_000).await;
    let topic = format!("{ns}telegate.loadgen");
    let got = collect(&consumer(&[&topic]), total, Duration::from_secs(30), |_| {
        true
    })
    .await;
    assert_eq!(got.len(), total, "every frame, read over mutual TLS");
}
