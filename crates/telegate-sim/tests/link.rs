//! A vehicle's link against telegate's own edge on loopback, MQTT 3.1.1 and 5, anonymous and
//! over TLS. The test plays the pipeline and decides each frame's acknowledgement: a failure,
//! a connection that ends with frames unacknowledged, an edge that restarts with no sessions.
//! Every frame must come back acknowledged, each exactly once. An anonymous vehicle never
//! resumes a session (the edge learns its VIN only from its first topic); a vehicle with a
//! certificate does, and then rumqttc writes its unacknowledged publishes again by itself.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use telegate_frame::{FrameKind, Vin, vehicle_topic};
use telegate_mqtt::{AckOutcome, Edge, EdgeConfig, Incoming, Listener};
use telegate_sim::tls::VehicleCertificates;
use telegate_sim::{DeliveryStats, Link, LinkConfig, MqttVersion, Update};
use tokio::sync::mpsc;

const VIN: &str = "WP0ZZZ99ZTS392124";

fn edge_config(v4: SocketAddr, v5: SocketAddr) -> EdgeConfig {
    EdgeConfig {
        listen: Some(v4),
        listen_v5: Some(v5),
        allow_anonymous: true,
        ..EdgeConfig::default()
    }
}

/// TLS only, vehicles identified by their certificates from `fleet`.
fn tls_edge_config(fleet: &Path, tls: SocketAddr) -> EdgeConfig {
    EdgeConfig {
        tls_listen: Some(tls),
        tls_cert: Some(fleet.join(telegate_pki::SERVER_CERT)),
        tls_key: Some(fleet.join(telegate_pki::SERVER_KEY)),
        client_ca: Some(fleet.join(telegate_pki::CA_CERT)),
        ..EdgeConfig::default()
    }
}

async fn start_edge(cfg: &EdgeConfig) -> (Edge, mpsc::Receiver<Incoming>) {
    Edge::start(cfg, Arc::new(|_: &Vin| true))
        .await
        .expect("edge starts")
}

fn link(
    edge: &Edge,
    version: MqttVersion,
    fleet: Option<&Path>,
    stats: Arc<DeliveryStats>,
) -> Link<u32> {
    let listener = match (fleet, version) {
        (Some(_), _) => Listener::Tls,
        (None, MqttVersion::V311) => Listener::PlainV4,
        (None, MqttVersion::V5) => Listener::PlainV5,
    };
    let addr = edge.local_addr(listener).expect("listener");
    let mut cfg = LinkConfig::new("127.0.0.1", addr.port(), "link-test");
    cfg.version = version;
    cfg.reconnect_after = Duration::from_millis(100);
    if let Some(dir) = fleet {
        let certs = VehicleCertificates::open(dir).expect("fleet CA");
        cfg.transport = Some(certs.transport(VIN).expect("the vehicle's certificate"));
    }
    Link::open(&cfg, stats)
}

/// The four ways a vehicle connects: MQTT 5 and 3.1.1, anonymous and with a certificate.
fn variants(fleet: &Path) -> [(MqttVersion, Option<&Path>); 4] {
    [
        (MqttVersion::V5, None),
        (MqttVersion::V311, None),
        (MqttVersion::V5, Some(fleet)),
        (MqttVersion::V311, Some(fleet)),
    ]
}

fn fleet() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tmp");
    telegate_pki::init(dir.path(), &[]).expect("pki init");
    dir
}

/// Plays the pipeline: each frame (its payload is its number) gets the outcome `decide`
/// gives for the how-many-th time it arrived.
fn pipeline(
    mut rx: mpsc::Receiver<Incoming>,
    decide: impl Fn(u32) -> Option<AckOutcome> + Send + 'static,
) -> tokio::task::JoinHandle<HashMap<u32, u32>> {
    tokio::spawn(async move {
        let mut seen: HashMap<u32, u32> = HashMap::new();
        while let Some(m) = rx.recv().await {
            let frame: u32 = std::str::from_utf8(&m.payload)
                .ok()
                .and_then(|s| s.parse().ok())
                .expect("a numbered frame");
            let n = seen.entry(frame).or_default();
            *n += 1;
            match (m.ack, decide(*n)) {
                (Some(ack), Some(outcome)) => ack.complete(outcome),
                // Never acknowledged: the ack is kept, so the frame stays pending.
                (Some(ack), None) => std::mem::forget(ack),
                (None, _) => {}
            }
        }
        seen
    })
}

