//! The consumers a backend team writes, in Python (consumers/python/telegate_consume.py:
//! confluent-kafka) and Java (consumers/java: kafka-clients), each with classes protoc
//! generates from proto/, read the topics `telegate serve` wrote from a vehicle's MQTT frames
//! on Apache Kafka, and find in each record what the contract says: the purpose, legal basis
//! and subject form in the headers, the VIN as key and in the value where the purpose may see
//! it, a pseudonym and no VIN where it may not.
//!
//! With `encoding = "confluent-protobuf"`, the same topics carry the Confluent wire format and
//! the schema sits in a real Apicurio Registry (scripts/registry): the gateway registers it at
//! start, the Python consumer decodes with confluent-kafka's `ProtobufDeserializer` and the
//! schema the registry serves (no copy of proto/), the Java one unframes the records; a registry
//! that cannot be reached, turns the gateway's credentials away or refuses the schema keeps the
//! gateway from starting, with the registry's message; behind TLS that asks for a client
//! certificate (HAProxy in front of the registry), the gateway registers with its own.
//!
//! Needs consumers/python/requirements.txt in the Python of TELEGATE_TEST_PYTHON, the jar
//! consumers/build makes, Java and Maven for scripts/registry: scripts/test provides them.

mod tls_gateway;

use serde_json::Value;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use telegate_sim::tls::VehicleCertificates;
use telegate_tests::*;
use tls_gateway::Gateway;
use tls_gateway::raw::*;

