//! The closed edge as an operator and a fleet meet it: certificates from `telegate pki`,
//! `telegate serve` with only its TLS listener, and independent MQTT clients as vehicles:
//! mosquitto_pub/mosquitto_sub (libmosquitto) and paho (Python).

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use telegate_tests::*;

struct Serve {
    child: Child,
    log: PathBuf,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

/// A gateway whose only MQTT listener is TLS with client certificates, and two vehicles.
struct Fleet {
    _dir: tempfile::TempDir,
    pki: PathBuf,
    tls: SocketAddr,
    metrics: SocketAddr,
    ns: String,
    a: String,
    b: String,
    _serve: Serve,
}

fn telegate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_telegate"))
        .args(args)
        .output()
        .expect("the telegate binary runs")
}

fn pki(args: &[&str]) {
    let out = telegate(&[&["pki"], args].concat());
    assert!(
        out.status.success(),
        "telegate pki {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn start() -> Fleet {
    let dir = tempfile::tempdir().expect("tmp");
    let pki_dir = dir.path().join("fleet");
    let p = pki_dir.to_str().expect("UTF-8 path");
    pki(&["init", p]);
    let (a, b) = (unique_vin(), unique_vin());
    pki(&["issue", p, &a]);
    pki(&["issue", p, &b]);
    let (tls, plain, metrics) = (free_addr(), free_addr(), free_addr());
    let ns = format!("e{:08x}.", rand::random::<u32>());
    let log = dir.path().join("serve.log");
    let file = |name: &str| pki_dir.join(name).to_str().expect("UTF-8").to_owned();
    let child = Command::new(env!("CARGO_BIN_EXE_telegate"))
        .arg("serve")
        .args(["--mqtt-tls-listen", &tls.to_string()])
        .args(["--mqtt-tls-cert", &file("server.crt")])
        .args(["--mqtt-tls-key", &file("server.key")])
        .args(["--mqtt-client-ca", &file("ca.crt")])
        .args(["--mqtt-client-crl", &file("crl.pem")])
        // Asked for, but a plain listener takes only anonymous clients: it must not run.
        .args(["--mqtt-listen", &plain.to_string()])
        .args(["--metrics-listen", &metrics.to_string()])
        .arg("--key-file")
        .arg(key_file(dir.path()))
        .args([
            "--policy",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../../packs/reference.toml"),
        ])
        .env("TELEGATE_KAFKA_BOOTSTRAP", kafka())
        .env("TELEGATE__KAFKA__TOPIC_NAMESPACE", &ns)
        .env("TELEGATE__MQTT__CRL_CHECK_INTERVAL", "200ms")
        .env("TELEGATE_LOG", "info,librdkafka=warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("telegate serve runs");
    let mut serve = Serve { child, log };
    let deadline = Instant::now() + Duration::from_secs(60);
    while http_get(metrics, "/readyz").map(|(c, _)| c).unwrap_or(0) != 200 {
        assert!(
            Instant::now() < deadline && serve.child.try_wait().expect("status").is_none(),
            "serve did not become ready: {}",
            std::fs::read_to_string(&serve.log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        TcpStream::connect(plain).is_err(),
        "no plain listener without the development setting"
    );
    Fleet {
        _dir: dir,
        pki: pki_dir,
        tls,
        metrics,
        ns,
        a,
        b,
        _serve: serve,
    }
}

impl Fleet {
    /// mosquitto_pub/mosquitto_sub arguments for a vehicle's certificate (or none).
    fn tls_args(&self, vehicle: Option<&str>) -> Vec<String> {
        let path = |p: PathBuf| p.to_str().expect("UTF-8").to_owned();
        let mut args = vec![
            "-h".into(),
            "127.0.0.1".into(),
            "-p".into(),
            self.tls.port().to_string(),
            "--cafile".into(),
            path(self.pki.join("ca.crt")),
        ];
        if let Some(v) = vehicle {
            let base = self.pki.join("vehicles").join(v);
            args.extend([
                "--cert".into(),
                path(base.with_extension("crt")),
                "--key".into(),
                path(base.with_extension("key")),
            ]);
        }
        args
    }

    fn mosquitto_pub(
        &self,
        vehicle: Option<&str>,
        version: &str,
        topic: &str,
        msg: &str,
    ) -> Output {
        Command::new("mosquitto_pub")
            .args(self.tls_args(vehicle))
            .args(["-V", version, "-q", "1", "-t", topic, "-m", msg])
            .output()
            .unwrap_or_else(|e| panic!("mosquitto_pub is needed (scripts/test installs it): {e}"))
    }

    /// A mosquitto_sub that listens for `secs`, in the background.
    fn mosquitto_sub(&self, vehicle: &str, version: &str, filter: &str, secs: u64) -> Listener {
        let mut child = Command::new("mosquitto_sub")
            .args(self.tls_args(Some(vehicle)))
            .args([
                "-V",
                version,
                "-q",
                "1",
                "-t",
                filter,
                "-W",
                &secs.to_string(),
                "-v",
                "-d",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("mosquitto_sub is needed (scripts/test installs it): {e}"));
        let stdout = child.stdout.take().expect("piped");
        let (answered, on_answer) = std::sync::mpsc::channel();
        let lines = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("Subscribed (") {
                    let _ = answered.send(());
                }
                lines.push(line);
            }
            lines
        });
        Listener {
            child,
            lines,
            on_answer,
        }
    }

    /// The sum of a metric's series whose labels contain `labels`.
    fn metric(&self, name: &str, labels: &str) -> f64 {
        let (_, body) = http_get(self.metrics, "/metrics").expect("/metrics");
        telegate_gateway::http::samples(&body, name)
            .into_iter()
            .filter(|(l, _)| l.contains(labels))
            .map(|(_, v)| v)
            .sum()
    }
}

/// A mosquitto_sub in the background (`-d`): its lines, gathered by a thread until it ends.
struct Listener {
    child: Child,
    lines: std::thread::JoinHandle<Vec<String>>,
    /// Hears once the gateway answered the SUBSCRIBE, granted or refused.
    on_answer: std::sync::mpsc::Receiver<()>,
}

impl Listener {
    /// Waits for the gateway's SUBACK.
    fn answered(&self) {
        self.on_answer
            .recv_timeout(Duration::from_secs(20))
            .expect("mosquitto_sub got a SUBACK");
    }

    /// Waits for its end; the messages it received, `topic payload` a line (debug lines left
    /// out).
    fn received(mut self) -> String {
        let _ = self.child.wait();
        let lines = self.lines.join().expect("mosquitto_sub's reader");
        lines
            .into_iter()
            .filter(|l| !l.starts_with("Client ") && !l.starts_with("Subscribed ("))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn status(vin: &str, seq: u64, odometer: f64) -> String {
    format!(
        r#"{{"vin":"{vin}","seq":"{seq}","capturedAtMs":"{}","status":{{"odometerKm":{odometer},"fuelLevelPct":40,"ignition":"IGNITION_ON"}}}}"#,
        now_ms() - 1_000
    )
}

fn topic(vin: &str) -> String {
    format!("/tenants/{vin}/v1/status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vehicle_certificate_opens_only_that_vehicles_topics() {
    let f = start().await;
    let (a, b) = (f.a.clone(), f.b.clone());

    // No certificate, no connection.
    let out = f.mosquitto_pub(None, "mqttv311", &topic(&a), &status(&a, 1, 1.0));
    assert!(!out.status.success(), "connected without a certificate");
    assert!(f.metric("telegate_mqtt_refused_total", "reason=\"handshake-failed\"") >= 1.0);

    // Other vehicles listen wherever they may, in both versions (one vehicle each: a second
    // connection of the same vehicle would take over the first). Wildcards are granted but
    // match only the listener's own request topic; A's topics are refused.
    let listeners: Vec<Listener> = [
        ("mqttv311", "#"),
        ("mqttv5", "#"),
        ("mqttv311", "/tenants/+/v1/+"),
        ("mqttv311", &format!("/tenants/{a}/v1/request")),
        ("mqttv5", &format!("/tenants/{a}/#")),
    ]
    .iter()
    .map(|(version, filter)| {
        let listener = unique_vin();
        pki(&["issue", f.pki.to_str().expect("UTF-8"), &listener]);
        f.mosquitto_sub(&listener, version, filter, 8)
    })
    .collect();
    for l in &listeners {
        l.answered();
    }

    // B cannot publish as A, in either version.
    for version in ["mqttv311", "mqttv5"] {
        f.mosquitto_pub(Some(&b), version, &topic(&a), &status(&a, 1, 666.0));
    }
    // A's own frames flow end to end.
    let c = consumer(&[&format!("{}telegate.smart-service", f.ns)]);
    let out = f.mosquitto_pub(Some(&a), "mqttv5", &topic(&a), &status(&a, 2, 12.5));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = collect(&c, 1, Duration::from_secs(30), |g| {
        g.key.as_deref() == Some(a.as_bytes())
    })
    .await;
    assert_eq!(got[0].header("telegate-seq"), Some("2"));
    // Nothing else of A's arrives: the forged frames (seq 1) never reached the pipeline.
    let more = collect_expecting(&c, 1, Duration::from_secs(3), |g| {
        g.key.as_deref() == Some(a.as_bytes())
    })
    .await;
    assert!(more.is_empty(), "a forged frame reached Kafka");
    assert!(
        f.metric(
            "telegate_mqtt_refused_total",
            "reason=\"publish-not-permitted\""
        ) >= 2.0
    );

    for l in listeners {
        let received = l.received();
        assert!(
            !received.contains(&a) && !received.contains("12.5"),
            "another vehicle received A's data: {received}"
        );
    }
    assert!(
        f.metric(
            "telegate_mqtt_refused_total",
            "reason=\"subscribe-not-permitted\""
        ) >= 2.0
    );

    // A stalled handshake does not keep another vehicle out.
    let stalled: Vec<TcpStream> = (0..5)
        .map(|_| TcpStream::connect(f.tls).expect("tcp"))
        .collect();
    let started = Instant::now();
    let out = f.mosquitto_pub(Some(&b), "mqttv311", &topic(&b), &status(&b, 1, 3.0));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "B waited for the stalled handshakes (connect timeout 10 s)"
    );
    drop(stalled);

    // A revoked certificate is refused, without a restart; B is not affected.
    let loaded = || f.metric("telegate_mqtt_crl_reloads_total", "result=\"loaded\"");
    let before = loaded();
    pki(&["revoke", f.pki.to_str().expect("UTF-8"), &a]);
    wait_until(
        "the edge reads the changed CRL",
        Duration::from_secs(20),
        || loaded() > before,
    )
    .await;
    let out = f.mosquitto_pub(Some(&a), "mqttv311", &topic(&a), &status(&a, 3, 13.0));
    assert!(!out.status.success(), "a revoked certificate connected");
    assert!(
        f.metric(
            "telegate_mqtt_refused_total",
            "reason=\"certificate-revoked\""
        ) >= 1.0
    );
    let out = f.mosquitto_pub(Some(&b), "mqttv5", &topic(&b), &status(&b, 2, 4.0));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A paho (Python) vehicle: MQTT 5 reason codes for what it may not do, success for what it
/// may. Prints one JSON object.
const PAHO: &str = r#"
import json, sys, threading
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
host, port, ca, cert, key, own, other = sys.argv[1:8]
result = {}
done = threading.Event()
acks = {}
def on_connect(c, u, flags, reason, props):
    result["connect"] = str(reason)
    done.set()
def on_publish(c, u, mid, reason, props):
    acks[mid] = str(reason)
def on_subscribe(c, u, mid, reasons, props):
    result["subscribe"] = [str(r) for r in reasons]
c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="paho-vehicle", protocol=mqtt.MQTTv5)
c.tls_set(ca_certs=ca, certfile=cert, keyfile=key)
c.on_connect, c.on_publish, c.on_subscribe = on_connect, on_publish, on_subscribe
c.connect(host, int(port))
c.loop_start()
done.wait(10)
sub = c.subscribe("/tenants/%s/v1/request" % other, qos=1)
own_info = c.publish("/tenants/%s/v1/status" % own, b'{"vin":"x"}', qos=1)
own_info.wait_for_publish(10)
other_info = c.publish("/tenants/%s/v1/status" % other, b'{"vin":"x"}', qos=1)
other_info.wait_for_publish(10)
c.loop_stop()
result["own"] = acks.get(own_info.mid)
result["other"] = acks.get(other_info.mid)
print(json.dumps(result))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_gets_mqtt5_reason_codes_for_what_a_vehicle_may_not_do() {
    let f = start().await;
    let python = std::env::var("TELEGATE_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let path = |p: &Path| p.to_str().expect("UTF-8").to_owned();
    let base = f.pki.join("vehicles").join(&f.a);
    let out = Command::new(&python)
        .args(["-c", PAHO, "127.0.0.1", &f.tls.port().to_string()])
        .args([
            path(&f.pki.join("ca.crt")),
            path(&base.with_extension("crt")),
            path(&base.with_extension("key")),
        ])
        .args([&f.a, &f.b])
        .output()
        .expect("python runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "paho-mqtt is needed (scripts/test installs it and sets TELEGATE_TEST_PYTHON): {stderr}"
    );
    let result: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("the script prints JSON");
    assert_eq!(result["connect"], "Success", "{result}");
    assert_eq!(result["own"], "Success", "{result}");
    assert_eq!(result["other"], "Not authorized", "{result}");
    assert_eq!(
        result["subscribe"],
        serde_json::json!(["Not authorized"]),
        "{result}"
    );
}
