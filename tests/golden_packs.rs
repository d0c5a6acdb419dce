//! Each shipped pack once, end to end: frames through the embedded MQTT broker and the
//! pipeline to the real Kafka-protocol broker. The cases themselves, every seed service of
//! every pack with the settings, consents and activations it depends on, live in the pure
//! admission tests (crates/telegate-policy/tests/admission/); here each pack runs the case
//! that crosses the most of the pipeline: settings frames changing the vehicle's state, a
//! state file, records in different identity forms on several topics, drops counted in the
//! metrics, topics created with the pack's retention. The reference pack runs end to end in
//! pipeline_e2e.rs and consumers_e2e.rs. Each test runs in its own topic namespace, so packs
//! that disagree on a topic's retention never meet.

use std::time::Duration;
use telegate_frame::pb::{self, VehicleFrame, vehicle_frame::Body};
use telegate_frame::{FrameKind, PayloadFormat, decode, encode, vehicle_topic};
use telegate_gateway::{Gateway, PackSource};
use telegate_policy::{StateFile, SubjectRecord};
use telegate_tests::*;

struct Run {
    gw: Gateway,
    mqtt: std::net::SocketAddr,
    metrics: std::net::SocketAddr,
    ns: String,
    _dir: tempfile::TempDir,
}

async fn start(pack: &str, state: Option<StateFile>) -> Run {
    let dir = tempfile::tempdir().expect("tmp");
    let ns = format!("g{:08x}.", rand::random::<u32>());
    let mut s = gateway_config(pack, &ns, dir.path());
    s.metrics_listen = Some(free_addr());
    if let Some(state) = state {
        let path = dir.path().join("state.json");
        std::fs::write(&path, serde_json::to_string(&state).expect("json")).expect("write state");
        s.state_file = Some(path);
    }
    let gw = Gateway::start(&s, PackSource::Config)
        .await
        .expect("gateway starts");
    Run {
        gw,
        mqtt: s.mqtt.listen.expect("v4"),
        metrics: s.metrics_listen.expect("metrics"),
        ns: s.kafka.topic_namespace.clone(),
        _dir: dir,
    }
}

impl Run {
    fn topic(&self, service: &str) -> String {
        format!("{}telegate.{service}", self.ns)
    }

    async fn send(&self, frames: &[VehicleFrame]) {
        let msgs = frames
            .iter()
            .map(|f| {
                let kind = FrameKind::of_body(f.body.as_ref().expect("body"));
                (vehicle_topic(&f.vin, kind), encode(f, PayloadFormat::Json))
            })
            .collect();
        publish_v4(self.mqtt, msgs).await;
    }

    /// Every record on the given services' topics within `wait` (until `want` arrived).
    async fn read(&self, services: &[&str], want: usize, wait: Duration) -> Vec<Got> {
        let topics: Vec<String> = services.iter().map(|s| self.topic(s)).collect();
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        let c = consumer(&names);
        collect(&c, want, wait, |_| true).await
    }

    fn counter(&self, name: &str, labels: &[&str]) -> f64 {
        let (_, body) = http_get(self.metrics, "/metrics").expect("metrics");
        telegate_gateway::http::samples(&body, name)
            .into_iter()
            .filter(|(l, _)| labels.iter().all(|x| l.contains(x)))
            .map(|(_, v)| v)
            .sum()
    }
}

fn frame(vin: &str, seq: u64, at: i64, body: Body) -> VehicleFrame {
    VehicleFrame {
        vin: vin.into(),
        seq,
        captured_at_ms: at,
        body: Some(body),
    }
}

fn status(odo: f64) -> Body {
    Body::Status(pb::Status {
        odometer_km: Some(odo),
        fuel_level_pct: Some(30.0),
        ignition: pb::Ignition::On as i32,
        hv_battery: Some(pb::HighVoltageBattery {
            soc_pct: Some(50.0),
            alert: true,
            ..Default::default()
        }),
        ..Default::default()
    })
}

fn location(lat: f64, lon: f64) -> Body {
    Body::Location(pb::Location {
        lat_deg: lat,
        lon_deg: lon,
        altitude_m: Some(250.0),
        speed_kmh: Some(50.0),
        heading_deg: Some(90.0),
        accuracy_m: Some(3.0),
    })
}

fn dtc() -> Body {
    Body::Diagnostics(pb::Diagnostics {
        dtcs: vec![pb::Dtc {
            code: "P0301".into(),
            ecu: "engine".into(),
            ..Default::default()
        }],
        trigger: pb::DiagnosticsTrigger::IgnitionScan as i32,
    })
}