fn python() -> String {
    std::env::var("TELEGATE_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// The consumer called `name` (`python` or `java`), as a command.
fn consumer(name: &str) -> Command {
    let root = root();
    if name == "python" {
        let mut python = Command::new(python());
        python.arg(root.join("consumers/python/telegate_consume.py"));
        return python;
    }
    let jar = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("consumers/java/telegate-consume.jar");
    assert!(
        jar.exists(),
        "{} is missing: consumers/build makes it (scripts/test runs it)",
        jar.display()
    );
    let mut java = Command::new("java");
    java.arg("-jar").arg(jar);
    java
}

/// What a consumer (`command`, called `name`) printed for `topic`: one JSON object per record.
fn consume_with(mut command: Command, name: &str, topic: &str, records: usize) -> Vec<Value> {
    let out = command
        .args(["--bootstrap", &kafka(), "--topic", topic])
        .args(["--max", &records.to_string(), "--timeout", "60"])
        .output()
        .expect("the consumer runs");
    assert!(
        out.status.success(),
        "the {name} consumer failed on {topic}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_java_consumers_read_what_the_contract_promises() {
    let g = Gateway::start(&[]).await;
    let vin = drive(&g).await;
    for name in ["python", "java"] {
        let records = check(|| consumer(name), name, &g.ns, &vin);
        for r in records {
            assert_eq!(r["encoding"], "protobuf", "{name}: {r}");
            assert_eq!(r["schema_id"], Value::Null, "{name}: {r}");
        }
    }
}

/// A vehicle of the gateway's fleet publishes two status frames and a location; returns its
/// VIN.
async fn drive(g: &Gateway) -> String {
    let certs = VehicleCertificates::open(&g.pki).expect("fleet CA");
    let vin = unique_vin();
    g.issue(&vin);
    let addr = g.tls;
    let v = vin.clone();
    tokio::task::spawn_blocking(move || {
        let mut s = connected(&certs, addr, &v, true);
        let at = now_ms() - 1_000;
        let frames = [
            (
                "status",
                r#""status":{"odometerKm":48211.4,"fuelLevelPct":52.5,"ignition":"IGNITION_ON"}"#,
            ),
            (
                "location",
                r#""location":{"latDeg":48.83412,"lonDeg":9.15277,"accuracyM":4}"#,
            ),
            (
                "status",
                r#""status":{"odometerKm":48215.0,"fuelLevelPct":52.0,"ignition":"IGNITION_ON"}"#,
            ),
        ];
        for (i, (kind, body)) in frames.iter().enumerate() {
            let seq = i as u64 + 1;
            let payload = format!(r#"{{"vin":"{v}","seq":"{seq}","capturedAtMs":"{at}",{body}}}"#);
            let pkid = seq as u16;
            s.write_all(&publish(
                &format!("/tenants/{v}/v1/{kind}"),
                pkid,
                payload.as_bytes(),
            ))
            .expect("publish");
            let mut ack = [0u8; 4];
            s.read_exact(&mut ack).expect("PUBACK");
            assert_eq!(ack, [0x40, 2, 0, seq as u8]);
        }
    })
    .await
    .expect("vehicle");
    vin
}

/// What the consumer called `name` (`command`, to be given the topic) reads of the vehicle's
/// records: checked, and returned.
fn check(command: impl Fn() -> Command, name: &str, ns: &str, vin: &str) -> Vec<Value> {
    // Component status: contract, the VIN as key and in the value; status frames only.
    let smart = consume_with(command(), name, &format!("{ns}telegate.smart-service"), 2);
    assert_eq!(smart.len(), 2, "{smart:?}");
    for r in &smart {
        assert_eq!(r["purpose"], "component-status", "{name}: {r}");
        assert_eq!(r["legal_basis"], "contract", "{name}: {r}");
        assert_eq!(r["subject"], "vin", "{name}: {r}");
        assert_eq!(r["key"], vin, "{name}: {r}");
        assert_eq!(r["vin"], vin, "{name}: {r}");
        assert_eq!(r["kind"], "status", "{name}: {r}");
    }
    // Trip log: a pseudonym as key, no VIN in the value; status and location frames.
    let trips = consume_with(command(), name, &format!("{ns}telegate.trip-log"), 3);
    assert_eq!(trips.len(), 3, "{trips:?}");
    let pseudonym = trips[0]["key"].as_str().expect("a key").to_owned();
    assert_ne!(pseudonym, vin);
    for r in &trips {
        assert_eq!(r["purpose"], "trip-log", "{name}: {r}");
        assert_eq!(r["subject"], "pseudonym", "{name}: {r}");
        assert_eq!(
            r["key"],
            pseudonym.as_str(),
            "one pseudonym per vehicle: {name}: {r}"
        );
        assert_eq!(
            r["vin"], "",
            "no VIN where the purpose may not see it: {name}: {r}"
        );
    }
    let mut kinds: Vec<&str> = trips.iter().filter_map(|r| r["kind"].as_str()).collect();
    kinds.sort_unstable();
    assert_eq!(kinds, ["location", "status", "status"]);
    smart.into_iter().chain(trips).collect()
}

/// A real Apicurio Registry (scripts/registry), stopped when dropped.
struct Registry {
    dir: tempfile::TempDir,
    /// The Confluent-compatible API.
    url: String,
    auth: Option<(String, String)>,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = Command::new(root().join("scripts/registry"))
            .args(["stop", "--dir"])
            .arg(self.dir.path())
            .output();
    }
}

impl Registry {
    /// Starts one, demanding `user:password` when given.
    fn start(basic_auth: Option<&str>) -> Self {
        let dir = tempfile::tempdir().expect("tmp");
        let mut command = Command::new(root().join("scripts/registry"));
        command.args(["start", "--dir"]).arg(dir.path());
        if let Some(auth) = basic_auth {
            command.args(["--basic-auth", auth]);
        }
        let out = command.output().expect("scripts/registry runs");
        assert!(
            out.status.success(),
            "scripts/registry start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let url = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let auth = basic_auth.map(|a| {
            let (u, p) = a.split_once(':').expect("user:password");
            (u.to_owned(), p.to_owned())
        });
        Self { dir, url, auth }
    }

    /// A call to the registry's API as a backend team's tooling makes it.
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = reqwest::Client::new()
            .request(method, format!("{}{path}", self.url))
            .header("Content-Type", "application/vnd.schemaregistry.v1+json");
        if let Some((u, p)) = &self.auth {
            request = request.basic_auth(u, Some(p));
        }
        if let Some(body) = body {
            request = request.body(body.to_string());
        }
        let response = request.send().await.expect("the registry answers");
        let status = response.status().as_u16();
        let text = response.text().await.expect("a body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// The latest version registered under `subject`, which must exist.
    async fn latest(&self, subject: &str) -> Value {
        let path = format!("/subjects/{subject}/versions/latest");
        let (status, latest) = self.call(reqwest::Method::GET, &path, None).await;
        assert_eq!(status, 200, "{subject}: {latest}");
        latest
    }

    /// The settings that point the gateway at this registry.
    fn settings(&self) -> Vec<(&'static str, String)> {
        let mut s = vec![("TELEGATE_SCHEMA_REGISTRY", self.url.clone())];
        if let Some((u, p)) = &self.auth {
            s.push(("TELEGATE__SCHEMA_REGISTRY__USERNAME", u.clone()));
            s.push(("TELEGATE__SCHEMA_REGISTRY__PASSWORD", p.clone()));
        }
        s
    }
}

/// The reference pack with the smart-service and trip-log topics in the Confluent wire format,
/// written into `dir`.
fn framed_pack(dir: &Path) -> String {
    let pack = std::fs::read_to_string(root().join("packs/reference.toml")).expect("pack");
    let mut framed = String::new();
    for line in pack.lines() {
        framed.push_str(line);
        framed.push('\n');
        if line == "[services.smart-service]" || line == "[services.trip-log]" {
            framed.push_str("encoding = \"confluent-protobuf\"\n");
        }
    }
    assert_eq!(
        framed.matches("confluent-protobuf").count(),
        2,
        "the pack changed"
    );
    let path = dir.join("framed.toml");
    std::fs::write(&path, framed).expect("pack written");
    path.to_str().expect("UTF-8").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_decode_the_confluent_wire_format_with_the_schema_from_the_registry() {
    let registry = Registry::start(Some("telegate:registry-secret"));
    let dir = tempfile::tempdir().expect("tmp");
    let pack = framed_pack(dir.path());
    let mut settings = registry.settings();
    settings.push(("TELEGATE_POLICY", pack));
    let settings: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let g = Gateway::start(&settings).await;

    // The gateway registered the schema under each topic's subject.
    let mut ids = Vec::new();
    for topic in ["telegate.smart-service", "telegate.trip-log"] {
        let latest = registry.latest(&format!("{}{topic}-value", g.ns)).await;
        assert_eq!(latest["version"], 1, "{latest}");
        ids.push(latest["id"].as_u64().expect("an id"));
    }

    let vin = drive(&g).await;
    let auth = "telegate:registry-secret";
    let with_registry = || {
        let mut c = consumer("python");
        c.args(["--registry", &registry.url, "--registry-auth", auth]);
        c
    };
    for (name, command) in [
        (
            "python with the registry",
            &with_registry as &dyn Fn() -> Command,
        ),
        ("python", &|| consumer("python")),
        ("java", &|| consumer("java")),
    ] {
        for r in check(command, name, &g.ns, &vin) {
            assert_eq!(r["encoding"], "confluent-protobuf", "{name}: {r}");
            let id = r["schema_id"].as_u64().expect("a schema id");
            let topic = r["topic"].as_str().expect("a topic");
            let expected = if topic.ends_with("smart-service") {
                ids[0]
            } else {
                ids[1]
            };
            assert_eq!(id, expected, "{name}: the id registered for {topic}: {r}");
        }
    }
}

/// `telegate serve` with the framed pack and `settings`, expected to stop before it is ready:
/// what it wrote to stderr.
fn serve_refused(settings: &[(&str, String)]) -> String {
    let dir = tempfile::tempdir().expect("tmp");
    let pack = framed_pack(dir.path());
    let mut child = Command::new(env!("CARGO_BIN_EXE_telegate"))
        .arg("serve")
        .args(["--policy", &pack])
        .args(["--mqtt-listen", &free_addr().to_string()])
        .args(["--mqtt5-listen", &free_addr().to_string()])
        .args(["--metrics-listen", &free_addr().to_string()])
        .env("TELEGATE_MQTT_ALLOW_ANONYMOUS", "true")
        .env("TELEGATE_KAFKA_BOOTSTRAP", kafka())
        .env("TELEGATE__KAFKA__TOPIC_NAMESPACE", "refused.")
        .env("RUST_BACKTRACE", "0")
        .envs(settings.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("telegate serve runs");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("status") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve started although the registry refused");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("stderr read");
    assert!(!status.success(), "serve exited 0: {stderr}");
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_that_is_away_or_says_no_keeps_the_gateway_from_starting() {
    // No registry named at all: a configuration error.
    let stderr = serve_refused(&[]);
    assert!(
        stderr.contains("schema_registry.url")
            && stderr.contains("smart-service, trip-log write the Confluent wire format"),
        "{stderr}"
    );

    // Nothing listens there.
    let away = format!("http://{}/apis/ccompat/v7", free_addr());
    let stderr = serve_refused(&[("TELEGATE_SCHEMA_REGISTRY", away)]);
    assert!(stderr.contains("cannot be reached"), "{stderr}");

    let registry = Registry::start(Some("telegate:registry-secret"));
    // The registry turns a wrong password away.
    let mut wrong = registry.settings();
    wrong[2].1 = "not-the-password".to_owned();
    let stderr = serve_refused(&wrong);
    assert!(stderr.contains("HTTP 401"), "{stderr}");
    assert!(
        !stderr.contains("not-the-password"),
        "no secret in an error: {stderr}"
    );

    // The subject already holds a schema the gateway's is not backward compatible with
    // (`vin` as a number), under the registry's BACKWARD rule: the registry's own message.
    let subject = "refused.telegate.smart-service-value";
    let incompatible =
        telegate_frame::schema::FRAME_PROTO.replace("string vin = 1;", "int64 vin = 1;");
    assert_ne!(incompatible, telegate_frame::schema::FRAME_PROTO);
    let (status, body) = registry
        .call(
            reqwest::Method::POST,
            &format!("/subjects/{subject}/versions"),
            Some(serde_json::json!({ "schemaType": "PROTOBUF", "schema": incompatible })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = registry
        .call(
            reqwest::Method::PUT,
            &format!("/config/{subject}"),
            Some(serde_json::json!({ "compatibility": "BACKWARD" })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let mut text = registry.settings();
    text.push(("TELEGATE__SCHEMA_REGISTRY__SCHEMA_FORM", "text".to_owned()));
    let stderr = serve_refused(&text);
    assert!(
        stderr.contains(&format!(
            "refused the record schema for subject {subject} (HTTP 409"
        )) && stderr.contains("Incompatible"),
        "{stderr}"
    );
    // In the descriptor form the same: 3.0.9 compares it with the text already there.
    let stderr = serve_refused(&registry.settings());
    assert!(
        stderr.contains(&format!(
            "refused the record schema for subject {subject} (HTTP 409"
        )) && stderr.contains("Incompatible"),
        "{stderr}"
    );
}

/// HAProxy terminating TLS in front of the registry and asking every client for a certificate
/// of `pki`'s CA (Apicurio 3.0.9's Quarkus fixes client-auth off at build time), stopped when
/// dropped.
struct MutualTls {
    child: std::process::Child,
    /// The registry's API through it.
    url: String,
}

impl Drop for MutualTls {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl MutualTls {
    fn start(dir: &Path, pki: &Path, registry: &Registry) -> Self {
        let (host, path) = registry
            .url
            .strip_prefix("http://")
            .and_then(|r| r.split_once('/'))
            .expect("http://HOST:PORT/PATH");
        // HAProxy takes the certificate and its key in one file.
        let mut pem = std::fs::read(pki.join("server.crt")).expect("server.crt");
        pem.extend(std::fs::read(pki.join("server.key")).expect("server.key"));
        let server_pem = dir.join("server.pem");
        std::fs::write(&server_pem, pem).expect("server.pem");
        let listen = free_addr();
        let config = format!(
            "global\n    maxconn 100\n\n\
             defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 30s\n    \
             timeout server 30s\n\n\
             frontend registry-tls\n    bind {listen} ssl crt {} ca-file {} verify required\n    \
             default_backend registry\n\n\
             backend registry\n    server apicurio {host}\n",
            server_pem.display(),
            pki.join("ca.crt").display(),
        );
        let cfg = dir.join("haproxy.cfg");
        std::fs::write(&cfg, config).expect("haproxy.cfg");
        let mut child = Command::new(haproxy_binary())
            .args(["-db", "-f"])
            .arg(&cfg)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("haproxy.log")).expect("log"))
            .spawn()
            .expect("haproxy starts (scripts/test installs it)");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while std::net::TcpStream::connect(listen).is_err() {
            assert!(
                std::time::Instant::now() < deadline && child.try_wait().ok().flatten().is_none(),
                "haproxy did not listen: {}",
                std::fs::read_to_string(dir.join("haproxy.log")).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Self {
            child,
            url: format!("https://{listen}/{path}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_registers_through_mutual_tls_and_is_refused_without_its_certificate() {
    let dir = tempfile::tempdir().expect("tmp");
    let pki = dir.path().join("registry-pki");
    tls_gateway::telegate_pki(&["init", pki.to_str().expect("UTF-8")]);
    // A client certificate of the registry's CA for telegate (the pki's vehicle certificate
    // does: what matters is the chain).
    let client = "WVWZZZ1JZXW000001";
    tls_gateway::telegate_pki(&["issue", pki.to_str().expect("UTF-8"), client]);
    let registry = Registry::start(None);
    let tls = MutualTls::start(dir.path(), &pki, &registry);
    let file = |p: &str| pki.join(p).to_str().expect("UTF-8").to_owned();
    let trusted = [
        ("TELEGATE_SCHEMA_REGISTRY", tls.url.clone()),
        ("TELEGATE__SCHEMA_REGISTRY__CA", file("ca.crt")),
    ];

    // The registry's certificate checked, but no client certificate: HAProxy refuses the
    // connection. Under TLS 1.3 the client may send its request before the server's alert
    // arrives, so the error names the alert (CertificateRequired) or the closed connection;
    // either way nothing reached the registry.
    let stderr = serve_refused(&trusted);
    assert!(stderr.contains("cannot be reached"), "{stderr}");
    let (status, body) = registry
        .call(
            reqwest::Method::GET,
            "/subjects/refused.telegate.smart-service-value/versions/latest",
            None,
        )
        .await;
    assert_eq!(
        status, 404,
        "registered without a client certificate: {body}"
    );

    // With its client certificate the gateway registers its schema and starts.
    let pack = framed_pack(dir.path());
    let settings = [
        ("TELEGATE_POLICY", pack.as_str()),
        (trusted[0].0, trusted[0].1.as_str()),
        (trusted[1].0, trusted[1].1.as_str()),
        (
            "TELEGATE__SCHEMA_REGISTRY__CLIENT_CERT",
            &file(&format!("vehicles/{client}.crt")),
        ),
        (
            "TELEGATE__SCHEMA_REGISTRY__CLIENT_KEY",
            &file(&format!("vehicles/{client}.key")),
        ),
    ];
    let g = Gateway::start(&settings).await;
    let latest = registry
        .latest(&format!("{}telegate.trip-log-value", g.ns))
        .await;
    assert_eq!(latest["version"], 1, "{latest}");
}
