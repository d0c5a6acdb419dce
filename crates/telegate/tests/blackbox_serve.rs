//! The released binary as an operator runs it: `telegate serve` with flags, frames from
//! `mosquitto_pub` (an independent MQTT client), records read back from Kafka, then SIGTERM.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use telegate_tests::*;

struct Serve {
    child: Child,
    log: std::path::PathBuf,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

fn mosquitto_pub(port: u16, topic: &str, message: &str) {
    let out = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1", "-t", topic, "-m", message])
        .output()
        .unwrap_or_else(|e| panic!("mosquitto_pub is needed (apt-get install mosquitto-clients; scripts/test does it): {e}"));
    assert!(
        out.status.success(),
        "mosquitto_pub failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_takes_mosquitto_pub_json_and_rejects_bad_vins_without_logging_them() {
    let dir = tempfile::tempdir().expect("tmp");
    let (mqtt, mqtt5, metrics) = (free_addr(), free_addr(), free_addr());
    let log = dir.path().join("serve.log");
    let child = Command::new(env!("CARGO_BIN_EXE_telegate"))
        .arg("serve")
        .args(["--mqtt-listen", &mqtt.to_string()])
        .arg("--key-file")
        .arg(key_file(dir.path()))
        .args(["--metrics-listen", &metrics.to_string()])
        .args([
            "--policy",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../../packs/reference.toml"),
        ])
        // Flags and TELEGATE_* variables are interchangeable: these two come from the env.
        .env("TELEGATE_MQTT5_LISTEN", mqtt5.to_string())
        // mosquitto_pub without a certificate: the development setting.
        .env("TELEGATE_MQTT_ALLOW_ANONYMOUS", "true")
        .env("TELEGATE_KAFKA_BOOTSTRAP", kafka())
        .env(
            "TELEGATE_LOG",
            "debug,rumqttd=error,librdkafka=warn,h2=info,hyper=info",
        )
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("telegate binary runs");
    let mut serve = Serve { child, log };

    let deadline = Instant::now() + Duration::from_secs(60);
    while http_get(metrics, "/readyz").map(|(c, _)| c).unwrap_or(0) != 200 {
        assert!(
            Instant::now() < deadline,
            "not ready in time: {}",
            std::fs::read_to_string(&serve.log).unwrap_or_default()
        );
        assert!(
            serve.child.try_wait().expect("status").is_none(),
            "serve exited: {}",
            std::fs::read_to_string(&serve.log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let vin = unique_vin();
    let other = unique_vin();
    let captured = now_ms() - 2_000;
    let status = format!(
        r#"{{"vin":"{vin}","seq":"7","capturedAtMs":"{captured}","status":{{"odometerKm":12345.5,"fuelLevelPct":40,"ignition":"IGNITION_ON"}}}}"#
    );
    let c = consumer(&["telegate.smart-service", "telegate.rejected"]);
    mosquitto_pub(mqtt.port(), &format!("/tenants/{vin}/v1/status"), &status);
    let bad = format!("{}Q", &vin[..16]);
    mosquitto_pub(
        mqtt.port(),
        &format!("/tenants/{bad}/v1/status"),
        &status.replace(&vin, &bad),
    );
    mosquitto_pub(
        mqtt.port(),
        &format!("/tenants/{vin}/v1/status"),
        &status.replace(&vin, &other),
    );

    // This run's rejections are the ones filed under its VINs' keyed hashes.
    let keys = telegate_policy::Keyring::from_toml(
        &std::fs::read_to_string(key_file(dir.path())).expect("key file"),
    )
    .expect("keys");
    let hashes = [keys.subject_hash(&vin), keys.subject_hash(&bad)];
    let got = collect(&c, 3, Duration::from_secs(30), |g| {
        let key = g.key.as_deref().unwrap_or_default();
        key == vin.as_bytes()
            || (g.topic == "telegate.rejected" && hashes.iter().any(|h| h.as_bytes() == key))
    })
    .await;
    let record = got
        .iter()
        .find(|g| g.topic == "telegate.smart-service")
        .expect("status record");
    for h in [
        "telegate-purpose",
        "telegate-legal-basis",
        "telegate-consent",
        "telegate-subject",
        "telegate-policy",
        "telegate-captured-at-ms",
        "telegate-seq",
    ] {
        assert!(
            record.header(h).is_some_and(|v| !v.is_empty()),
            "header {h} missing: {:?}",
            record.headers
        );
    }
    assert_eq!(
        record.header("telegate-captured-at-ms"),
        Some(&*captured.to_string())
    );
    assert_eq!(record.header("telegate-seq"), Some("7"));

    let rejected: Vec<_> = got
        .iter()
        .filter(|g| g.topic == "telegate.rejected")
        .collect();
    let reasons: Vec<_> = rejected
        .iter()
        .filter_map(|g| g.header("telegate-reason"))
        .collect();
    assert!(reasons.contains(&"vin-malformed"), "{reasons:?}");
    assert!(reasons.contains(&"vin-mismatch"), "{reasons:?}");
    for r in &rejected {
        let text = String::from_utf8_lossy(&r.payload);
        for v in [&vin, &bad, &other] {
            assert!(
                !text.contains(v.as_str()) && !r.headers.values().any(|h| h.contains(v.as_str()))
            );
        }
    }

    // A privacy frame right before SIGTERM: the settings change it makes must reach
    // telegate.consent-state before the process exits, or a restart would judge the vehicle's
    // later frames by its old settings.
    let switched_at = now_ms() - 1_000;
    let privacy = format!(
        r#"{{"vin":"{vin}","seq":"8","capturedAtMs":"{switched_at}","privacy":{{"locationServices":false,"nonLocationServices":true}}}}"#
    );
    mosquitto_pub(mqtt.port(), &format!("/tenants/{vin}/v1/privacy"), &privacy);

    // Graceful shutdown: SIGTERM drains, flushes and exits cleanly.
    let pid = serve.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = serve.child.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "serve did not stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "serve exit status {status:?}");
    let log = std::fs::read_to_string(&serve.log).expect("log");
    assert!(
        log.contains("telegate ready") && log.contains("telegate stopped"),
        "{log}"
    );
    for v in [&vin, &bad, &other] {
        assert!(!log.contains(v.as_str()), "a VIN reached the log:\n{log}");
    }
    // Filed under the vehicle's state key, never its VIN.
    let keys = telegate_policy::Keyring::from_toml(
        &std::fs::read_to_string(key_file(dir.path())).expect("key file"),
    )
    .expect("keys");
    let state_key = keys
        .state()
        .key_of(&telegate_frame::Vin::parse(&vin).expect("VIN"))
        .to_hex();
    let state = consumer(&["telegate.consent-state"]);
    let records = collect(&state, usize::MAX, Duration::from_secs(8), |g| {
        g.key.as_deref() == Some(state_key.as_bytes())
    })
    .await;
    let last = records.last().expect("the vehicle's state record");
    let record: serde_json::Value = serde_json::from_slice(&last.payload).expect("state JSON");
    assert_eq!(
        record["settings"][0][0].as_i64(),
        Some(switched_at),
        "the settings change made before SIGTERM is in telegate.consent-state: {record}"
    );
}

#[test]
fn serve_reports_every_configuration_problem_before_it_starts_anything() {
    let dir = tempfile::tempdir().expect("tmp");
    let metrics = free_addr().to_string();
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_telegate"))
        .args(["serve", "--mqtt-listen", &free_addr().to_string()])
        .args(["--mqtt5-listen", &free_addr().to_string()])
        .args(["--metrics-listen", &metrics, "--admin-listen", &metrics])
        .arg("--key-file")
        .arg(dir.path().join("no-such-keys.toml"))
        .args(["--policy", "/no/such/pack.toml"])
        // Nothing listens here: a check made after connecting to Kafka would hang, not fail.
        .args(["--kafka-bootstrap", "127.0.0.1:9"])
        .env_remove("TELEGATE_ADMIN_TOKEN")
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the configuration is checked before Kafka is contacted"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    for path in ["policy:", "key_file:", "admin.token:", "admin.listen:"] {
        assert!(err.contains(path), "{path} missing from:\n{err}");
    }
}

#[test]
fn serve_without_a_policy_says_what_to_do() {
    let out = Command::new(env!("CARGO_BIN_EXE_telegate"))
        .args([
            "serve",
            "--mqtt-listen",
            &free_addr().to_string(),
            "--mqtt5-listen",
            &free_addr().to_string(),
        ])
        .args(["--metrics-listen", &free_addr().to_string()])
        .env_remove("TELEGATE_POLICY")
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--policy"), "{err}");
}

#[test]
fn policy_check_reports_every_error() {
    let dir = tempfile::tempdir().expect("tmp");
    let pack = dir.path().join("bad.toml");
    std::fs::write(
        &pack,
        "id = \"x\"\nversion = \"1\"\n[services.s]\n[purposes.p]\nservice = \"s\"\nlegal_basis = \"maybe\"\nkinds = [\"status\"]\ncategories = [\"identification\", \"status\"]\nidentity = \"vin\"\nretention = \"soon\"\n",
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_telegate"))
        .args(["policy", "check"])
        .arg(&pack)
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("purposes.p.legal_basis") && err.contains("purposes.p.retention"),
        "{err}"
    );
    let ok = Command::new(env!("CARGO_BIN_EXE_telegate"))
        .args([
            "policy",
            "check",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../../packs/reference.toml"),
        ])
        .output()
        .expect("runs");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("telegate.breakdown-call"));
}