fn privacy(private: bool, offline: bool, loc: bool, toggles: &[(&str, bool)]) -> Body {
    Body::Privacy(pb::PrivacySettings {
        private_mode: private,
        offline_mode: offline,
        location_services: loc,
        non_location_services: true,
        services: toggles.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
    })
}

fn body_of(g: &Got) -> (VehicleFrame, Body) {
    let (f, _) = decode(&g.payload).expect("record decodes");
    let b = f.body.clone().expect("body");
    (f, b)
}

fn seqs(got: &[Got], topic: &str) -> Vec<String> {
    let mut v: Vec<String> = got
        .iter()
        .filter(|g| g.topic == topic)
        .map(|g| g.header("telegate-seq").unwrap_or("-").to_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn porsche_smart_service_respects_private_mode_and_never_sees_location() {
    let run = start("porsche-connect", None).await;
    let vin = unique_vin();
    let t = now_ms() - 60_000;
    run.send(&[
        frame(&vin, 1, t, status(100.0)),
        frame(&vin, 2, t + 1_000, privacy(true, false, true, &[])),
        // Private mode: the online functions stop [002 L11].
        frame(&vin, 3, t + 2_000, status(101.0)),
        frame(&vin, 4, t + 3_000, privacy(false, false, true, &[])),
        // No Porsche service takes positions outside a breakdown call [002 L5].
        frame(&vin, 5, t + 3_500, location(48.8, 9.1)),
        frame(&vin, 6, t + 4_000, dtc()),
    ])
    .await;
    let got = run
        .read(
            &["smart-service", "product-insights"],
            4,
            Duration::from_secs(20),
        )
        .await;
    let smart = run.topic("smart-service");
    assert_eq!(
        seqs(&got, &smart),
        ["1", "6"],
        "private-mode frame 3 and position 5 must not arrive"
    );
    for g in got.iter().filter(|g| g.topic == smart) {
        // 30-year topic: pseudonym key, VIN sealed under the vehicle's own key.
        assert_eq!(g.header("telegate-subject"), Some("sealed"));
        assert_eq!(g.key.as_ref().map(Vec::len), Some(32));
        assert_eq!(g.header("telegate-legal-basis"), Some("contract"));
        let (f, _) = body_of(g);
        assert!(f.vin.starts_with("tgs1.") && !f.vin.contains(&vin));
        assert!(!String::from_utf8_lossy(&g.payload).contains(&vin));
    }
    let insights: Vec<_> = got
        .iter()
        .filter(|g| g.topic == run.topic("product-insights"))
        .collect();
    assert_eq!(insights.len(), 2, "status 1 and dtc 6, anonymous");
    for g in insights {
        assert_eq!((g.key.as_ref(), g.header("telegate-seq")), (None, None));
        let (f, b) = body_of(g);
        assert!(f.vin.is_empty() && f.seq == 0 && f.captured_at_ms % 3_600_000 == 0);
        assert!(!matches!(b, Body::Location(_)), "no position [002 L5]");
    }
    assert!(
        run.counter(
            "telegate_records_dropped_total",
            &["component-status", "private-mode"]
        ) >= 1.0
    );
    // Topics exist with the 7 days the notice allows [002 L18].
    let retention = telegate_kafka::topic_retention_ms(
        &telegate_kafka::KafkaConfig {
            bootstrap: kafka(),
            ..Default::default()
        },
        &run.topic("breakdown-call"),
    )
    .await
    .expect("described");
    assert_eq!(retention, Some(7 * 86_400_000));
    run.gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kia_offline_mode_keeps_nothing_even_when_frames_arrive_after_reconnect() {
    let run = start("kia-connect", None).await;
    let vin = unique_vin();
    let t = now_ms() - 120_000;
    // A latitude out of range is rejected; captured while offline, it leaves no trace.
    let out_of_range = frame(
        &vin,
        7,
        t + 1_700,
        Body::Location(pb::Location {
            lat_deg: 95.0,
            ..Default::default()
        }),
    );
    run.send(&[
        frame(&vin, 1, t, status(10.0)),
        frame(&vin, 2, t + 1_000, privacy(false, true, true, &[])),
        frame(&vin, 3, t + 2_000, privacy(false, false, true, &[])),
        frame(&vin, 6, t + 4_000, status(12.0)),
    ])
    .await;
    // Store-and-forward: captured inside the offline interval, published after it ended.
    run.send(&[
        frame(&vin, 4, t + 1_500, location(48.8, 9.1)),
        frame(&vin, 5, t + 1_600, status(11.0)),
        out_of_range,
    ])
    .await;
    let got = run
        .read(
            &[
                "vehicle-status",
                "trip-log",
                "vehicle-diagnostics",
                "rejected",
            ],
            10,
            Duration::from_secs(8),
        )
        .await;
    let status_seqs = seqs(&got, &run.topic("vehicle-status"));
    assert_eq!(
        status_seqs,
        ["1", "6"],
        "nothing captured while offline [004 L462]"
    );
    for g in got
        .iter()
        .filter(|g| g.topic == run.topic("vehicle-status"))
    {
        assert_eq!(g.header("telegate-subject"), Some("vin"));
        assert_eq!(g.key.as_deref(), Some(vin.as_bytes()));
    }
    // The trip service gets a stable pseudonym, never the VIN.
    let trips = run.topic("trip-log");
    assert_eq!(seqs(&got, &trips), ["1", "6"]);
    let keys: Vec<_> = got
        .iter()
        .filter(|g| g.topic == trips)
        .map(|g| {
            assert_eq!(g.header("telegate-subject"), Some("pseudonym"));
            assert!(!String::from_utf8_lossy(&g.payload).contains(&vin));
            g.key.clone().expect("keyed")
        })
        .collect();
    assert!(keys.iter().all(|k| k.len() == 32 && *k == keys[0]));
    assert!(
        got.iter().all(|g| g.topic != run.topic("trip-log") || {
            let (f, _) = body_of(g);
            f.captured_at_ms < t + 1_000 || f.captured_at_ms > t + 2_000
        }),
        "no trip data from the offline interval"
    );
    assert!(
        got.iter().all(|g| g.topic != run.topic("rejected")),
        "a frame captured offline leaves no rejected record either"
    );
    assert!(run.counter("telegate_frames_offline_total", &[]) >= 3.0);
    assert!(run.counter("telegate_rejected_withheld_offline_total", &[]) >= 1.0);
    run.gw.shutdown().await;
}

fn consent_state(vin: &str, consents: &[(&str, i64, bool)]) -> StateFile {
    let mut r = SubjectRecord::default();
    for (p, t, on) in consents {
        r.consents.entry((*p).into()).or_default().set(*t, *on);
    }
    let mut file = StateFile::default();
    file.subjects.insert(vin.into(), r);
    file
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ev_charging_location_needs_consent_and_transactions_never_carry_it() {
    let vin = unique_vin();
    let other = unique_vin();
    let t = now_ms() - 60_000;
    let state = consent_state(&vin, &[("charging-location", t, true)]);
    let run = start("ev-charging", Some(state)).await;
    let session = |id: &str| {
        Body::Charging(pb::ChargingSession {
            session_id: id.into(),
            phase: pb::ChargingPhase::Ended as i32,
            energy_kwh: Some(31.5),
            evse_id: "DE*TGS*E000123".into(),
            location: Some(pb::Location {
                lat_deg: 52.5,
                lon_deg: 13.4,
                ..Default::default()
            }),
            ..Default::default()
        })
    };
    run.send(&[
        frame(&vin, 1, t + 1_000, session("s-1")),
        frame(&other, 1, t + 1_000, session("s-2")),
    ])
    .await;
    let got = run
        .read(
            &["charging-sessions", "charging-locations"],
            3,
            Duration::from_secs(8),
        )
        .await;
    let tx: Vec<_> = got
        .iter()
        .filter(|g| g.topic == run.topic("charging-sessions"))
        .collect();
    let loc: Vec<_> = got
        .iter()
        .filter(|g| g.topic == run.topic("charging-locations"))
        .collect();
    assert_eq!(tx.len(), 2);
    for g in tx {
        assert_eq!(g.header("telegate-legal-basis"), Some("legal-obligation"));
        let (_, Body::Charging(c)) = body_of(g) else {
            panic!("charging")
        };
        assert!(
            c.location.is_none() && c.energy_kwh == Some(31.5),
            "transactions carry no position [003 L146]"
        );
    }
    assert_eq!(loc.len(), 1, "only the consenting vehicle's position");
    let (_, Body::Charging(c)) = body_of(loc[0]) else {
        panic!("charging")
    };
    assert!(c.location.is_some() && c.energy_kwh.is_none() && c.evse_id.is_empty());
    let retention = telegate_kafka::topic_retention_ms(
        &telegate_kafka::KafkaConfig {
            bootstrap: kafka(),
            ..Default::default()
        },
        &run.topic("charging-sessions"),
    )
    .await
    .expect("described");
    assert_eq!(
        retention,
        Some(3653 * 86_400_000),
        "transactions: 10 years [003 L97]"
    );
    run.gw.shutdown().await;
}
