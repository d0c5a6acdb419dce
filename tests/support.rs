//! Helpers shared by the system tests and the binary's black-box tests: the broker the suite
//! runs against, free ports, fresh VINs, key files, reading topics, sending frames over MQTT.

use rdkafka::ClientConfig;
use rdkafka::consumer::StreamConsumer;
use rdkafka::message::{Headers, Message};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};
pub use telegate_frame::now_ms;

/// The repository's root directory (scripts/, consumers/, docs/).
pub fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .to_path_buf()
}

/// The broker the suite runs against. `scripts/test` starts one and sets the variable; a
/// run without it fails here rather than skipping.
pub fn kafka() -> String {
    std::env::var("TELEGATE_TEST_KAFKA").unwrap_or_else(|_| {
        panic!(
            "TELEGATE_TEST_KAFKA is not set: these tests need a real Kafka-protocol broker. \
             Run scripts/test, which installs and starts one."
        )
    })
}

/// A loopback address nothing listens on now, for a listener a test or a process it starts will
/// open. Taken below the kernel's ephemeral range: a port `bind(0)` hands out comes from that
/// range, and an outgoing connection (the many Kafka clients of a run) may take it as its own
/// local port before the listener opens ("Address already in use").
pub fn free_addr() -> SocketAddr {
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    if ephemeral > 11_000 {
        for _ in 0..1_000 {
            let port = rand::random_range(10_000..ephemeral);
            if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
                return l.local_addr().expect("a bound address");
            }
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

/// HAProxy, which scripts/test installs from Debian (in /usr/sbin, not always on PATH).
pub fn haproxy_binary() -> std::path::PathBuf {
    ["/usr/sbin/haproxy", "/usr/local/sbin/haproxy"]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| std::path::PathBuf::from("haproxy"))
}

/// A VIN no other test uses (valid structure; check digit not required by default).
pub fn unique_vin() -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHJKLMNPRSTUVWXYZ";
    let mut n: u128 = rand::random();
    let tail: String = (0..11)
        .map(|_| {
            let c = ALPHABET[(n % ALPHABET.len() as u128) as usize] as char;
            n /= ALPHABET.len() as u128;
            c
        })
        .collect();
    format!("WP0ZZZ{tail}")
}

/// A key file with known secrets, so tests can compute the pseudonyms telegate emits and the
/// names its state topic files vehicles under.
pub const TEST_SECRET: [u8; 32] = [0x5a; 32];
pub fn key_file(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("keys.toml");
    std::fs::write(&path, key_file_text(&[("test-w1", true)])).expect("write key file");
    path
}

/// The test key file's text with these wrapping keys (id, active); each id has a secret of
/// its own, always the same.
pub fn key_file_text(wrapping: &[(&str, bool)]) -> String {
    let hex = |b: u8| format!("{b:02x}").repeat(32);
    let mut text = format!(
        "[[keys]]\nid = \"test-1\"\nsecret_hex = \"{}\"\nactive = true\n\n[state]\nindex_hex = \"{}\"\n",
        hex(TEST_SECRET[0]),
        hex(0x1d)
    );
    for (id, active) in wrapping {
        let seed = id
            .bytes()
            .fold(0u8, |a, b| a.wrapping_mul(31).wrapping_add(b));
        text.push_str(&format!(
            "[[state.wrapping]]\nid = \"{id}\"\nsecret_hex = \"{}\"\nactive = {active}\n",
            hex(seed)
        ));
    }
    text
}

/// One consumed record.
#[derive(Debug, Clone)]
pub struct Got {
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub headers: BTreeMap<String, String>,
    pub payload: Vec<u8>,
}

