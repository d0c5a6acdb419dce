//! The privacy office's console in a real browser: `telegate serve --console-listen` over TLS
//! on Apache Kafka, with the Kia Connect pack (standing consent, legitimate interest) and a
//! vehicle publishing over MQTT with its own certificate; Debian's Chromium, driven by
//! console/e2e/console.mjs (playwright-core, axe-core), signs in, reads and changes. Each
//! browser phase writes what the page showed; this test checks it against what it published
//! and what Kafka holds, and checks each change on the vehicle's next frame.
//!
//! Needs Chromium (/usr/bin/chromium, or CHROMIUM) and `npm ci` in console/e2e: `scripts/test`
//! installs both.

mod tls_gateway;

use serde_json::Value;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use telegate_sim::tls::VehicleCertificates;
use telegate_tests::*;
use tls_gateway::Gateway;
use tls_gateway::raw::*;

const OFFICER: &str = "officer-token-for-the-console-test";
const VIEWER: &str = "viewer-token-for-the-console-test";
/// Markup and script in a reason: the page must show it as text.
const HOSTILE: &str =
    "CASE-7 <img src=x onerror=alert(1) id=injected><script>alert(2)</script>\"'&";

fn e2e_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../console/e2e")
}

fn sha(token: &str) -> String {
    hex::encode(telegate_gateway::config::token_hash(token))
}

/// A vehicle's frame of `kind` captured now, as proto3-JSON.
fn frame(vin: &str, seq: u64, body: &str) -> Vec<u8> {
    format!(
        r#"{{"vin":"{vin}","seq":"{seq}","capturedAtMs":"{}",{body}}}"#,
        now_ms()
    )
    .into_bytes()
}

const PRIVACY: (&str, &str) = (
    "privacy",
    r#""privacy":{"locationServices":true,"nonLocationServices":true,"services":{"gis":true}}"#,
);
const LOCATION: (&str, &str) = (
    "location",
    r#""location":{"latDeg":48.83412,"lonDeg":9.15277,"accuracyM":4}"#,
);
const STATUS: (&str, &str) = (
    "status",
    r#""status":{"odometerKm":48211.4,"fuelLevelPct":52.5,"ignition":"IGNITION_ON","hvBattery":{"socPct":71}}"#,
);

const DIAGNOSTICS: (&str, &str) = (
    "diagnostics",
    r#""diagnostics":{"dtcs":[{"code":"P0301","ecu":"engine","status":"DTC_STATUS_ACTIVE"}],"trigger":"DIAGNOSTICS_TRIGGER_EVENT"}"#,
);

/// Another vehicle sending a diagnostics frame every 100 ms until `stop`, so that the flows
/// move (diagnostics reach no purpose the test counts).
fn traffic(
    certs: &Arc<VehicleCertificates>,
    addr: std::net::SocketAddr,
    vin: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    let certs = certs.clone();
    tokio::task::spawn_blocking(move || {
        let mut s = connected(&certs, addr, &vin, true);
        let mut seq = 1u64;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let pkid = (seq % 60_000 + 1) as u16;
            let topic = format!("/tenants/{vin}/v1/diagnostics");
            s.write_all(&tls_gateway::raw::publish(
                &topic,
                pkid,
                &frame(&vin, seq, DIAGNOSTICS.1),
            ))
            .expect("publish");
            let mut ack = [0u8; 4];
            s.read_exact(&mut ack).expect("PUBACK");
            seq += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = s.write_all(&[0xE0, 0]);
    })
}

