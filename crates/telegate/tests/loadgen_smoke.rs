//! A short load run in the suite: correctness only (every frame accounted for, reports
//! written), never timing.

use std::time::Duration;
use telegate_loadgen::targets::{LoadArgs, run};
use telegate_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_comparison_accounts_for_every_frame_on_every_target() {
    let dir = tempfile::tempdir().expect("tmp");
    let json = dir.path().join("report.json");
    let html = dir.path().join("report.html");
    let reports = run(LoadArgs {
        target: "compare".into(),
        kafka_bootstrap: kafka(),
        load: telegate_loadgen::LoadConfig {
            vehicles: 5,
            rate: 5.0,
            mix: telegate_loadgen::Mix::default(),
            format: telegate_frame::PayloadFormat::Protobuf,
            qos: 1,
            ramp_up: Duration::from_millis(500),
            warm_up: Duration::from_secs(1),
            duration: Duration::from_secs(3),
        },
        report_json: Some(json.clone()),
        report_html: Some(html.clone()),
        external: None,
        quiet: true,
        producer: vec![("linger.ms".into(), "20".into())],
        exe: env!("CARGO_BIN_EXE_telegate").into(),
        broker_pid: None,
        pki: None,
    })
    .await
    .expect("load run (needs mosquitto: scripts/test installs it)");
    assert_eq!(reports.len(), 4);
    assert!(
        reports[0].target.ends_with("[linger.ms=20]"),
        "{}",
        reports[0].target
    );
    assert!(
        reports[3].target.ends_with("[linger.ms=20]"),
        "{}",
        reports[3].target
    );
    for r in &reports {
        assert!(
            r.published > 0 && r.delivered >= r.published,
            "{}: {r:?}",
            r.target
        );
        assert_eq!((r.lost, r.duplicates), (0, 0), "{}", r.target);
        assert!(r.latency.p50_us > 0);
    }
    assert!(
        reports[0].cpu_s.is_some() && reports[0].rss_bytes.is_some(),
        "gateway CPU and memory sampled"
    );
    for r in &reports {
        assert!(
            r.generator_cpu_s.is_some_and(|s| s > 0.0)
                && r.generator_cpu_us_per_frame.is_some_and(|us| us > 0.0),
            "{}: the generator's own CPU sampled: {r:?}",
            r.target
        );
    }
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("json report")).expect("json");
    assert_eq!(written.as_array().map(Vec::len), Some(4));
    assert!(written[0]["generator_cpu_us_per_frame"].is_f64());
    let page = std::fs::read_to_string(&html).expect("html report");
    assert!(page.contains("<svg") && page.contains("bare embedded rumqttd"));
    assert!(page.contains("The load generator itself"));
}

/// `--kafka-bootstrap mock`: each target gets a fresh mock cluster in a process of its own;
/// telegate runs without managing topics, and the observer makes the topic it reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mock_cluster_stands_in_for_kafka_for_telegate_and_the_direct_producer() {
    for target in ["telegate", "kafka"] {
        let reports = run(LoadArgs {
            target: target.into(),
            kafka_bootstrap: telegate_loadgen::targets::MOCK.into(),
            load: telegate_loadgen::LoadConfig {
                vehicles: 5,
                rate: 5.0,
                mix: telegate_loadgen::Mix::default(),
                format: telegate_frame::PayloadFormat::Json,
                qos: 1,
                ramp_up: Duration::from_millis(200),
                warm_up: Duration::from_millis(500),
                duration: Duration::from_secs(2),
            },
            report_json: None,
            report_html: None,
            external: None,
            quiet: true,
            producer: vec![],
            exe: env!("CARGO_BIN_EXE_telegate").into(),
            broker_pid: None,
            pki: None,
        })
        .await
        .expect("load run against the mock cluster");
        let [r] = &reports[..] else {
            panic!("one report: {reports:?}")
        };
        assert!(r.published > 0 && r.delivered >= r.published, "{r:?}");
        assert_eq!((r.lost, r.duplicates), (0, 0), "{}", r.target);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_held_and_measured() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = gateway_config(
        "reference",
        &format!("n{:08x}.", rand::random::<u32>()),
        dir.path(),
    );
    let gw = telegate_gateway::Gateway::start(&s, telegate_gateway::PackSource::Config)
        .await
        .expect("gateway");
    let sources = [
        "127.0.0.2".parse().expect("ip"),
        "127.0.0.3".parse().expect("ip"),
    ];
    let r = telegate_loadgen::connections::hold(&telegate_loadgen::connections::HoldConfig {
        target: s.mqtt.listen.expect("mqtt"),
        pid: std::process::id() as i32,
        connections: 300,
        sources: sources.to_vec(),
        open_file_limit: 0,
        in_flight: 256,
        tls: None,
        reconnect_rounds: 0,
    })
    .await
    .expect("connections");
    assert_eq!((r.held, r.failed), (300, 0));
    assert!(r.gateway_rss_after_bytes > 0);
    gw.shutdown().await;
}