impl Got {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// Reads every partition of `topics` from the beginning. Partitions are assigned directly,
/// not through a consumer group: no join or rebalance to wait for.
pub fn consumer(topics: &[&str]) -> StreamConsumer {
    consumer_on(&kafka(), topics)
}

/// [`consumer`] on another cluster than the suite's.
pub fn consumer_on(bootstrap: &str, topics: &[&str]) -> StreamConsumer {
    let c: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set(
            "group.id",
            format!("telegate-test-{:016x}", rand::random::<u64>()),
        )
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "50")
        .create()
        .expect("consumer");
    let assigned =
        telegate_kafka::assign_all(&c, topics, telegate_kafka::Start::Beginning).expect("assign");
    for topic in topics {
        assert!(
            assigned.iter().any(|(t, _)| t == topic),
            "topic {topic} has no partitions"
        );
    }
    c
}

/// What `keep` accepts: the `expected` records (waited for up to 30 s), then anything else that
/// arrives within `stray`, for tests that assert something did not come.
pub async fn collect_expecting(
    c: &StreamConsumer,
    expected: usize,
    stray: Duration,
    keep: impl Fn(&Got) -> bool,
) -> Vec<Got> {
    let mut got = collect(c, expected, Duration::from_secs(30), &keep).await;
    got.extend(collect(c, usize::MAX, stray, &keep).await);
    got
}

/// Reads records until `want` of them match `keep` or `timeout` passes.
pub async fn collect(
    c: &StreamConsumer,
    want: usize,
    timeout: Duration,
    keep: impl Fn(&Got) -> bool,
) -> Vec<Got> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let Ok(Ok(m)) = tokio::time::timeout(left, c.recv()).await else {
            continue;
        };
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|x| {
                        (
                            x.key.to_owned(),
                            String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let got = Got {
            topic: m.topic().to_owned(),
            key: m.key().map(<[u8]>::to_vec),
            headers,
            payload: m.payload().unwrap_or_default().to_vec(),
        };
        if keep(&got) {
            out.push(got);
        }
    }
    out
}

/// Waits until `ready` holds, looking every 50 ms; fails naming `what` once `within` has
/// passed. For a test that waits on something it can observe, instead of a fixed sleep.
pub async fn wait_until(what: &str, within: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ready() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A minimal HTTP GET on loopback: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// A topic and its payload.
pub type Outbound = (String, Vec<u8>);

/// Splits messages by the vehicle their topic names (`/tenants/{VIN}/…`), keeping each
/// vehicle's order: the edge holds a connection to one vehicle's topics.
pub fn by_vehicle(msgs: Vec<Outbound>) -> Vec<Vec<Outbound>> {
    let mut tenants: Vec<String> = Vec::new();
    let mut groups: Vec<Vec<Outbound>> = Vec::new();
    for (topic, payload) in msgs {
        let tenant = topic.split('/').nth(2).unwrap_or_default().to_owned();
        match tenants.iter().position(|t| *t == tenant) {
            Some(i) => groups[i].push((topic, payload)),
            None => {
                tenants.push(tenant);
                groups.push(vec![(topic, payload)]);
            }
        }
    }
    groups
}

/// Publishes with MQTT 3.1.1 (QoS 1), one connection per vehicle, and waits for every
/// PUBACK.
pub async fn publish_v4(addr: SocketAddr, msgs: Vec<(String, Vec<u8>)>) {
    for vehicle in by_vehicle(msgs) {
        publish_v4_one(addr, vehicle).await;
    }
}

/// Publishes one message with MQTT 3.1.1 (QoS 1); true if the edge refused it: the
/// connection was refused or closed instead of a PUBACK.
pub async fn publish_refused(addr: SocketAddr, topic: String, payload: Vec<u8>) -> bool {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let o = MqttOptions::new(
        format!("t-{:x}", rand::random::<u32>()),
        "127.0.0.1",
        addr.port(),
    );
    let (c, mut ev) = AsyncClient::new(o, 8);
    c.publish(topic, QoS::AtLeastOnce, false, payload)
        .await
        .expect("queued");
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ev.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => return false,
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return true,
            Err(_) => panic!("neither a PUBACK nor a refusal within 10 s"),
        }
    }
}