/// Connects as `vin`, publishes `frames` (QoS 1) and waits for each PUBACK.
async fn publish(
    certs: &Arc<VehicleCertificates>,
    addr: std::net::SocketAddr,
    vin: &str,
    seq: u64,
    frames: &[(&str, &str)],
) {
    let (certs, vin) = (certs.clone(), vin.to_owned());
    let frames: Vec<(String, String)> = frames
        .iter()
        .map(|(k, b)| ((*k).to_owned(), (*b).to_owned()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let mut s = connected(&certs, addr, &vin, true);
        for (i, (kind, body)) in frames.iter().enumerate() {
            let pkid = u16::try_from(i + 1).expect("few frames");
            let topic = format!("/tenants/{vin}/v1/{kind}");
            s.write_all(&tls_gateway::raw::publish(
                &topic,
                pkid,
                &frame(&vin, seq + i as u64, body),
            ))
            .expect("publish");
            let mut ack = [0u8; 4];
            s.read_exact(&mut ack).expect("PUBACK");
            assert_eq!(ack, [0x40, 2, 0, pkid as u8], "PUBACK for {kind}");
        }
        let _ = s.write_all(&[0xE0, 0]);
    })
    .await
    .expect("vehicle");
}

/// Runs one browser phase; returns what it wrote.
fn phase(console: &str, vin: &str, out: &Path, name: &str, extra: &[(&str, &str)]) -> Value {
    let node = Command::new("node")
        .current_dir(e2e_dir())
        .arg("console.mjs")
        .arg(name)
        .env("CONSOLE_URL", console)
        .env("OFFICER_TOKEN", OFFICER)
        .env("VIEWER_TOKEN", VIEWER)
        .env("VIN", vin)
        .env("OUT_DIR", out)
        .envs(extra.iter().copied())
        .output()
        .expect("node runs");
    let written = std::fs::read_to_string(out.join(format!("{name}.json"))).unwrap_or_default();
    assert!(
        node.status.success(),
        "browser phase {name} failed:\n{}\n{}\n{written}",
        String::from_utf8_lossy(&node.stdout),
        String::from_utf8_lossy(&node.stderr)
    );
    serde_json::from_str(&written).unwrap_or(Value::Null)
}

/// The keys of the records on `topic`.
async fn keys(topic: &str, expected: usize) -> Vec<Vec<u8>> {
    let c = consumer(&[topic]);
    collect_expecting(&c, expected, Duration::from_secs(3), |_| true)
        .await
        .into_iter()
        .filter_map(|g| g.key)
        .collect()
}

