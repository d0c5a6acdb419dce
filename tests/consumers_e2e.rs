//! The whole story: a simulated fleet → `telegate` (embedded MQTT, reference pack) → the real
//! Kafka-protocol broker → the four reference consumers, whose results are checked against
//! what the simulator knows it did.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use strum::VariantArray;
use telegate_consumers::{ConsumerStats, Reference, RunnerConfig};
use telegate_frame::Vin;
use telegate_frame::pb::DtcSeverity;
use telegate_gateway::{Gateway, PackSource};
use telegate_policy::{Keyring, PurposeId};
use telegate_sim::{Behaviour, Fleet, FleetConfig, FormatMix, Truth};
use telegate_tests::*;

const K: u64 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_agree_with_what_the_fleet_did() {
    let dir = tempfile::tempdir().expect("tmp");
    let ns = format!("c{:08x}.", rand::random::<u32>());
    let mut s = gateway_config("reference", &ns, dir.path());
    s.kafka.partitions = 2;
    let gw = Gateway::start(&s, PackSource::Config)
        .await
        .expect("gateway");

    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let mut consumers = Vec::new();
    for &service in Reference::VARIANTS {
        let cfg = RunnerConfig {
            kafka: s.kafka.clone(),
            group: format!("{ns}{}", service.name()),
            inputs: service.inputs(&ns),
            output: service.output(&ns),
            view_file: None,
            tick: Duration::from_millis(500),
            output_retention: service.output_retention(),
            from_beginning: true,
            tracer: None,
        };
        let stats = Arc::new(ConsumerStats::default());
        let run = telegate_consumers::run(
            cfg,
            service.build(service.purposes(), K, Duration::from_secs(2)),
            stop_rx.clone(),
            stats.clone(),
        );
        consumers.push((service, stats, tokio::spawn(run)));
    }

    let mqtt = s.mqtt.listen.expect("mqtt");
    let fleet = Fleet::start(FleetConfig {
        host: "127.0.0.1".into(),
        port: mqtt.port(),
        vehicles: 24,
        behaviour: Behaviour {
            location_every_ms: 1_000,
            status_every_ms: 10_000,
            trip_ms: (12_000, 30_000),
            park_ms: (2_000, 8_000),
            dtc_per_trip: 0.6,
            breakdown_per_trip: 0.3,
            // Privacy toggles would drop frames on purpose; here every frame should arrive.
            privacy_toggle_per_trip: 0.0,
            ev_share: 0.5,
        },
        tick: Duration::from_millis(500),
        format: FormatMix::Mixed,
        bad_frame_ratio: 0.0,
        seed: 42,
        ..FleetConfig::default()
    });
    tokio::time::sleep(Duration::from_secs(50)).await;
    let truth: BTreeMap<String, Truth> = fleet.stop().await.into_iter().collect();
    // Let the last frames cross the pipeline, trips pass their grace period and results land:
    // wait until no consumer has taken a record for 4 s (a slow broker can lag by seconds),
    // at least 8 s and at most 90 s.
    let taken = || -> u64 {
        use std::sync::atomic::Ordering::Relaxed;
        consumers
            .iter()
            .map(|(_, s, _)| s.processed.load(Relaxed) + s.duplicates.load(Relaxed))
            .sum()
    };
    let stopped = tokio::time::Instant::now();
    let (mut last, mut since) = (taken(), tokio::time::Instant::now());
    while stopped.elapsed() < Duration::from_secs(90)
        && (stopped.elapsed() < Duration::from_secs(8) || since.elapsed() < Duration::from_secs(4))
    {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = taken();
        if now != last {
            (last, since) = (now, tokio::time::Instant::now());
        }
    }
    let _ = stop.send(true);
    let mut views = BTreeMap::new();
    for (service, stats, handle) in consumers {
        handle.await.expect("consumer task").expect("consumer ran");
        let view = stats.view.lock().expect("view").clone();
        use std::sync::atomic::Ordering::Relaxed;
        assert_eq!(
            stats.refused.load(Relaxed),
            0,
            "{}: nothing for other purposes",
            service.name()
        );
        assert_eq!(stats.malformed.load(Relaxed), 0);
        views.insert(service.name(), view);
    }

    // Trip log: every trip the fleet closed, with its distance within 5 % (or 50 m).
    let keys = Keyring::from_toml(&std::fs::read_to_string(key_file(dir.path())).expect("keys"))
        .expect("keys");
    let trips = views["trip-log"]["trips"]
        .as_array()
        .expect("trips")
        .clone();
    let mut checked = 0;
    for (vin, t) in &truth {
        let v = Vin::parse(vin).expect("vin");
        let secret = gw
            .state()
            .get(&v)
            .and_then(|r| r.secret)
            .expect("key material");
        let subject = keys.pseudonym(&PurposeId::from("trip-log"), &v, Some(&secret));
        for want in &t.closed_trips {
            let got = trips
                .iter()
                .find(|g| {
                    g["subject"] == subject.as_str() && g["started_at_ms"] == want.started_at_ms
                })
                .unwrap_or_else(|| panic!("trip from {} missing", want.started_at_ms));
            assert_eq!(got["ended_at_ms"], want.ended_at_ms);
            let d = got["distance_km"].as_f64().expect("distance");
            let tolerance = (want.distance_km * 0.05).max(0.05);
            assert!(
                (d - want.distance_km).abs() <= tolerance,
                "trip distance {d} km, driven {} km",
                want.distance_km
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 10,
        "only {checked} trips closed; the run is too short to mean much"
    );
    assert_eq!(trips.len(), checked, "no trips the fleet did not drive");

    // Smart service: every DTC of warning or critical severity a scan reported became a need
    // (it may have cleared since: a breakdown repairs the vehicle), and no need was invented.
    let out = consumer(&[&Reference::SmartService.output(&ns)]);
    let events = collect(&out, 100_000, Duration::from_secs(5), |_| true).await;
    let appeared: BTreeSet<(String, String)> = events
        .iter()
        .filter_map(|r| serde_json::from_slice::<serde_json::Value>(&r.payload).ok())
        .filter(|v| v["state"] == "appeared")
        .map(|v| {
            (
                v["subject"].as_str().unwrap_or("").to_owned(),
                v["need"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let mut dtc_needs = 0;
    for (vin, t) in &truth {
        for (code, sev) in &t.dtcs_scanned {
            if matches!(sev, DtcSeverity::Warning | DtcSeverity::Critical) {
                let need = (vin.clone(), format!("dtc:{code}"));
                assert!(appeared.contains(&need), "{} never appeared", need.1);
                dtc_needs += 1;
            }
        }
    }
    for (subject, need) in appeared.iter().filter(|(_, n)| n.starts_with("dtc:")) {
        let t = &truth[subject];
        assert!(
            t.dtcs_raised.iter().any(|c| format!("dtc:{c}") == *need),
            "invented {need}"
        );
    }
    assert!(dtc_needs > 0, "the fleet raised no DTC worth a need");
    assert!(
        !views["smart-service"].to_string().contains("lat"),
        "no position ever"
    );

    // Breakdown call: one case per call with assistance consent; a dealer copy only with the
    // dealer's.
    let cases = views["breakdown-call"]["cases"].as_array().expect("cases");
    let got: BTreeSet<(String, String)> = cases
        .iter()
        .map(|c| {
            (
                c["audience"].as_str().unwrap_or("").to_owned(),
                c["call_id"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(got.len(), cases.len(), "one case per call and audience");
    let mut want = BTreeSet::new();
    for t in truth.values() {
        for (call, consent) in &t.breakdown_calls {
            if consent.assistance {
                want.insert(("assistance".to_owned(), call.clone()));
            }
            if consent.dealer {
                want.insert(("dealer".to_owned(), call.clone()));
            }
        }
    }
    assert_eq!(got, want);
    assert!(!want.is_empty(), "no breakdown call with consent happened");
    for c in cases.iter().filter(|c| c["audience"] == "dealer") {
        assert!(
            c["case"]["last_position"].is_null(),
            "the dealer copy has no position"
        );
    }

    // Product insights: nothing released below k vehicles, no identifier anywhere.
    let insights = &views["product-insights"];
    for a in insights["aggregates"].as_array().expect("aggregates") {
        assert!(a["vehicles"].as_u64().expect("count") >= K, "{a}");
    }
    assert_eq!(insights["identified_records_refused"], 0);
    let text = insights.to_string();
    assert!(truth.keys().all(|vin| !text.contains(vin.as_str())));
    let out = consumer(&[&Reference::ProductInsights.output(&ns)]);
    for r in collect(&out, 1_000, Duration::from_secs(3), |_| true).await {
        assert!(r.key.is_none(), "aggregates carry no key");
        assert!(
            serde_json::from_slice::<serde_json::Value>(&r.payload).expect("json")["vehicles"]
                .as_u64()
                >= Some(K)
        );
    }
    gw.shutdown().await;
}