async fn publish_v4_one(addr: SocketAddr, msgs: Vec<(String, Vec<u8>)>) {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let mut o = MqttOptions::new(
        format!("t-{:x}", rand::random::<u32>()),
        "127.0.0.1",
        addr.port(),
    );
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (c, mut ev) = AsyncClient::new(o, 256);
    let n = msgs.len();
    let sender = tokio::spawn(async move {
        for (t, p) in msgs {
            c.publish(t, QoS::AtLeastOnce, false, p)
                .await
                .expect("queued");
        }
        c
    });
    let mut acked = 0;
    while acked < n {
        // A PUBACK waits for Kafka: through a leader election that takes seconds.
        match tokio::time::timeout(Duration::from_secs(60), ev.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
            Ok(Ok(_)) => {}
            other => panic!("MQTT v4 publish failed after {acked} acks: {other:?}"),
        }
    }
    if let Ok(c) = sender.await {
        let _ = c.disconnect().await;
        // Let the DISCONNECT go out before the event loop is dropped.
        let _ = tokio::time::timeout(Duration::from_millis(200), ev.poll()).await;
    }
}

/// Settings for a gateway under test: loopback ports, the broker under test, one partition,
/// a shipped pack, the test key file, and its own topic namespace.
pub fn gateway_config(
    pack: &str,
    namespace: &str,
    dir: &std::path::Path,
) -> telegate_gateway::Config {
    let mut s = telegate_gateway::Config::default();
    s.mqtt.listen = Some(free_addr());
    s.mqtt.listen_v5 = None;
    // Test clients connect without certificates (the closed edge has its own tests).
    s.mqtt.allow_anonymous = true;
    s.metrics_listen = None;
    s.kafka.bootstrap = kafka();
    s.kafka.linger_ms = 1;
    s.kafka.partitions = 1;
    s.kafka.topic_namespace = namespace.to_owned();
    s.policy = Some(format!("{}/../packs/{pack}.toml", env!("CARGO_MANIFEST_DIR")).into());
    s.key_file = Some(key_file(dir));
    s
}

/// A frame as its vehicle publishes it: the topic for its kind and the protobuf payload.
pub fn message(
    vin: &str,
    seq: u64,
    captured_at_ms: i64,
    body: telegate_frame::pb::vehicle_frame::Body,
) -> (String, Vec<u8>) {
    let kind = telegate_frame::FrameKind::of_body(&body);
    let frame = telegate_frame::pb::VehicleFrame {
        vin: vin.to_owned(),
        seq,
        captured_at_ms,
        body: Some(body),
    };
    (
        telegate_frame::vehicle_topic(vin, kind),
        telegate_frame::encode(&frame, telegate_frame::PayloadFormat::Protobuf),
    )
}

/// An Apache Kafka cluster of its own for a fault test (`scripts/kafka`), so that the suite's
/// broker stays untouched. Its files are in a directory the test owns (drop the cluster
/// first); its nodes are stopped with SIGKILL when it is dropped.
#[derive(Debug)]
pub struct KafkaCluster {
    dir: std::path::PathBuf,
    bootstrap: String,
}

