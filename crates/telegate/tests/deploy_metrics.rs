//! deploy/ against a running gateway: `telegate serve` with the Kubernetes ConfigMap's config
//! file, its files laid out as the Deployment mounts them (pack, key file, fleet TLS, CRL,
//! admin TLS and token), on the suite's Kafka. The test makes every event the dashboard and
//! the alert rules look at happen (valid, rejected and refused traffic, a Kafka delivery
//! failure, back-pressure, an unauthenticated admin call, a blocked account erased, a
//! consent-state record the keys cannot read), then checks that every metric they query is
//! on /metrics, and every label value they match on is one the gateway reports.

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use telegate_frame::Vin;
use telegate_frame::pb::{self, vehicle_frame::Body};
use telegate_tests::*;

const TOKEN: &str = "deploy-test-admin-token-0123456789";
const OPERATOR: &str = "ADMN0000000000001";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The value of a literal block (`key: |`) in a ConfigMap's data.
fn configmap_entry(yaml: &str, key: &str) -> String {
    let start = format!("  {key}: |");
    let mut lines = yaml.lines().skip_while(|l| *l != start);
    assert!(lines.next().is_some(), "no {key} in the ConfigMap");
    let mut out = String::new();
    for line in lines {
        if let Some(rest) = line.strip_prefix("    ") {
            out.push_str(rest);
        } else if !line.trim().is_empty() {
            break;
        }
        out.push('\n');
    }
    out
}

