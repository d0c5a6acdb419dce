//! A simulated fleet over mutual TLS against telegate's edge on loopback. The edge takes
//! only vehicles with a certificate of the fleet CA, so every frame that arrives came over
//! TLS from the vehicle its certificate names.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use telegate_frame::Vin;
use telegate_mqtt::{AckOutcome, Edge, EdgeConfig, Listener, Refusal};
use telegate_sim::{Behaviour, Fleet, FleetConfig, FormatMix};

fn closed_edge(dir: &std::path::Path) -> EdgeConfig {
    EdgeConfig {
        tls_listen: Some("127.0.0.1:0".parse().expect("addr")),
        tls_cert: Some(dir.join(telegate_pki::SERVER_CERT)),
        tls_key: Some(dir.join(telegate_pki::SERVER_KEY)),
        client_ca: Some(dir.join(telegate_pki::CA_CERT)),
        ..EdgeConfig::default()
    }
}

fn busy_fleet(port: u16, pki: Option<std::path::PathBuf>) -> FleetConfig {
    FleetConfig {
        host: "127.0.0.1".into(),
        port,
        vehicles: 4,
        behaviour: Behaviour {
            location_every_ms: 100,
            park_ms: (1, 50),
            ..Behaviour::default()
        },
        tick: Duration::from_millis(50),
        format: FormatMix::Protobuf,
        pki,
        ..FleetConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_vehicle_publishes_over_tls_with_its_own_certificate() {
    let dir = tempfile::tempdir().expect("tmp");
    telegate_pki::init(dir.path(), &[]).expect("pki init");
    let (edge, mut rx) = Edge::start(&closed_edge(dir.path()), Arc::new(|_: &Vin| true))
        .await
        .expect("edge");
    let addr = edge.local_addr(Listener::Tls).expect("tls listener");

    let fleet = Fleet::try_start(busy_fleet(addr.port(), Some(dir.path().to_owned())))
        .expect("fleet with a PKI");
    let mut topics_by_vin: BTreeMap<String, usize> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while topics_by_vin.len() < 4 || topics_by_vin.values().any(|&n| n < 3) {
        let m = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("every vehicle publishes within 15 s")
            .expect("edge running");
        if let Some(ack) = m.ack {
            ack.complete(AckOutcome::Accepted);
        }
        let topic = String::from_utf8_lossy(&m.topic).into_owned();
        let vin = topic
            .strip_prefix("/tenants/")
            .and_then(|t| t.split('/').next())
            .expect("a vehicle topic")
            .to_owned();
        *topics_by_vin.entry(vin).or_default() += 1;
    }
    let stats = fleet.stats();
    let truth = fleet.stop().await;
    let vins: BTreeSet<String> = truth.into_iter().map(|(vin, _)| vin).collect();
    assert_eq!(
        vins,
        topics_by_vin.keys().cloned().collect(),
        "the frames came from the fleet's vehicles"
    );
    for vin in &vins {
        let files = telegate_pki::VehicleFiles::of(dir.path(), &Vin::parse(vin).expect("vin"));
        assert!(
            files.cert.is_file(),
            "each vehicle's certificate was issued"
        );
    }
    assert_eq!(stats.identity_errors.load(Relaxed), 0);
    // The edge took each vehicle's identity from its certificate: none was refused for
    // publishing outside its own topics.
    assert_eq!(edge.stats().refused(Refusal::PublishNotPermitted), 0);
    edge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_certificate_no_frame_gets_through_the_closed_edge() {
    let dir = tempfile::tempdir().expect("tmp");
    telegate_pki::init(dir.path(), &[]).expect("pki init");
    let (edge, mut rx) = Edge::start(&closed_edge(dir.path()), Arc::new(|_: &Vin| true))
        .await
        .expect("edge");
    let addr = edge.local_addr(Listener::Tls).expect("tls listener");
    // The same fleet without its PKI speaks plain MQTT to the TLS listener.
    let fleet = Fleet::try_start(busy_fleet(addr.port(), None)).expect("anonymous fleet");
    let got = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await;
    assert!(got.is_err(), "a frame arrived without TLS");
    assert!(
        edge.stats().refused(Refusal::HandshakeFailed) > 0,
        "the vehicles did try, and the edge refused them"
    );
    fleet.stop().await;
    edge.shutdown().await;
}

#[test]
fn a_directory_without_a_fleet_ca_is_refused_before_any_vehicle_starts() {
    let dir = tempfile::tempdir().expect("tmp");
    let e = Fleet::try_start(busy_fleet(1, Some(dir.path().to_owned())))
        .expect_err("no CA in the directory");
    assert!(e.to_string().contains("telegate pki init"), "{e}");
}