impl KafkaCluster {
    fn script() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/kafka")
    }

    fn run(&self, args: &[&str]) {
        let out = std::process::Command::new(Self::script())
            .args(args)
            .arg("--dir")
            .arg(&self.dir)
            .output()
            .expect("scripts/kafka runs");
        assert!(
            out.status.success(),
            "scripts/kafka {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts `nodes` nodes (1 or 3) with their files in `dir`, and waits until every one
    /// serves.
    pub fn start(nodes: u8, dir: &std::path::Path) -> Self {
        let out = std::process::Command::new(Self::script())
            .args(["start", "--nodes", &nodes.to_string(), "--dir"])
            .arg(dir)
            .output()
            .expect("scripts/kafka runs");
        assert!(
            out.status.success(),
            "a {nodes}-node cluster did not start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bootstrap = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        Self {
            dir: dir.to_owned(),
            bootstrap,
        }
    }

    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// Stops every node with SIGTERM (a clean shutdown) and waits until they are gone.
    pub fn stop(&self) {
        self.run(&["stop"]);
    }

    /// Starts node `id` again on its data and port, and waits until it serves.
    pub fn restart_node(&self, id: u8) {
        self.run(&["restart-node", &id.to_string()]);
    }

    /// Kills node `id` with SIGKILL: no shutdown, no handing over of leadership.
    pub fn kill(&self, id: i32) {
        let pid =
            std::fs::read_to_string(self.dir.join(format!("node-{id}.pid"))).expect("pid file");
        let status = std::process::Command::new("kill")
            .args(["-KILL", pid.trim()])
            .status()
            .expect("kill");
        assert!(status.success());
    }
}

impl Drop for KafkaCluster {
    fn drop(&mut self) {
        let _ = std::process::Command::new(Self::script())
            .args(["stop", "--kill", "--dir"])
            .arg(&self.dir)
            .output();
    }
}

/// How often each (VIN, seq) of `vins` is in `topic` on the cluster at `bootstrap` (records
/// keyed by VIN, with `telegate-seq`): read from the beginning until every key in `want` was
/// seen, or `patience` passed without a new record.
pub async fn frames_in_kafka(
    bootstrap: &str,
    topic: &str,
    vins: &[String],
    want: &BTreeSet<(String, u64)>,
    patience: Duration,
) -> HashMap<(String, u64), u32> {
    let ours: BTreeSet<&str> = vins.iter().map(String::as_str).collect();
    let c: StreamConsumer = consumer_on(bootstrap, &[topic]);
    let mut seen: HashMap<(String, u64), u32> = HashMap::new();
    let mut missing = want.len();
    while missing > 0 {
        let Ok(Ok(m)) = tokio::time::timeout(patience, c.recv()).await else {
            break;
        };
        let vin = m.key().and_then(|k| std::str::from_utf8(k).ok());
        let seq = m
            .headers()
            .and_then(|h| h.iter().find(|x| x.key == "telegate-seq"))
            .and_then(|x| x.value)
            .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok());
        if let (Some(vin), Some(seq)) = (vin, seq)
            && ours.contains(vin)
        {
            let key = (vin.to_owned(), seq);
            let n = seen.entry(key.clone()).or_default();
            *n += 1;
            if *n == 1 && want.contains(&key) {
                missing -= 1;
            }
        }
    }
    seen
}

/// The variable that makes a test binary a gateway process ([`run_gateway_process`]).
const GATEWAY_CONFIG: &str = "TELEGATE_TEST_GATEWAY_CONFIG";
const GATEWAY_READY: &str = "telegate-test-gateway-ready";

/// The body of a test binary's ignored `gateway_process` test, which is not a test: the
/// gateway's own process, for tests that kill it with SIGKILL. [`spawn_gateway_process`] runs
/// the binary again with a JSON config named in the environment; without one, this returns at
/// once.
pub fn run_gateway_process() {
    let Ok(path) = std::env::var(GATEWAY_CONFIG) else {
        return;
    };
    let config: telegate_gateway::Config =
        serde_json::from_slice(&std::fs::read(path).expect("config file")).expect("config");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let _gateway =
            telegate_gateway::Gateway::start(&config, telegate_gateway::PackSource::Config)
                .await
                .expect("gateway starts");
        println!("{GATEWAY_READY}");
        std::future::pending::<()>().await;
    });
}

/// Runs this test binary again as its `gateway_process` with the JSON config at `config`, its
/// log in `log`, and returns once the gateway is ready.
pub fn spawn_gateway_process(
    config: &std::path::Path,
    log: &std::path::Path,
) -> std::process::Child {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe().expect("this test binary"))
        .args(["gateway_process", "--exact", "--ignored", "--nocapture"])
        .env(GATEWAY_CONFIG, config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(log).expect("log file"))
        .spawn()
        .expect("the gateway process starts");
    let out = child.stdout.take().expect("stdout");
    let ready = std::io::BufReader::new(out)
        .lines()
        .map_while(Result::ok)
        .any(|line| line.contains(GATEWAY_READY));
    assert!(
        ready,
        "the gateway process did not start: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    child
}