struct Serve {
    child: Child,
    log: PathBuf,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

impl Serve {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The Deployment's mounts under `root` (as /etc/telegate), and the config file pointing
/// at them.
fn lay_out_mounts(root: &Path) -> PathBuf {
    let etc = root.join("etc/telegate");
    let dir = |d: &str| {
        let p = etc.join(d);
        std::fs::create_dir_all(&p).expect("mount dir");
        p
    };
    let config = read(&repo().join("deploy/k8s/config.yaml"));
    let toml = configmap_entry(&config, "telegate.toml")
        .replace("/etc/telegate/", &format!("{}/", etc.display()));
    let config_file = dir("config").join("telegate.toml");
    std::fs::write(&config_file, toml).expect("config");
    // check-deploy compares the policy ConfigMap with this pack byte for byte.
    std::fs::copy(
        repo().join("packs/reference.toml"),
        dir("policy").join("reference.toml"),
    )
    .expect("pack");
    std::fs::copy(key_file(root), dir("keys").join("keys.toml")).expect("key file");
    let fleet = root.join("fleet");
    telegate_pki::init(&fleet, &[]).expect("fleet PKI");
    let tls = dir("tls");
    for f in [
        telegate_pki::SERVER_CERT,
        telegate_pki::SERVER_KEY,
        telegate_pki::CA_CERT,
    ] {
        std::fs::copy(fleet.join(f), tls.join(f)).expect("fleet TLS");
    }
    std::fs::copy(fleet.join(telegate_pki::CRL), dir("crl").join("crl.pem")).expect("CRL");
    let admin_pki = root.join("admin-pki");
    telegate_pki::init(&admin_pki, &[]).expect("admin PKI");
    let admin_tls = dir("admin-tls");
    for f in [
        telegate_pki::SERVER_CERT,
        telegate_pki::SERVER_KEY,
        telegate_pki::CA_CERT,
    ] {
        std::fs::copy(admin_pki.join(f), admin_tls.join(f)).expect("admin TLS");
    }
    std::fs::write(dir("admin-token").join("token"), TOKEN).expect("token");
    config_file
}

async fn start(root: &Path, ns: &str) -> (Serve, Addrs) {
    let config_file = lay_out_mounts(root);
    // Back-pressure on demand: librdkafka's queue holds one record, so the second record of
    // a frame finds it full. Appended: the deployment's config has no [kafka.extra].
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&config_file)
        .expect("config");
    writeln!(
        f,
        "\n[kafka.extra]\n\"queue.buffering.max.messages\" = \"1\""
    )
    .expect("append");
    let a = Addrs {
        plain: free_addr(),
        tls: free_addr(),
        metrics: free_addr(),
        admin: free_addr(),
    };
    let log = root.join("serve.log");
    let child = Command::new(env!("CARGO_BIN_EXE_telegate"))
        .args(["serve", "--config"])
        .arg(&config_file)
        // Loopback ports instead of the pod's, the suite's one-node Kafka, and the plain
        // development listener for the test's own clients beside the TLS edge.
        .env("TELEGATE_MQTT_TLS_LISTEN", a.tls.to_string())
        .env("TELEGATE_METRICS_LISTEN", a.metrics.to_string())
        .env("TELEGATE_ADMIN_LISTEN", a.admin.to_string())
        .env("TELEGATE_MQTT_ALLOW_ANONYMOUS", "true")
        .env("TELEGATE_MQTT_LISTEN", a.plain.to_string())
        .env("TELEGATE_MQTT5_LISTEN", free_addr().to_string())
        .env("TELEGATE_KAFKA_BOOTSTRAP", kafka())
        .env("TELEGATE__KAFKA__TOPIC_NAMESPACE", ns)
        .env("TELEGATE__KAFKA__PARTITIONS", "1")
        .env("TELEGATE__KAFKA__REPLICATION_FACTOR", "1")
        // A blocked account is erased a second after the block.
        .env("TELEGATE__ADMIN__BLOCK_GRACE", "1s")
        .env("TELEGATE__ADMIN__SWEEP_INTERVAL", "500ms")
        .env("TELEGATE_LOG", "info,librdkafka=warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("telegate serve runs");
    let mut serve = Serve { child, log };
    let deadline = Instant::now() + Duration::from_secs(60);
    while http_get(a.metrics, "/readyz").map(|(c, _)| c).unwrap_or(0) != 200 {
        assert!(
            Instant::now() < deadline && serve.child.try_wait().expect("status").is_none(),
            "serve with deploy/k8s/config.yaml did not become ready: {}",
            serve.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (serve, a)
}

struct Addrs {
    plain: std::net::SocketAddr,
    tls: std::net::SocketAddr,
    metrics: std::net::SocketAddr,
    admin: std::net::SocketAddr,
}

/// A topic that takes no record of telegate's size: every delivery to it fails.
async fn create_tiny_topic(name: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", kafka())
        .create()
        .expect("admin client");
    let topic = NewTopic::new(name, 1, TopicReplication::Fixed(1)).set("max.message.bytes", "64");
    let results = admin
        .create_topics([&topic], &AdminOptions::new())
        .await
        .expect("create topics");
    for r in results {
        r.expect("topic created");
    }
}

fn admin_cli(root: &Path, endpoint: &str, token: &str, call: &[&str]) -> Output {
    let pki = root.join("admin-pki");
    let operator = telegate_pki::ensure_issued(&pki, &Vin::parse(OPERATOR).expect("VIN"))
        .expect("operator certificate");
    Command::new(env!("CARGO_BIN_EXE_telegate"))
        .args(["admin", "--endpoint", endpoint, "--admin-ca"])
        .arg(pki.join(telegate_pki::CA_CERT))
        .arg("--admin-cert")
        .arg(&operator.cert)
        .arg("--admin-key")
        .arg(&operator.key)
        .args(call)
        .env("TELEGATE_ADMIN_TOKEN", token)
        .output()
        .expect("telegate admin runs")
}

fn status(vin: &str, seq: u64) -> (String, Vec<u8>) {
    message(
        vin,
        seq,
        now_ms() - 1_000,
        Body::Status(pb::Status {
            odometer_km: Some(42_000.0 + seq as f64),
            fuel_level_pct: Some(55.0),
            ignition: pb::Ignition::On as i32,
            ..Default::default()
        }),
    )
}

/// Every sample on /metrics: name → the label sets it is reported with.
fn samples(text: &str) -> BTreeMap<String, Vec<BTreeMap<String, String>>> {
    let mut out: BTreeMap<String, Vec<BTreeMap<String, String>>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (name, labels) = match line.split_once('{') {
            Some((name, rest)) => (name, rest.split_once('}').map_or("", |(l, _)| l)),
            None => (line.split_whitespace().next().unwrap_or_default(), ""),
        };
        let labels = labels
            .split("\",")
            .filter_map(|kv| kv.split_once("=\""))
            .map(|(k, v)| (k.to_owned(), v.trim_end_matches('"').to_owned()))
            .collect();
        out.entry(name.to_owned()).or_default().push(labels);
    }
    out
}

/// A label matcher in a query: `metric{label="value"}` or `metric{label=~"a|b"}`.
struct Matcher {
    metric: String,
    label: String,
    values: Vec<String>,
}

/// `telegate_*` names and the label matchers written beside them in a query text; quoted
/// strings are not names.
fn queried(text: &str) -> (BTreeSet<String>, Vec<Matcher>) {
    let mut names = BTreeSet::new();
    let mut matchers = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    let mut in_string = false;
    while i < bytes.len() {
        if bytes[i] == b'"' && (i == 0 || bytes[i - 1] != b'\\') {
            in_string = !in_string;
            i += 1;
            continue;
        }
        let boundary = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if !in_string && boundary && text[i..].starts_with("telegate_") {
            let end = text[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(text.len(), |e| i + e);
            let name = text[i..end].to_owned();
            if let Some(selector) = text[end..].strip_prefix('{') {
                let selector = selector.split('}').next().unwrap_or_default();
                for m in selector.split(',') {
                    let m = m.trim();
                    let (label, value, regex) = match (m.split_once("=~"), m.split_once('=')) {
                        (Some((l, v)), _) => (l, v, true),
                        (None, Some((l, v))) => (l, v, false),
                        _ => continue,
                    };
                    let value = value.trim().trim_matches('"');
                    // Grafana's variables select instances, not values the gateway reports.
                    if label.trim() == "instance" || value.contains('$') {
                        continue;
                    }
                    let values = if regex {
                        value.split('|').map(str::to_owned).collect()
                    } else {
                        vec![value.to_owned()]
                    };
                    matchers.push(Matcher {
                        metric: name.clone(),
                        label: label.trim().to_owned(),
                        values,
                    });
                }
            }
            names.insert(name);
            i = end;
            continue;
        }
        i += 1;
    }
    (names, matchers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_the_alerts_query_is_reported() {
    let dir = tempfile::tempdir().expect("tmp");
    let root = dir.path();
    let ns = format!("d{:08x}.", rand::random::<u32>());
    create_tiny_topic(&format!("{ns}telegate.software-update")).await;
    let (serve, a) = start(root, &ns).await;

    // Valid frames, forwarded and dropped records, deliveries, a state record written (and
    // read back: the consent state's newest timestamp); the small queue makes back-pressure.
    let (vin, other) = (unique_vin(), unique_vin());
    let mut frames: Vec<_> = (1..=5).map(|s| status(&vin, s)).collect();
    // Rejected: a frame on another vehicle's topic (vin-mismatch).
    let (_, payload) = status(&vin, 6);
    frames.push((status(&other, 1).0, payload));
    publish_v4(a.plain, frames).await;

    // A Kafka delivery failure: software frames go only to the topic that takes nothing.
    let software = message(
        &other,
        2,
        now_ms() - 1_000,
        Body::Software(pb::SoftwareState {
            head_unit_version: "24.1.0".into(),
            ..Default::default()
        }),
    );
    assert!(
        publish_refused(a.plain, software.0, software.1).await,
        "a frame whose record Kafka refuses gets no PUBACK"
    );

    // An MQTT refusal: no TLS on the TLS listener.
    if let Ok(mut s) = std::net::TcpStream::connect(a.tls) {
        let _ = s.write_all(b"not a TLS client hello\r\n\r\n");
    }

    // The admin API as the Deployment runs it: mutual TLS and a token. A wrong token is
    // counted; a blocked account is erased by the sweeper after block_grace.
    let endpoint = format!("https://{}", a.admin);
    let wrong = tokio::task::block_in_place(|| {
        admin_cli(
            root,
            &endpoint,
            "not-the-token-not-the-token",
            &["state", &vin],
        )
    });
    assert!(!wrong.status.success(), "a wrong token is refused");
    let block = tokio::task::block_in_place(|| admin_cli(root, &endpoint, TOKEN, &["block", &vin]));
    assert!(
        block.status.success(),
        "telegate admin block: {}\n{}",
        String::from_utf8_lossy(&block.stderr),
        serve.log()
    );

    // A consent-state record no key opens.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka())
        .create()
        .expect("producer");
    producer
        .send(
            FutureRecord::to(&format!("{ns}telegate.consent-state"))
                .key("not-a-state-key")
                .payload("not a record"),
            Duration::from_secs(10),
        )
        .await
        .expect("garbage record written");

    // What deploy/ queries.
    let deploy = repo().join("deploy");
    let mut texts = vec![read(&deploy.join("prometheus/alerts.yml"))];
    for f in std::fs::read_dir(deploy.join("grafana/dashboards")).expect("dashboards") {
        let path = f.expect("entry").path();
        let dashboard: serde_json::Value =
            serde_json::from_str(&read(&path)).expect("the dashboard is JSON");
        let mut exprs = Vec::new();
        collect_exprs(&dashboard, &mut exprs);
        assert!(!exprs.is_empty(), "{} has no queries", path.display());
        texts.extend(exprs);
    }
    let (names, matchers) = queried(&texts.join("\n"));
    assert!(names.len() > 20, "too few metric names found: {names:?}");
    eprintln!(
        "deploy/ queries {} metrics with {} label matchers",
        names.len(),
        matchers.len()
    );

    // Series appear as their events are processed; wait for all of them (bounded).
    let deadline = Instant::now() + Duration::from_secs(20);
    let (missing, unmatched) = loop {
        let (code, body) = http_get(a.metrics, "/metrics").expect("/metrics");
        assert_eq!(code, 200);
        let reported = &samples(&body);
        let missing: Vec<_> = names
            .iter()
            .filter(|n| !reported.contains_key(*n))
            .cloned()
            .collect();
        let unmatched: Vec<_> = matchers
            .iter()
            .flat_map(|m| {
                m.values.iter().filter_map(move |v| {
                    let found = reported.get(&m.metric).is_some_and(|sets| {
                        sets.iter().any(|s| s.get(&m.label).is_some_and(|x| x == v))
                    });
                    (!found).then(|| format!("{}{{{}=\"{v}\"}}", m.metric, m.label))
                })
            })
            .collect();
        if (missing.is_empty() && unmatched.is_empty()) || Instant::now() > deadline {
            break (missing, unmatched);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(
        missing.is_empty(),
        "queried by deploy/ but not on /metrics: {missing:?}\n{}",
        serve.log()
    );
    assert!(
        unmatched.is_empty(),
        "label values deploy/ matches on that the gateway does not report: {unmatched:?}"
    );
    drop(serve);
}

/// Every `expr` in a dashboard, and the metric of each `label_values(metric, label)`.
fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr" | "definition", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}
