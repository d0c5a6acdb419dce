//! The load generator and the connection-scale tool over mutual TLS: correctness only (every
//! frame accounted for, every connection held), never timing. Neither needs a Kafka broker:
//! the load runs against the mock cluster, the connections against the edge alone.

use std::sync::Arc;
use std::time::Duration;
use telegate_frame::Vin;
use telegate_loadgen::connections::{HoldConfig, hold};
use telegate_loadgen::targets::{LoadArgs, MOCK, run};
use telegate_loadgen::tls::{FleetTls, Pki};
use telegate_mqtt::{Edge, EdgeConfig, Listener, Refusal};

/// `telegate serve` with its TLS listener only: the frames arrive only if every vehicle
/// presented its own certificate of the run's fleet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_telegate_target_over_mutual_tls_delivers_every_frame() {
    let reports = run(LoadArgs {
        target: "telegate".into(),
        kafka_bootstrap: MOCK.into(),
        load: telegate_loadgen::LoadConfig {
            vehicles: 5,
            rate: 5.0,
            mix: telegate_loadgen::Mix::default(),
            format: telegate_frame::PayloadFormat::Protobuf,
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
        pki: Some(Pki::Temporary),
    })
    .await
    .expect("load run over TLS against the mock cluster");
    let [r] = &reports[..] else {
        panic!("one report: {reports:?}")
    };
    assert!(r.target.contains("mutual TLS"), "{}", r.target);
    assert!(r.published > 0 && r.delivered >= r.published, "{r:?}");
    assert_eq!((r.lost, r.duplicates), (0, 0), "{}", r.target);
}

#[tokio::test]
async fn tls_is_for_the_telegate_target_only() {
    let e = run(LoadArgs {
        target: "compare".into(),
        kafka_bootstrap: MOCK.into(),
        load: telegate_loadgen::LoadConfig {
            vehicles: 1,
            rate: 1.0,
            mix: telegate_loadgen::Mix::default(),
            format: telegate_frame::PayloadFormat::Protobuf,
            qos: 1,
            ramp_up: Duration::ZERO,
            warm_up: Duration::ZERO,
            duration: Duration::from_secs(1),
        },
        report_json: None,
        report_html: None,
        external: None,
        quiet: true,
        producer: vec![],
        exe: env!("CARGO_BIN_EXE_telegate").into(),
        broker_pid: None,
        pki: Some(Pki::Temporary),
    })
    .await
    .expect_err("TLS with every target");
    assert!(e.to_string().contains("telegate target"), "{e}");
}

/// Idle connections over mutual TLS, each a vehicle of its own; then all of them again,
/// twice, resuming the sessions the edge gave them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tls_connections_are_held_measured_and_resumed() {
    let dir = tempfile::tempdir().expect("tmp");
    telegate_pki::init(dir.path(), &[]).expect("pki init");
    let n = 40;
    let tls = FleetTls::prepare(&Pki::Dir(dir.path().to_owned()), &telegate_loadgen::vins(n))
        .expect("certificates");
    assert_eq!(tls.issued, n);
    let cfg = EdgeConfig {
        tls_listen: Some("127.0.0.1:0".parse().expect("addr")),
        tls_cert: Some(dir.path().join(telegate_pki::SERVER_CERT)),
        tls_key: Some(dir.path().join(telegate_pki::SERVER_KEY)),
        client_ca: Some(dir.path().join(telegate_pki::CA_CERT)),
        ..EdgeConfig::default()
    };
    let (edge, _incoming) = Edge::start(&cfg, Arc::new(|_: &Vin| true))
        .await
        .expect("edge");
    let r = hold(&HoldConfig {
        target: edge.local_addr(Listener::Tls).expect("tls listener"),
        pid: std::process::id() as i32,
        connections: n,
        sources: vec!["127.0.0.2".parse().expect("ip")],
        open_file_limit: 0,
        in_flight: 256,
        tls: Some(Arc::new(tls)),
        reconnect_rounds: 2,
    })
    .await
    .expect("connections");
    assert_eq!((r.transport, r.held, r.failed), ("mqtt+tls", n, 0), "{r:?}");
    let summary = r.tls.as_ref().expect("TLS summary");
    assert_eq!(
        (summary.full_handshakes, summary.resumed_handshakes),
        (n, 0)
    );
    assert!(summary.protocol.is_some() && summary.cipher_suite.is_some());
    let again = r.reconnect.as_ref().expect("two more rounds");
    assert_eq!(
        (again.rounds, again.held, again.failed),
        (2, 2 * n, 0),
        "{r:?}"
    );
    assert_eq!(
        again.resumed_handshakes,
        2 * n,
        "every vehicle resumed its session, and the one it got then"
    );
    assert_eq!(edge.stats().refused(Refusal::Anonymous), 0);
    edge.shutdown().await;
}