/// Follows the link until every frame in `frames` is acknowledged; each must be, once.
async fn acknowledged(link: &mut Link<u32>, frames: &BTreeSet<u32>) {
    let mut acked = BTreeSet::new();
    while acked.len() < frames.len() {
        match tokio::time::timeout(Duration::from_secs(20), link.next()).await {
            Ok(Update::Acked(f)) => assert!(acked.insert(f), "frame {f} acknowledged twice"),
            other => panic!(
                "{} of {} acknowledged, then {other:?}",
                acked.len(),
                frames.len()
            ),
        }
    }
    assert_eq!(&acked, frames);
    assert_eq!(link.kept(), 0);
}

fn push(link: &mut Link<u32>, frames: impl IntoIterator<Item = u32>) -> BTreeSet<u32> {
    let topic = vehicle_topic(VIN, FrameKind::Status);
    frames
        .into_iter()
        .inspect(|&f| link.push(topic.clone(), f.to_string().into_bytes(), f))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_reason_or_a_closed_connection_means_the_frames_go_out_again() {
    let dir = fleet();
    for (version, tls) in variants(dir.path()) {
        let cfg = match tls {
            Some(dir) => tls_edge_config(dir, free()),
            None => edge_config(free(), free()),
        };
        let (edge, rx) = start_edge(&cfg).await;
        // Every frame fails the first time: MQTT 5 gets reason 0x83, 3.1.1 is disconnected.
        let seen = pipeline(rx, |n| {
            Some(if n == 1 {
                AckOutcome::Failed
            } else {
                AckOutcome::Accepted
            })
        });
        let stats = Arc::new(DeliveryStats::default());
        let mut link = link(&edge, version, tls, stats.clone());
        let frames = push(&mut link, 1..=50);
        acknowledged(&mut link, &frames).await;
        link.close().await;
        edge.shutdown().await;
        // The publishes' channel ends with the edge.
        drop(edge);
        let seen = seen.await.expect("pipeline");
        assert!(
            frames
                .iter()
                .all(|f| seen.get(f).copied().unwrap_or(0) >= 2),
            "{version:?}: every frame arrived again after it failed"
        );
        println!("{version:?}, TLS {}: {stats:?}", tls.is_some());
        assert_eq!(stats.published.load(Relaxed), 50);
        assert!(stats.resent.load(Relaxed) >= 50, "{version:?}: {stats:?}");
        assert_eq!(stats.outstanding.load(Relaxed), 0);
        match version {
            MqttVersion::V5 => assert!(stats.failure_codes.load(Relaxed) >= 50, "{stats:?}"),
            MqttVersion::V311 => assert!(stats.connects.load(Relaxed) > 1, "{stats:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_edge_restart_without_sessions_every_unacknowledged_frame_goes_out_again() {
    let dir = fleet();
    for (version, tls) in variants(dir.path()) {
        let cfg = match tls {
            Some(dir) => tls_edge_config(dir, free()),
            None => edge_config(free(), free()),
        };
        let (edge, rx) = start_edge(&cfg).await;
        // The first edge acknowledges nothing.
        let seen = pipeline(rx, |_| None);
        let stats = Arc::new(DeliveryStats::default());
        let mut link = link(&edge, version, tls, stats.clone());
        let frames = push(&mut link, 1..=30);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while stats.published.load(Relaxed) < 30 {
            assert!(tokio::time::Instant::now() < deadline, "{stats:?}");
            // Handing over happens while the link is followed.
            let _ = tokio::time::timeout(Duration::from_millis(50), link.next()).await;
        }
        edge.shutdown().await;
        seen.abort();

        // The same ports, no sessions: rumqttc drops what it had in flight; the link does not.
        let (edge, rx) = start_edge(&cfg).await;
        let seen = pipeline(rx, |_| Some(AckOutcome::Accepted));
        acknowledged(&mut link, &frames).await;
        assert!(stats.resent.load(Relaxed) >= 1, "{version:?}: {stats:?}");
        assert!(stats.connects.load(Relaxed) >= 2, "{version:?}: {stats:?}");
        link.close().await;
        edge.shutdown().await;
        drop(edge);
        let seen = seen.await.expect("pipeline");
        assert!(frames.iter().all(|f| seen.contains_key(f)));
    }
}

fn free() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}
