//! Every validation reason, produced by an independent MQTT client (mosquitto_pub, MQTT 3.1.1
//! and 5 in turn) through the closed edge of the real `telegate serve`: each is counted once in
//! `telegate_frames_rejected_total{reason}`, each has its record on `telegate.rejected` without
//! the payload or a raw VIN, each is acknowledged (Kafka holds its rejection), and the valid
//! frames sent between them are all delivered.

mod tls_gateway;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;
use strum::VariantArray;
use telegate_frame::{RejectReason, Vin};
use telegate_tests::*;
use tls_gateway::Gateway;

/// A number that appears in every payload and must appear in no rejection record.
const MARK: &str = "4242.4242";

/// A fresh VIN whose ISO 3779 check digit is (or is not) right.
fn vin_with_check_digit(ok: bool) -> String {
    loop {
        let v = unique_vin();
        if Vin::parse(&v).expect("valid VIN").check_digit_ok() == ok {
            return v;
        }
    }
}

fn frame(vin: &str, seq: &str, captured: Option<i64>, body: Option<&str>) -> String {
    let mut fields = vec![format!(r#""vin":"{vin}""#), format!(r#""seq":"{seq}""#)];
    if let Some(at) = captured {
        fields.push(format!(r#""capturedAtMs":"{at}""#));
    }
    if let Some(body) = body {
        fields.push(body.to_owned());
    }
    format!("{{{}}}", fields.join(","))
}

fn status_body(fuel: u32) -> String {
    format!(r#""status":{{"odometerKm":{MARK},"fuelLevelPct":{fuel},"ignition":"IGNITION_ON"}}"#)
}

struct Vehicle {
    vin: String,
    cert: PathBuf,
    key: PathBuf,
}

fn mosquitto_pub(g: &Gateway, v: &Vehicle, version: &str, topic: &str, msg: &str) -> Output {
    Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &g.tls.port().to_string()])
        .arg("--cafile")
        .arg(g.pki.join("ca.crt"))
        .arg("--cert")
        .arg(&v.cert)
        .arg("--key")
        .arg(&v.key)
        .args(["-V", version, "-q", "1", "-t", topic, "-m", msg])
        .output()
        .unwrap_or_else(|e| panic!("mosquitto_pub is needed (scripts/test installs it): {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rejection_reason_through_the_closed_edge() {
    // The check digit is checked in this gateway, so that `vin-check-digit` can happen.
    let g = Gateway::start(&[("TELEGATE__VALIDATION__REQUIRE_CHECK_DIGIT", "true")]).await;
    let vehicle = |vin: String| {
        g.issue(&vin);
        let base = g.pki.join("vehicles").join(&vin);
        Vehicle {
            cert: base.with_extension("crt"),
            key: base.with_extension("key"),
            vin,
        }
    };
    let good = vehicle(vin_with_check_digit(true));
    let wrong_digit = vehicle(vin_with_check_digit(false));
    let other = vin_with_check_digit(true);
    let v = good.vin.clone();
    let now = now_ms();
    let topic = |kind: &str| format!("/tenants/{v}/v1/{kind}");
    let valid_status = |seq: u64| {
        frame(
            &v,
            &seq.to_string(),
            Some(now - 1_000),
            Some(&status_body(40)),
        )
    };

    let c = consumer(&[
        &format!("{}telegate.smart-service", g.ns),
        &format!("{}telegate.rejected", g.ns),
    ]);
    let mut valid_seq = 0;
    let mut sent = Vec::new();
    for (i, &reason) in RejectReason::VARIANTS.iter().enumerate() {
        let seq = (100 + i).to_string();
        let at = Some(now - 1_000);
        let body = status_body(40);
        let (sender, to, payload) = match reason {
            RejectReason::TopicMalformed => (
                &good,
                format!("{}/extra", topic("status")),
                valid_status(100),
            ),
            RejectReason::KindUnknown => (&good, topic("teleport"), valid_status(100)),
            RejectReason::PayloadTooLarge => {
                // Above validation.max_payload_bytes (64 KiB), below the edge's packet limit.
                let pad = "9".repeat(70 * 1024);
                (&good, topic("status"), frame(&v, &pad, at, Some(&body)))
            }
            RejectReason::DecodeFailed => (&good, topic("status"), format!("not a frame {MARK}")),
            RejectReason::VinMalformed => (
                &good,
                topic("status"),
                frame("WP0ZZZ", &seq, at, Some(&body)),
            ),
            RejectReason::VinCheckDigit => {
                let w = &wrong_digit.vin;
                (
                    &wrong_digit,
                    format!("/tenants/{w}/v1/status"),
                    frame(w, &seq, at, Some(&body)),
                )
            }
            RejectReason::VinMismatch => {
                (&good, topic("status"), frame(&other, &seq, at, Some(&body)))
            }
            RejectReason::KindMismatch => {
                (&good, topic("location"), frame(&v, &seq, at, Some(&body)))
            }
            RejectReason::BodyMissing => (&good, topic("status"), frame(&v, &seq, at, None)),
            RejectReason::SeqMissing => (&good, topic("status"), frame(&v, "0", at, Some(&body))),
            RejectReason::CapturedAtMissing => {
                (&good, topic("status"), frame(&v, &seq, None, Some(&body)))
            }
            RejectReason::CapturedInFuture => (
                &good,
                topic("status"),
                frame(&v, &seq, Some(now + 3_600_000), Some(&body)),
            ),
            RejectReason::CapturedTooOld => (
                &good,
                topic("status"),
                frame(&v, &seq, Some(now - 40 * 86_400_000), Some(&body)),
            ),
            RejectReason::ValueOutOfRange => (
                &good,
                topic("status"),
                frame(&v, &seq, at, Some(&status_body(150))),
            ),
            // Refused by the edge, acknowledged, and written as a rejection (the default
            // deny action).
            RejectReason::TopicNotPermitted => (
                &good,
                format!("/tenants/{other}/v1/status"),
                frame(&other, &seq, at, Some(&body)),
            ),
        };
        let version = if i % 2 == 0 { "mqttv311" } else { "mqttv5" };
        let out = mosquitto_pub(&g, sender, version, &to, &payload);
        assert!(
            out.status.success(),
            "{reason:?} was not acknowledged: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        sent.push((reason, payload.len()));
        // A valid frame after each rejection: nothing around a rejection is lost.
        valid_seq += 1;
        let out = mosquitto_pub(
            &g,
            &good,
            version,
            &topic("status"),
            &valid_status(valid_seq),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // A VIN that is malformed in the topic, or another vehicle's topic, never reaches
    // validation through the closed edge: the certificate names the vehicle, and a publish
    // outside its own prefix is refused there (`publish-not-permitted`; MQTT 5 gets PUBACK
    // "not authorized", MQTT 3.1.1 a plain PUBACK) and written as `topic-not-permitted`.
    // Validation's `vin-malformed` for the topic and `vin-mismatch` for a topic of another
    // VIN can only come from anonymous development clients or behind an external broker.
    let malformed_topic = format!("/tenants/{}Q/v1/status", &v[..16]);
    let other_topic = format!("/tenants/{other}/v1/status");
    for (version, to) in [
        ("mqttv311", &malformed_topic),
        ("mqttv5", &malformed_topic),
        ("mqttv311", &other_topic),
        ("mqttv5", &other_topic),
    ] {
        let payload = frame(&v, "999", Some(now - 1_000), Some(&status_body(40)));
        let out = mosquitto_pub(&g, &good, version, to, &payload);
        if version == "mqttv311" {
            assert!(
                out.status.success(),
                "a refused 3.1.1 publish is acknowledged: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        sent.push((RejectReason::TopicNotPermitted, payload.len()));
    }
    assert_eq!(g.refused("publish-not-permitted"), 5.0);

    for reason in RejectReason::VARIANTS {
        let counted = g.metric(
            "telegate_frames_rejected_total",
            &format!("reason=\"{}\"", reason.as_str()),
        );
        let want = match reason {
            RejectReason::TopicNotPermitted => 5.0,
            _ => 1.0,
        };
        assert_eq!(counted, want, "{reason:?} counted {counted} times");
    }
    assert_eq!(
        g.metric("telegate_frames_valid_total", ""),
        valid_seq as f64,
        "only the valid frames are valid"
    );
    // The edge let every other rejected frame through: validation, not the edge, refused
    // them.
    let refused = g.metric("telegate_mqtt_refused_total", "");
    assert_eq!(refused, 5.0, "the edge refused something else");

    let rejected_topic = format!("{}telegate.rejected", g.ns);
    let want = sent.len() + valid_seq as usize;
    // Then nothing more: the publishes the edge refused left only their rejections.
    let got = collect_expecting(&c, want, Duration::from_secs(2), |r| {
        r.topic == rejected_topic || r.key.as_deref() == Some(v.as_bytes())
    })
    .await;
    assert_eq!(
        got.len(),
        want,
        "records beyond the rejections and the valid frames"
    );
    let mut delivered: Vec<u64> = got
        .iter()
        .filter(|r| r.topic != rejected_topic)
        .filter_map(|r| r.header("telegate-seq")?.parse().ok())
        .collect();
    delivered.sort_unstable();
    assert_eq!(
        delivered,
        (1..=valid_seq).collect::<Vec<_>>(),
        "a valid frame between the rejections was lost"
    );

    let keys = telegate_policy::Keyring::from_toml(
        &std::fs::read_to_string(g.key_file()).expect("key file"),
    )
    .expect("keys");
    let records: Vec<_> = got.iter().filter(|r| r.topic == rejected_topic).collect();
    assert_eq!(records.len(), sent.len(), "one record per rejection");
    for (reason, payload_bytes) in &sent {
        let r = records
            .iter()
            .find(|r| r.header("telegate-reason") == Some(reason.as_str()))
            .unwrap_or_else(|| panic!("no record for {reason:?}"));
        let text = String::from_utf8_lossy(&r.payload);
        let json: serde_json::Value = serde_json::from_str(&text).expect("a JSON record");
        assert_eq!(json["reason"], reason.as_str(), "{text}");
        assert_eq!(
            json["payloadBytes"],
            payload_bytes.to_string(),
            "{reason:?}: {text}"
        );
        // Every VIN of the test starts with WP0ZZZ (the malformed one is just that), `other`
        // is the forged one; the messages name what leaked, never the value.
        for (what, secret) in [
            ("the payload", MARK),
            ("a VIN", "WP0ZZZ"),
            ("a VIN", &other),
        ] {
            assert!(
                !text.contains(secret),
                "{reason:?}: the record holds {what}"
            );
            assert!(
                !r.headers.values().any(|h| h.contains(secret)),
                "{reason:?}: a header holds {what}"
            );
        }
        // The subject is the keyed hash of the topic's VIN, never the VIN.
        let subject = match reason {
            RejectReason::VinCheckDigit => Some(&wrong_digit.vin),
            RejectReason::TopicMalformed => None,
            _ => Some(&good.vin),
        };
        if let Some(vin) = subject {
            let hash = keys.subject_hash(vin);
            assert_eq!(json["subjectHash"], hash.as_str(), "{reason:?}: {text}");
            assert_eq!(r.key.as_deref(), Some(hash.as_bytes()), "{reason:?}");
        }
    }
}
