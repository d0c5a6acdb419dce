//! Golden end-to-end tests: each seed service of each shipped pack, through the embedded
//! MQTT broker and the pipeline to the real Kafka-protocol broker. Each test runs in its own
//! topic namespace, so packs that disagree on a topic's retention never meet.

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
        mqtt: s.mqtt.v4_listen.expect("v4"),
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

fn breakdown(call: &str, assistance: bool, dealer: bool) -> Body {
    Body::Breakdown(pb::BreakdownCall {
        call_id: call.into(),
        trigger: pb::BreakdownTrigger::Vehicle as i32,
        consent: Some(pb::BreakdownConsent { assistance, dealer }),
        snapshot: Some(pb::BreakdownSnapshot {
            status: match status(1000.0) {
                Body::Status(s) => Some(s),
                _ => None,
            },
            dtcs: vec![pb::Dtc {
                code: "C0035".into(),
                ..Default::default()
            }],
            location: Some(pb::Location {
                lat_deg: 48.8,
                lon_deg: 9.1,
                ..Default::default()
            }),
        }),
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
        frame(&vin, 5, t + 4_000, dtc()),
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
        ["1", "5"],
        "private-mode frame 3 must not arrive"
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
    assert_eq!(insights.len(), 2, "status 1 and dtc 5, anonymous");
    for g in insights {
        assert_eq!((g.key.as_ref(), g.header("telegate-seq")), (None, None));
        let (f, _) = body_of(g);
        assert!(f.vin.is_empty() && f.seq == 0 && f.captured_at_ms % 3_600_000 == 0);
    }
    assert!(
        run.counter(
            "telegate_records_dropped_total",
            &["component-status", "private-mode"]
        ) >= 1.0
    );
    run.gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn porsche_breakdown_goes_to_assistance_and_dealer_only_with_their_consents() {
    let run = start("porsche-connect", None).await;
    let vin = unique_vin();
    let t = now_ms() - 30_000;
    run.send(&[
        frame(&vin, 1, t, breakdown("call-a", true, false)),
        frame(&vin, 2, t + 1_000, breakdown("call-b", true, true)),
        frame(&vin, 3, t + 2_000, breakdown("call-c", false, false)),
        // Group "with location" off: no breakdown data at all [002 L20].
        frame(&vin, 4, t + 3_000, privacy(false, false, false, &[])),
        frame(&vin, 5, t + 4_000, breakdown("call-d", true, true)),
    ])
    .await;
    let got = run
        .read(
            &["breakdown-call", "breakdown-dealer"],
            3,
            Duration::from_secs(20),
        )
        .await;
    let assistance: Vec<_> = got
        .iter()
        .filter(|g| g.topic == run.topic("breakdown-call"))
        .collect();
    let dealer: Vec<_> = got
        .iter()
        .filter(|g| g.topic == run.topic("breakdown-dealer"))
        .collect();
    assert_eq!(seqs(&got, &run.topic("breakdown-call")), ["1", "2"]);
    assert_eq!(seqs(&got, &run.topic("breakdown-dealer")), ["2"]);
    for g in &assistance {
        let (_, Body::Breakdown(b)) = body_of(g) else {
            panic!("breakdown")
        };
        assert!(
            b.snapshot.expect("snapshot").location.is_some(),
            "assistance gets the position"
        );
        assert_eq!(g.header("telegate-consent"), Some("granted"));
    }
    let (_, Body::Breakdown(b)) = body_of(dealer[0]) else {
        panic!("breakdown")
    };
    let snap = b.snapshot.expect("snapshot");
    assert!(
        snap.location.is_none() && snap.status.is_some(),
        "the dealer copy has no position"
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
async fn porsche_software_update_keeps_the_vin_and_the_map_provider_gets_none() {
    let run = start("porsche-connect", None).await;
    let vin = unique_vin();
    let sw = Body::Software(pb::SoftwareState {
        ecus: vec![pb::EcuSoftware {
            ecu: "gateway".into(),
            version: "4.2.1".into(),
        }],
        head_unit_version: "23.11".into(),
        map_version: "EU-2026.09".into(),
        event: pb::SoftwareEvent::UpdateInstalled as i32,
        campaign_id: "camp-9".into(),
    });
    run.send(&[frame(&vin, 1, now_ms() - 1_000, sw)]).await;
    let got = run
        .read(
            &["software-update", "map-update"],
            2,
            Duration::from_secs(20),
        )
        .await;
    let update = got
        .iter()
        .find(|g| g.topic == run.topic("software-update"))
        .expect("update record");
    assert_eq!(update.key.as_deref(), Some(vin.as_bytes()));
    let map = got
        .iter()
        .find(|g| g.topic == run.topic("map-update"))
        .expect("map record");
    assert_eq!(map.key, None);
    let (f, Body::Software(s)) = body_of(map) else {
        panic!("software")
    };
    assert!(
        f.vin.is_empty()
            && s.ecus.is_empty()
            && s.head_unit_version.is_empty()
            && s.campaign_id.is_empty()
    );
    assert_eq!(
        s.map_version, "EU-2026.09",
        "only the map version reaches the provider [002 L43]"
    );
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

fn consent_state(
    vin: &str,
    consents: &[(&str, i64, bool)],
    activations: &[(&str, i64, bool)],
) -> StateFile {
    let mut r = SubjectRecord::default();
    for (p, t, on) in consents {
        r.consents.entry((*p).into()).or_default().set(*t, *on);
    }
    for (f, t, on) in activations {
        r.activations.entry((*f).into()).or_default().set(*t, *on);
    }
    let mut file = StateFile::default();
    file.subjects.insert(vin.into(), r);
    file
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kia_product_improvement_needs_consent_and_gis_and_is_anonymous() {
    let vin = unique_vin();
    let t = now_ms() - 60_000;
    let state = consent_state(&vin, &[("product-improvement", t + 2_000, true)], &[]);
    let run = start("kia-connect", Some(state)).await;
    run.send(&[
        frame(
            &vin,
            1,
            t + 500,
            privacy(false, false, true, &[("gis", true)]),
        ),
        frame(&vin, 2, t + 1_000, status(1.0)), // GIS on, consent not yet given
        frame(&vin, 3, t + 3_000, location(48.77581, 9.18293)), // consent and GIS
        frame(
            &vin,
            4,
            t + 4_000,
            privacy(false, false, true, &[("gis", false)]),
        ),
        frame(&vin, 5, t + 5_000, status(2.0)), // GIS off [004 L216]
    ])
    .await;
    let got = run
        .read(&["product-insights"], 2, Duration::from_secs(8))
        .await;
    assert_eq!(got.len(), 1, "only the frame with consent and GIS: {got:?}");
    let g = &got[0];
    assert_eq!(
        (g.key.as_ref(), g.header("telegate-subject")),
        (None, Some("anonymous"))
    );
    let (f, Body::Location(l)) = body_of(g) else {
        panic!("location")
    };
    assert!(f.vin.is_empty() && f.seq == 0);
    assert!(l.altitude_m.is_none() && l.accuracy_m >= Some(1000.0));
    assert!(
        (l.lat_deg - 48.77581).abs() > 1e-6 && (l.lat_deg - 48.77581).abs() < 0.01,
        "1 km grid"
    );
    assert_eq!(f.captured_at_ms % 3_600_000, 0);
    assert!(
        run.counter(
            "telegate_records_dropped_total",
            &["product-improvement", "consent-missing"]
        ) >= 1.0
    );
    assert!(
        run.counter(
            "telegate_records_dropped_total",
            &["product-improvement", "requirement-off"]
        ) >= 1.0
    );
    run.gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kia_alerts_only_while_activated_and_services_keep_their_fields() {
    let vin = unique_vin();
    let other = unique_vin();
    let t = now_ms() - 60_000;
    let state = consent_state(
        &vin,
        &[],
        &[
            ("geofence-alert", t, true),
            ("speed-alert", t, true),
            ("speed-alert", t + 2_000, false),
        ],
    );
    let run = start("kia-connect", Some(state)).await;
    run.send(&[
        frame(&vin, 1, t + 1_000, location(48.8, 9.1)),
        frame(&vin, 2, t + 3_000, location(48.81, 9.11)),
        frame(&other, 1, t + 1_000, location(48.8, 9.1)),
        frame(&vin, 3, t + 4_000, dtc()),
        frame(&vin, 4, t + 5_000, status(77.0)),
    ])
    .await;
    let got = run
        .read(
            &[
                "geofence-alert",
                "speed-alert",
                "valet-alert",
                "vehicle-diagnostics",
                "ota-update",
                "hv-battery-alert",
                "live-improvement",
            ],
            8,
            Duration::from_secs(8),
        )
        .await;
    let on = |topic: &str| {
        got.iter()
            .filter(|g| g.topic == run.topic(topic))
            .collect::<Vec<_>>()
    };
    let geofence = on("geofence-alert");
    assert_eq!(
        geofence.len(),
        2,
        "both positions of the activated VIN, none of the other"
    );
    assert!(
        geofence
            .iter()
            .all(|g| g.key.as_deref() == Some(vin.as_bytes()))
    );
    // Speed alert was deactivated after the first frame: the stricter state wins for both.
    assert!(on("speed-alert").is_empty(), "deactivated since capture");
    assert!(on("valet-alert").is_empty(), "never activated");
    assert_eq!(on("vehicle-diagnostics").len(), 1);
    assert!(
        on("ota-update").is_empty(),
        "DTC scans stay apart from the OTA purpose"
    );
    let hv = on("hv-battery-alert");
    assert_eq!(hv.len(), 1);
    let (_, Body::Status(s)) = body_of(hv[0]) else {
        panic!("status")
    };
    assert!(
        s.odometer_km.is_none() && s.hv_battery.is_some(),
        "only the listed status fields [004 L210]"
    );
    let live = on("live-improvement");
    assert_eq!(live.len(), 3, "two positions of one VIN, one of the other");
    for g in live {
        let (f, Body::Location(l)) = body_of(g) else {
            panic!("location")
        };
        assert!(f.vin.is_empty() && g.key.as_ref().is_some_and(|k| k.len() == 32));
        assert!(
            l.speed_kmh.is_none() && l.altitude_m.is_none(),
            "GPS position only [004 L239]"
        );
    }
    run.gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ev_charging_location_needs_consent_and_transactions_never_carry_it() {
    let vin = unique_vin();
    let other = unique_vin();
    let t = now_ms() - 60_000;
    let state = consent_state(&vin, &[("charging-location", t, true)], &[]);
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