/// Records on `topic` within a few seconds whose key is `key` (or any, for `None`).
async fn records(topic: &str, key: Option<&str>, expected: usize) -> usize {
    let c = consumer(&[topic]);
    collect_expecting(&c, expected, Duration::from_secs(3), |g| {
        key.is_none_or(|k| g.key.as_deref() == Some(k.as_bytes()))
    })
    .await
    .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_privacy_officer_answers_access_objection_consent_activation_and_erasure_in_a_browser() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists() && e2e_dir().join("node_modules/playwright-core").exists(),
        "the browser test needs Chromium ({chromium}) and `npm ci` in console/e2e: scripts/test installs both"
    );
    let dir = tempfile::tempdir().expect("tmp");
    let config = dir.path().join("telegate.toml");
    std::fs::write(
        &config,
        format!(
            "[[console.operators]]\nname = \"dpo-anna\"\nrole = \"officer\"\ntoken_sha256 = \"{}\"\n\n\
             [[console.operators]]\nname = \"care-ben\"\nrole = \"viewer\"\ntoken_sha256 = \"{}\"\n",
            sha(OFFICER),
            sha(VIEWER)
        ),
    )
    .expect("config");
    let console_addr = free_addr();
    let g = Gateway::start(&[
        ("TELEGATE_CONFIG", config.to_str().expect("UTF-8")),
        (
            "TELEGATE_POLICY",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../../packs/kia-connect.toml"),
        ),
        ("TELEGATE_CONSOLE_LISTEN", &console_addr.to_string()),
        ("TELEGATE_ADMIN_TLS_CERT", "{pki}/server.crt"),
        ("TELEGATE_ADMIN_TLS_KEY", "{pki}/server.key"),
    ])
    .await;
    let url = format!("https://{console_addr}");
    let out = dir.path().join("browser");
    std::fs::create_dir_all(&out).expect("out dir");
    let certs = Arc::new(VehicleCertificates::open(&g.pki).expect("fleet CA"));
    let vin = unique_vin();
    g.issue(&vin);
    let topic = |service: &str| format!("{}telegate.{service}", g.ns);

    // The vehicle reports its settings (GIS on) and a status frame.
    publish(&certs, g.tls, &vin, 1, &[PRIVACY, STATUS, LOCATION]).await;
    assert_eq!(records(&topic("vehicle-status"), Some(&vin), 1).await, 1);
    // No standing consent yet: product improvement receives nothing; the battery alert does.
    assert_eq!(records(&topic("product-insights"), None, 0).await, 0);
    assert_eq!(records(&topic("hv-battery-alert"), Some(&vin), 1).await, 1);

    // Without a session or with a wrong token: the sign-in page, refused.
    phase(&url, &vin, &out, "refused", &[]);

    // The page says what the vehicle set and what each purpose may receive now.
    let view = phase(&url, &vin, &out, "view", &[]);
    let settings = &view["settings"];
    assert_eq!(settings["location_services"], "on", "{view}");
    assert_eq!(settings["private_mode"], "off", "{view}");
    assert_eq!(settings["service:gis"], "on", "{view}");
    let purposes = &view["purposes"];
    assert_eq!(
        purposes["product-improvement"]["basis"], "consent",
        "{view}"
    );
    assert!(
        purposes["product-improvement"]["active"]
            .as_str()
            .is_some_and(|a| a.starts_with("no") && a.contains("consent-missing")),
        "{view}"
    );
    assert!(
        purposes["hv-battery-alert"]["active"]
            .as_str()
            .is_some_and(|a| a.starts_with("yes")),
        "{view}"
    );
    assert_eq!(
        purposes["hv-battery-alert"]["topic"],
        topic("hv-battery-alert"),
        "{view}"
    );
    assert_eq!(purposes["trip-log"]["form"], "pseudonym", "{view}");
    let ledger = view["ledger"].as_array().cloned().unwrap_or_default();
    assert!(
        ledger
            .iter()
            .any(|r| r["action"] == "settings" && r["channel"] == "vehicle"),
        "the vehicle's settings change is in the timeline: {view}"
    );

    // An officer records consent to product improvement, with markup in the reason: the
    // timeline shows it as text, and the next frame reaches the purpose.
    let row = phase(
        &url,
        &vin,
        &out,
        "consent",
        &[
            ("PURPOSE", "product-improvement"),
            ("GRANTED", "true"),
            ("REASON", HOSTILE),
        ],
    );
    assert_eq!(row["row"]["actor"], "dpo-anna", "{row}");
    publish(&certs, g.tls, &vin, 10, &[STATUS]).await;
    assert_eq!(
        records(&topic("product-insights"), None, 1).await,
        1,
        "consent is enforced on the next frame"
    );

    // An objection to the battery alert (legitimate interest) stops it on the next frame.
    phase(
        &url,
        &vin,
        &out,
        "objection",
        &[
            ("PURPOSE", "hv-battery-alert"),
            ("ON", "true"),
            ("REASON", "CASE-8"),
        ],
    );
    publish(&certs, g.tls, &vin, 20, &[STATUS]).await;
    assert_eq!(
        records(&topic("hv-battery-alert"), Some(&vin), 2).await,
        2,
        "only the two frames from before the objection"
    );
    assert_eq!(records(&topic("vehicle-status"), Some(&vin), 3).await, 3);

    // A geofence alert booked for the vehicle: its next location frame reaches the service.
    assert_eq!(records(&topic("geofence-alert"), Some(&vin), 0).await, 0);
    phase(
        &url,
        &vin,
        &out,
        "activation",
        &[
            ("FEATURE", "geofence-alert"),
            ("ACTIVE", "true"),
            ("REASON", "CASE-11"),
        ],
    );
    publish(&certs, g.tls, &vin, 25, &[LOCATION]).await;
    assert_eq!(records(&topic("geofence-alert"), Some(&vin), 1).await, 1);

    // Access: both files; the machine-readable one is the admin API's export, from Kafka.
    phase(&url, &vin, &out, "export", &[("REASON", "CASE-9")]);
    let export: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("telegate-export.json")).expect("export downloaded"),
    )
    .expect("export is JSON");
    assert_eq!(export["vin"], vin.as_str());
    let delivered = |purpose: &str| {
        export["deliveries"]
            .as_array()
            .and_then(|d| d.iter().find(|r| r["purpose"] == purpose))
            .map(|r| r["records"].clone())
            .unwrap_or(Value::Null)
    };
    assert_eq!(delivered("vehicle-status"), 3, "{export}");
    assert_eq!(delivered("hv-battery-alert"), 2, "{export}");
    let entries = export["ledger"].as_array().cloned().unwrap_or_default();
    assert!(
        entries.iter().any(|e| e["action"] == "consent"
            && e["channel"] == "console"
            && e["actor"] == "dpo-anna"
            && e["reason"] == HOSTILE),
        "the consent change is in the ledger with who and why: {export}"
    );
    assert!(
        entries
            .iter()
            .any(|e| e["action"] == "objection" && e["reason"] == "CASE-8")
    );
    let readable = std::fs::read_to_string(out.join("telegate-export.html")).expect("readable");
    assert!(
        readable.contains(&vin) && !readable.contains("<script>alert"),
        "escaped"
    );

    // A viewer sees the vehicle but no form, and may not erase it.
    phase(&url, &vin, &out, "viewer", &[]);
    // The policy page answers "what happens to a frame" with the engine's verdicts.
    let policy = phase(
        &url,
        &vin,
        &out,
        "policy",
        &[
            ("KIND", "location"),
            ("SETTINGS", r#"{"offline_mode":true}"#),
        ],
    );
    let verdicts = policy["verdicts"].as_object().cloned().unwrap_or_default();
    assert_eq!(
        verdicts.len(),
        7,
        "the pack's seven location purposes: {policy}"
    );
    assert!(
        verdicts.values().all(|v| v == "drop — offline-mode"),
        "offline mode stops every purpose: {policy}"
    );
    let explained = policy["explain"].as_str().unwrap_or_default();
    assert!(explained.contains("policy: kia-connect@"), "{policy}");
    let other = unique_vin();
    g.issue(&other);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let moving = traffic(&certs, g.tls, other, stop.clone());
    phase(&url, &vin, &out, "flows", &[]);
    let axe = phase(&url, &vin, &out, "axe", &[]);
    // TELEGATE_CONSOLE_SHOTS=docs/console refreshes the console guide's screenshots.
    let shots = std::env::var_os("TELEGATE_CONSOLE_SHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.path().join("shots"));
    std::fs::create_dir_all(&shots).expect("shots");
    let shot_dir = std::path::absolute(&shots)
        .expect("path")
        .to_str()
        .expect("UTF-8")
        .to_owned();
    phase(&url, &vin, &out, "screenshots", &[("SHOT_DIR", &shot_dir)]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    moving.await.expect("the other vehicle");
    for page in ["sign-in", "home", "vehicle", "policy", "flows"] {
        let png = shots.join(format!("console-{page}.png"));
        assert!(
            png.metadata().is_ok_and(|m| m.len() > 10_000),
            "{}",
            png.display()
        );
    }
    // Erasure, last: typed confirmation, then the key material is gone and the ledger says so.
    phase(&url, &vin, &out, "erase", &[("REASON", "CASE-10")]);
    // The vehicle comes back as a new one: its trip-log pseudonym is new, so its new records
    // cannot be joined to the old.
    publish(&certs, g.tls, &vin, 30, &[LOCATION]).await;
    // Trip log takes status and location frames: five before the erasure, one after.
    // (Partitions are read in no particular order: count records per key.)
    let trips = keys(&topic("trip-log"), 6).await;
    let mut per_key = std::collections::BTreeMap::<Vec<u8>, usize>::new();
    for k in trips {
        *per_key.entry(k).or_default() += 1;
    }
    let mut counts: Vec<usize> = per_key.into_values().collect();
    counts.sort_unstable();
    assert_eq!(
        counts,
        vec![1, 5],
        "one pseudonym before the erasure, a new one after"
    );
    let text = g.log_text();
    assert!(!text.contains(&vin), "no VIN in the gateway's log");
    assert!(axe.is_object(), "{axe}");
}
