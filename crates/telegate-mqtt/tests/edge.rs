//! The edge end to end with rumqttc (MQTT 3.1.1 and 5), raw sockets and certificates from
//! telegate-pki, on loopback. The test plays the pipeline: it completes each publish's ack.

use bytes::BytesMut;
use rumqttc::mqttbytes::v4;
use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS, TlsConfiguration, Transport,
};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use telegate_frame::Vin;
use telegate_mqtt::{
    AckOutcome, Delivery, Edge, EdgeConfig, Incoming, Listener, Refusal, VehicleGate,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

const A: &str = "WP0ZZZ99ZTS392124";
const B: &str = "KNAZZZ99ZTS392124";

fn vin(s: &str) -> Vin {
    Vin::parse(s).expect("valid VIN")
}

fn loopback() -> Option<SocketAddr> {
    Some("127.0.0.1:0".parse().expect("addr"))
}

fn anonymous() -> EdgeConfig {
    EdgeConfig {
        listen: loopback(),
        listen_v5: loopback(),
        allow_anonymous: true,
        ..EdgeConfig::default()
    }
}

/// A fleet directory with a CA, the server certificate and vehicles A and B.
fn fleet() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tmp");
    telegate_pki::init(dir.path(), &[]).expect("pki init");
    for v in [A, B] {
        telegate_pki::issue(dir.path(), &vin(v)).expect("issue");
    }
    dir
}

fn with_tls(dir: &Path) -> EdgeConfig {
    EdgeConfig {
        tls_listen: loopback(),
        tls_cert: Some(dir.join("server.crt")),
        tls_key: Some(dir.join("server.key")),
        client_ca: Some(dir.join("ca.crt")),
        client_crl: Some(dir.join("crl.pem")),
        crl_check_interval: Duration::from_millis(100),
        ..EdgeConfig::default()
    }
}

fn open_gate() -> VehicleGate {
    Arc::new(|_: &Vin| true)
}

async fn start(cfg: EdgeConfig, gate: VehicleGate) -> (Edge, mpsc::Receiver<Incoming>) {
    Edge::start(&cfg, gate).await.expect("edge starts")
}

/// Plays the pipeline: accepts every frame and passes it on without its ack.
/// Acknowledges every publish and passes on the vehicles' frames; the publishes the edge
/// refused (handed on only to have their rejection written) are acknowledged, not passed on.
fn accept_all(mut rx: mpsc::Receiver<Incoming>) -> mpsc::UnboundedReceiver<(String, Vec<u8>)> {
    let (tx, out) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if let Some(ack) = m.ack {
                ack.complete(AckOutcome::Accepted);
            }
            if m.denied.is_some() {
                continue;
            }
            let topic = String::from_utf8_lossy(&m.topic).into_owned();
            let _ = tx.send((topic, m.payload.to_vec()));
        }
    });
    out
}

fn v4_client(
    addr: SocketAddr,
    id: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> (AsyncClient, EventLoop) {
    let mut o = MqttOptions::new(id, "127.0.0.1", addr.port());
    o.set_keep_alive(Duration::from_secs(30));
    if let Some(tls) = tls {
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    }
    AsyncClient::new(o, 64)
}

/// Polls until `want` matches an incoming packet; panics on a connection error or after 10 s.
async fn until<T>(ev: &mut EventLoop, mut want: impl FnMut(&Packet) -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, ev.poll()).await {
            Ok(Ok(Event::Incoming(p))) => {
                if let Some(t) = want(&p) {
                    return t;
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("connection failed: {e}"),
            Err(_) => panic!("nothing matching within 10 s"),
        }
    }
}

/// Polls until the connection fails; panics if it is still up after 10 s.
async fn until_closed(ev: &mut EventLoop) -> rumqttc::ConnectionError {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, ev.poll()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return e,
            Err(_) => panic!("the connection was not closed within 10 s"),
        }
    }
}

fn status(v: &str) -> String {
    format!("/tenants/{v}/v1/status")
}

#[tokio::test]
async fn a_puback_waits_for_the_pipeline_and_frames_arrive_in_order() {
    let (edge, mut rx) = start(anonymous(), open_gate()).await;
    let addr = edge.local_addr(Listener::PlainV4).expect("v4");
    let (client, mut ev) = v4_client(addr, "car", None);
    client
        .publish(status(A), QoS::AtLeastOnce, false, vec![0u8])
        .await
        .expect("queued");
    let first = tokio::select! {
        m = rx.recv() => m.expect("a frame"),
        e = until(&mut ev, |p| matches!(p, Packet::PubAck(_)).then_some(())) => panic!("PUBACK before the pipeline: {e:?}"),
    };
    // The pipeline has not answered: no PUBACK may come.
    let early = tokio::time::timeout(
        Duration::from_millis(300),
        until(&mut ev, |p| matches!(p, Packet::PubAck(_)).then_some(())),
    )
    .await;
    assert!(
        early.is_err(),
        "PUBACK sent before the pipeline completed the frame"
    );
    first
        .ack
        .expect("QoS 1 has an ack")
        .complete(AckOutcome::Accepted);
    until(&mut ev, |p| matches!(p, Packet::PubAck(_)).then_some(())).await;

    let mut frames = accept_all(rx);
    let n = 300u16;
    // The client's request queue is shorter than that: publish while the loop is polled.
    tokio::spawn(async move {
        for i in 0..n {
            client
                .publish(status(A), QoS::AtLeastOnce, false, i.to_be_bytes().to_vec())
                .await
                .expect("queued");
        }
    });
    let mut acked = 0;
    while acked < n {
        until(&mut ev, |p| matches!(p, Packet::PubAck(_)).then_some(())).await;
        acked += 1;
    }
    for i in 0..n {
        let (topic, payload) = frames.recv().await.expect("frame");
        assert_eq!(topic, status(A));
        assert_eq!(payload, i.to_be_bytes(), "in publish order");
    }
    assert_eq!(edge.stats().received(), u64::from(n) + 1);
}

#[tokio::test]
async fn qos0_is_at_most_once_and_never_acknowledged() {
    let (edge, mut rx) = start(anonymous(), open_gate()).await;
    let addr = edge.local_addr(Listener::PlainV4).expect("v4");
    let (client, mut ev) = v4_client(addr, "car0", None);
    client
        .publish(status(A), QoS::AtMostOnce, false, vec![7u8])
        .await
        .expect("queued");
    client
        .publish(status(A), QoS::AtLeastOnce, false, vec![8u8])
        .await
        .expect("queued");
    let mut got = Vec::new();
    while got.len() < 2 {
        tokio::select! {
            m = rx.recv() => got.push(m.expect("frame")),
            r = ev.poll() => { r.expect("connected"); }
        }
    }
    assert!(got[0].ack.is_none(), "QoS 0 carries no ack");
    assert_eq!(&got[0].payload[..], &[7u8]);
    let qos1 = got.pop().and_then(|m| m.ack).expect("QoS 1 carries an ack");
    qos1.complete(AckOutcome::Accepted);
    // The one PUBACK is the QoS 1 frame's.
    let pkid = until(&mut ev, |p| match p {
        Packet::PubAck(a) => Some(a.pkid),
        _ => None,
    })
    .await;
    assert_eq!(pkid, 1, "rumqttc numbers its first QoS 1 publish 1");
}

#[tokio::test]
async fn pubacks_follow_arrival_order_and_failures_are_never_successes() {
    use rumqttc::v5::mqttbytes::QoS as Q5;
    use rumqttc::v5::mqttbytes::v5::{Packet as P5, PubAckReason};
    use rumqttc::v5::{AsyncClient as C5, Event as E5, MqttOptions as O5};
    let (edge, mut rx) = start(anonymous(), open_gate()).await;
    let addr = edge.local_addr(Listener::PlainV5).expect("v5");
    let (client, mut ev) = C5::new(O5::new("car5", "127.0.0.1", addr.port()), 16);
    for i in 0..3u8 {
        client
            .publish(status(A), Q5::AtLeastOnce, false, vec![i])
            .await
            .expect("queued");
    }
    let mut pending = Vec::new();
    while pending.len() < 3 {
        tokio::select! {
            m = rx.recv() => pending.push(m.expect("frame").ack.expect("ack")),
            r = ev.poll() => { r.expect("connected"); }
        }
    }
    // The pipeline finishes them backwards, and fails the middle one.
    let third = pending.pop().expect("3");
    let second = pending.pop().expect("2");
    let first = pending.pop().expect("1");
    third.complete(AckOutcome::Accepted);
    drop(second);
    first.complete(AckOutcome::Accepted);
    let mut acks = Vec::new();
    while acks.len() < 3 {
        match tokio::time::timeout(Duration::from_secs(10), ev.poll()).await {
            Ok(Ok(E5::Incoming(P5::PubAck(a)))) => acks.push((a.pkid, a.reason)),
            Ok(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    }
    let pkids: Vec<u16> = acks.iter().map(|a| a.0).collect();
    let mut sorted = pkids.clone();
    sorted.sort_unstable();
    assert_eq!(pkids, sorted, "PUBACKs in the order the publishes arrived");
    assert_eq!(acks[0].1, PubAckReason::Success);
    assert_ne!(
        acks[1].1,
        PubAckReason::Success,
        "a frame nobody took is not a success"
    );
    assert_eq!(acks[2].1, PubAckReason::Success);

    // MQTT 3.1.1 cannot say "failed" in a PUBACK: the vehicle is disconnected and resends.
    let addr = edge.local_addr(Listener::PlainV4).expect("v4");
    let (client, mut ev) = v4_client(addr, "car4", None);
    client
        .publish(status(A), QoS::AtLeastOnce, false, vec![1])
        .await
        .expect("queued");
    let m = tokio::select! {
        m = rx.recv() => m.expect("frame"),
        e = until_closed(&mut ev) => panic!("{e}"),
    };
    m.ack.expect("ack").complete(AckOutcome::Failed);
    until_closed(&mut ev).await;
}

#[tokio::test]
async fn an_anonymous_client_is_held_to_the_first_vehicle_it_names() {
    let (edge, rx) = start(anonymous(), open_gate()).await;
    let stats = edge.stats();
    let mut frames = accept_all(rx);
    let addr = edge.local_addr(Listener::PlainV4).expect("v4");
    let (client, mut ev) = v4_client(addr, "dev", None);
    // A wildcard names no vehicle: refused before the connection is bound.
    client
        .subscribe("/tenants/+/v1/+", QoS::AtLeastOnce)
        .await
        .expect("queued");
    let codes = until(&mut ev, |p| match p {
        Packet::SubAck(s) => Some(s.return_codes.clone()),
        _ => None,
    })
    .await;
    assert_eq!(codes, vec![v4::SubscribeReasonCode::Failure]);
    client
        .publish(status(A), QoS::AtLeastOnce, false, vec![1])
        .await
        .expect("queued");
    until(&mut ev, |p| matches!(p, Packet::PubAck(_)).then_some(())).await;
    // Refused, and acknowledged (the default deny action): MQTT 3.1.1 has no negative
    // PUBACK, and a client that is closed sends it again on every reconnect.
    client
        .publish(status(B), QoS::AtLeastOnce, false, vec![2])
        .await
        .expect("queued");
    until(&mut ev, |p| matches!(p, Packet::PubAck(_)).then_some(())).await;
    assert_eq!(frames.recv().await.expect("A's frame").0, status(A));
    assert!(
        frames.try_recv().is_err(),
        "B's frame reached the pipeline only as a refusal"
    );
    assert_eq!(stats.refused(Refusal::PublishNotPermitted), 1);
    assert_eq!(stats.refused(Refusal::SubscribeNotPermitted), 1);
}

#[tokio::test]
async fn with_certificates_a_vehicle_reads_and_writes_only_its_own_topics() {
    use rumqttc::v5::mqttbytes::QoS as Q5;
    use rumqttc::v5::mqttbytes::v5::{Packet as P5, PubAckReason, SubscribeReasonCode as S5};
    use rumqttc::v5::{AsyncClient as C5, Event as E5, MqttOptions as O5};
    let pki = fleet();
    let (edge, rx) = start(with_tls(pki.path()), open_gate()).await;
    let stats = edge.stats();
    let mut frames = accept_all(rx);
    let addr = edge.local_addr(Listener::Tls).expect("tls");
    assert!(
        edge.local_addr(Listener::PlainV4).is_none(),
        "no plain listener without the development setting"
    );

    let connect5 = |v: &str| {
        let mut o = O5::new(format!("c-{v}"), "127.0.0.1", addr.port());
        let tls = telegate_pki::client_config(pki.path(), &vin(v)).expect("client TLS");
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
        C5::new(o, 16)
    };
    let (a, mut a_ev) = connect5(A);
    let (b, mut b_ev) = connect5(B);
    a.subscribe("#", Q5::AtLeastOnce).await.expect("queued");
    b.subscribe(format!("/tenants/{A}/v1/request"), Q5::AtLeastOnce)
        .await
        .expect("queued");
    b.subscribe("/tenants/+/v1/status", Q5::AtLeastOnce)
        .await
        .expect("queued");
    let mut a_granted = None;
    while a_granted.is_none() {
        if let P5::SubAck(s) = next5(&mut a_ev).await {
            a_granted = Some(s.return_codes);
        }
    }
    assert_eq!(a_granted, Some(vec![S5::Success(Q5::AtLeastOnce)]));
    let mut b_codes = Vec::new();
    while b_codes.len() < 2 {
        if let P5::SubAck(s) = next5(&mut b_ev).await {
            b_codes.extend(s.return_codes);
        }
    }
    assert_eq!(b_codes, vec![S5::NotAuthorized, S5::NotAuthorized]);

    // A's own frame flows; B cannot publish as A.
    a.publish(status(A), Q5::AtLeastOnce, false, vec![1])
        .await
        .expect("queued");
    b.publish(status(A), Q5::AtLeastOnce, false, vec![2])
        .await
        .expect("queued");
    let mut a_reason = None;
    while a_reason.is_none() {
        if let P5::PubAck(p) = next5(&mut a_ev).await {
            a_reason = Some(p.reason);
        }
    }
    assert_eq!(a_reason, Some(PubAckReason::Success));
    let mut b_reason = None;
    while b_reason.is_none() {
        if let P5::PubAck(p) = next5(&mut b_ev).await {
            b_reason = Some(p.reason);
        }
    }
    assert_eq!(b_reason, Some(PubAckReason::NotAuthorized));
    let (topic, payload) = frames.try_recv().expect("A's frame, acknowledged");
    assert_eq!(
        (topic.as_str(), payload.as_slice()),
        (status(A).as_str(), &[1u8][..])
    );

    // The platform's request for A reaches A, and only A.
    let topic = telegate_mqtt::request_topic(&vin(A));
    assert_eq!(
        edge.send(&vin(A), topic.clone(), "req".into()),
        Delivery::Sent
    );
    loop {
        if let P5::Publish(p) = next5(&mut a_ev).await {
            assert_eq!(p.topic, topic.as_bytes());
            break;
        }
    }
    let nothing = tokio::time::timeout(Duration::from_millis(300), async {
        loop {
            if let Ok(E5::Incoming(P5::Publish(_))) = b_ev.poll().await {
                return;
            }
        }
    })
    .await;
    assert!(nothing.is_err(), "B received A's request");
    assert!(
        frames.try_recv().is_err(),
        "B's forged frame reached the pipeline only as a refusal"
    );
    assert_eq!(stats.refused(Refusal::PublishNotPermitted), 1);
    assert_eq!(stats.refused(Refusal::SubscribeNotPermitted), 2);
}

/// The next incoming MQTT 5 packet; panics on a connection error or after 10 s.
async fn next5(ev: &mut rumqttc::v5::EventLoop) -> rumqttc::v5::mqttbytes::v5::Packet {
    let next = async {
        loop {
            match ev.poll().await {
                Ok(rumqttc::v5::Event::Incoming(p)) => return p,
                Ok(_) => {}
                Err(e) => panic!("{e}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), next)
        .await
        .expect("a packet within 10 s")
}

#[tokio::test]
async fn no_certificate_no_connection() {
    let pki = fleet();
    let mut cfg = with_tls(pki.path());
    // Asked for, but not run: plain listeners take anonymous clients only.
    cfg.listen = loopback();
    let (edge, _rx) = start(cfg, open_gate()).await;
    assert!(edge.local_addr(Listener::PlainV4).is_none());
    let addr = edge.local_addr(Listener::Tls).expect("tls");
    let mut roots = rustls::RootCertStore::empty();
    for c in telegate_pki::load_certs(&pki.path().join("ca.crt")).expect("ca") {
        roots.add(c).expect("root");
    }
    let no_cert = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let (_c, mut ev) = v4_client(addr, "anon", Some(Arc::new(no_cert)));
    until_closed(&mut ev).await;
    assert_eq!(edge.stats().refused(Refusal::HandshakeFailed), 1);
}

#[tokio::test]
async fn one_live_connection_per_vehicle_and_its_session_resumes() {
    let pki = fleet();
    let (edge, rx) = start(with_tls(pki.path()), open_gate()).await;
    let _frames = accept_all(rx);
    let addr = edge.local_addr(Listener::Tls).expect("tls");
    let tls = telegate_pki::client_config(pki.path(), &vin(A)).expect("client TLS");
    let persistent = |id: &str| {
        let mut o = MqttOptions::new(id, "127.0.0.1", addr.port());
        o.set_clean_session(false);
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            tls.clone(),
        )));
        AsyncClient::new(o, 16)
    };
    let (first, mut first_ev) = persistent("first");
    first
        .subscribe(format!("/tenants/{A}/v1/request"), QoS::AtLeastOnce)
        .await
        .expect("queued");
    until(&mut first_ev, |p| {
        matches!(p, Packet::SubAck(_)).then_some(())
    })
    .await;

    // The same vehicle under another client id takes over: the first connection closes.
    let (_second, mut second_ev) = persistent("second");
    let present = until(&mut second_ev, |p| match p {
        Packet::ConnAck(c) => Some(c.session_present),
        _ => None,
    })
    .await;
    assert!(present, "the vehicle's session, not the client id's");
    until_closed(&mut first_ev).await;
    assert_eq!(edge.stats().refused(Refusal::SessionTakenOver), 1);
    drop(second_ev);

    // While it is away, a request waits in its session, and arrives when it is back.
    let topic = telegate_mqtt::request_topic(&vin(A));
    let mut delivery = Delivery::Sent;
    for _ in 0..100 {
        delivery = edge.send(&vin(A), topic.clone(), "req".into());
        if delivery == Delivery::Queued {
            break;
        }
        // The dropped connection is noticed on the next read.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(delivery, Delivery::Queued);
    let (_third, mut third_ev) = persistent("third");
    let got = until(&mut third_ev, |p| match p {
        Packet::Publish(p) => Some(p.topic.clone()),
        _ => None,
    })
    .await;
    assert_eq!(got, topic);
}

#[tokio::test]
async fn a_revoked_certificate_is_closed_and_refused_without_a_restart() {
    let pki = fleet();
    let (edge, rx) = start(with_tls(pki.path()), open_gate()).await;
    let _frames = accept_all(rx);
    let addr = edge.local_addr(Listener::Tls).expect("tls");
    let client = |v: &str| {
        let tls = telegate_pki::client_config(pki.path(), &vin(v)).expect("client TLS");
        v4_client(addr, &format!("c-{v}"), Some(tls))
    };
    let (_a, mut a_ev) = client(A);
    until(&mut a_ev, |p| matches!(p, Packet::ConnAck(_)).then_some(())).await;
    telegate_pki::revoke(pki.path(), &vin(A)).expect("revoke");
    until_closed(&mut a_ev).await;
    let (_a, mut a_ev) = client(A);
    until_closed(&mut a_ev).await;
    assert_eq!(edge.stats().refused(Refusal::CertificateRevoked), 2);
    let (_b, mut b_ev) = client(B);
    until(&mut b_ev, |p| matches!(p, Packet::ConnAck(_)).then_some(())).await;
}

#[tokio::test]
async fn a_stalled_handshake_does_not_keep_others_out_and_times_out() {
    let pki = fleet();
    let mut cfg = with_tls(pki.path());
    cfg.connect_timeout = Duration::from_secs(1);
    let (edge, _rx) = start(cfg, open_gate()).await;
    let addr = edge.local_addr(Listener::Tls).expect("tls");
    let mut stalled = Vec::new();
    for _ in 0..20 {
        stalled.push(TcpStream::connect(addr).await.expect("tcp"));
    }
    let tls = telegate_pki::client_config(pki.path(), &vin(A)).expect("client TLS");
    let (_a, mut a_ev) = v4_client(addr, "a", Some(tls));
    until(&mut a_ev, |p| matches!(p, Packet::ConnAck(_)).then_some(())).await;
    for mut s in stalled {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(10), s.read(&mut byte)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "the stalled socket is closed"
        );
    }
    assert_eq!(edge.stats().refused(Refusal::HandshakeTimeout), 20);
}

/// A raw MQTT 3.1.1 CONNECT.
fn connect_bytes(keep_alive: u16) -> BytesMut {
    let mut c = v4::Connect::new("raw");
    c.keep_alive = keep_alive;
    let mut buf = BytesMut::new();
    v4::Packet::Connect(c)
        .write(&mut buf, 1 << 20)
        .expect("encodes");
    buf
}

#[tokio::test]
async fn keep_alive_expiry_and_oversize_packets_close_the_connection() {
    let mut cfg = anonymous();
    cfg.max_packet_bytes = 1024;
    let (edge, rx) = start(cfg, open_gate()).await;
    let _frames = accept_all(rx);
    let addr = edge.local_addr(Listener::PlainV4).expect("v4");

    let mut silent = TcpStream::connect(addr).await.expect("tcp");
    silent.write_all(&connect_bytes(1)).await.expect("write");
    let mut buf = [0u8; 16];
    let n = silent.read(&mut buf).await.expect("connack");
    assert_eq!(&buf[..n], &[0x20, 2, 0, 0], "accepted");
    let closed = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "closed after 1.5 keep-alive periods"
    );
    assert_eq!(edge.stats().refused(Refusal::KeepAliveTimeout), 1);

    let (client, mut ev) = v4_client(addr, "big", None);
    client
        .publish(status(A), QoS::AtLeastOnce, false, vec![0u8; 4096])
        .await
        .expect("queued");
    until_closed(&mut ev).await;
    assert_eq!(edge.stats().refused(Refusal::PacketTooLarge), 1);
}

#[tokio::test]
async fn a_blocked_vehicle_is_closed_and_refused() {
    let pki = fleet();
    let blocked: Arc<Mutex<HashSet<Vin>>> = Arc::default();
    let b = blocked.clone();
    let gate: VehicleGate = Arc::new(move |v: &Vin| !b.lock().expect("lock").contains(v));
    let (edge, rx) = start(with_tls(pki.path()), gate).await;
    let _frames = accept_all(rx);
    let addr = edge.local_addr(Listener::Tls).expect("tls");
    let tls = telegate_pki::client_config(pki.path(), &vin(A)).expect("client TLS");
    let (_a, mut a_ev) = v4_client(addr, "a", Some(tls.clone()));
    until(&mut a_ev, |p| matches!(p, Packet::ConnAck(_)).then_some(())).await;
    blocked.lock().expect("lock").insert(vin(A));
    assert!(edge.close(&vin(A), Refusal::VehicleBlocked));
    until_closed(&mut a_ev).await;
    let (_a, mut a_ev) = v4_client(addr, "a", Some(tls));
    let e = until_closed(&mut a_ev).await;
    assert!(
        matches!(
            e,
            rumqttc::ConnectionError::ConnectionRefused(v4::ConnectReturnCode::NotAuthorized)
        ),
        "{e:?}"
    );
    assert_eq!(edge.stats().refused(Refusal::VehicleBlocked), 2);
}

#[tokio::test]
async fn a_connection_waiting_for_the_pipeline_still_answers_keep_alives() {
    let mut cfg = anonymous();
    cfg.channel_capacity = 1;
    let (edge, mut rx) = start(cfg, open_gate()).await;
    let addr = edge.local_addr(Listener::PlainV4).expect("v4");
    let mut raw = TcpStream::connect(addr).await.expect("tcp");
    raw.write_all(&connect_bytes(30)).await.expect("connect");
    let mut buf = [0u8; 64];
    let n = raw.read(&mut buf).await.expect("connack");
    assert_eq!(&buf[..n], &[0x20, 2, 0, 0]);
    // Nobody takes frames from the pipeline's channel: it holds one, the rest wait.
    let mut out = BytesMut::new();
    for pkid in 1..=3u16 {
        let mut p = v4::Publish::new(status(A), QoS::AtLeastOnce, vec![pkid as u8]);
        p.pkid = pkid;
        v4::Packet::Publish(p)
            .write(&mut out, 1 << 20)
            .expect("encodes");
    }
    v4::Packet::PingReq.write(&mut out, 16).expect("encodes");
    raw.write_all(&out).await.expect("publishes and a ping");
    let n = tokio::time::timeout(Duration::from_secs(5), raw.read(&mut buf))
        .await
        .expect("an answer while the pipeline is full")
        .expect("read");
    assert_eq!(&buf[..n], &[0xD0, 0], "PINGRESP, and no PUBACK yet");
    // The pipeline takes them now: three PUBACKs, in order.
    for _ in 0..3 {
        let m = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("in time")
            .expect("frame");
        m.ack.expect("QoS 1").complete(AckOutcome::Accepted);
    }
    let mut acks = Vec::new();
    while acks.len() < 12 {
        let n = tokio::time::timeout(Duration::from_secs(5), raw.read(&mut buf))
            .await
            .expect("PUBACKs")
            .expect("read");
        acks.extend_from_slice(&buf[..n]);
    }
    assert_eq!(acks, [0x40, 2, 0, 1, 0x40, 2, 0, 2, 0x40, 2, 0, 3]);
}

/// A vehicle that publishes as fast as it can is read at its publish rate, its burst aside:
/// a publish that waited for the rate is charged like any other (it once passed free, which
/// gave a flooding connection twice its rate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_vehicle_gets_its_publish_rate_and_no_more() {
    let (rate, burst) = (20u32, 5u32);
    let cfg = EdgeConfig {
        publish_rate: rate,
        publish_burst: burst,
        ..anonymous()
    };
    let (edge, rx) = start(cfg, open_gate()).await;
    let mut frames = accept_all(rx);
    let addr = edge.local_addr(Listener::PlainV4).expect("v4");
    let (client, mut ev) = v4_client(addr, "flood", None);
    tokio::spawn(async move { while ev.poll().await.is_ok() {} });
    tokio::spawn(async move {
        loop {
            if client
                .publish(status(A), QoS::AtMostOnce, false, vec![1u8])
                .await
                .is_err()
            {
                return;
            }
        }
    });
    frames.recv().await.expect("a first frame");
    let window = Duration::from_secs(3);
    let deadline = tokio::time::Instant::now() + window;
    let mut taken = 1u32;
    while tokio::time::timeout_at(deadline, frames.recv())
        .await
        .is_ok()
    {
        taken += 1;
    }
    let most = burst + rate * 3 + rate / 2;
    assert!(
        taken <= most,
        "{taken} frames in {window:?} at {rate}/s (burst {burst}): at most {most}"
    );
    assert!(
        taken >= rate * 2,
        "{taken} frames: the rate itself was not given"
    );
}

/// A vehicle throttled for its publish rate with many publishes already read is still closed
/// at once when it is blocked: the wait for the rate does not hold up the close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_vehicle_is_closed_at_once_when_blocked() {
    let cfg = EdgeConfig {
        publish_rate: 2,
        publish_burst: 1,
        ..anonymous()
    };
    let (edge, rx) = start(cfg, open_gate()).await;
    let _frames = accept_all(rx);
    let addr = edge.local_addr(Listener::PlainV4).expect("v4");
    let mut raw = TcpStream::connect(addr).await.expect("tcp");
    raw.write_all(&connect_bytes(30)).await.expect("connect");
    let mut buf = [0u8; 64];
    let n = raw.read(&mut buf).await.expect("connack");
    assert_eq!(&buf[..n], &[0x20, 2, 0, 0], "accepted");
    // A large publish first, so that the edge reads in large pieces, then many small ones.
    let mut publishes = BytesMut::new();
    v4::Packet::Publish(v4::Publish::new(
        status(A),
        QoS::AtMostOnce,
        vec![1u8; 100_000],
    ))
    .write(&mut publishes, 1 << 20)
    .expect("encodes");
    for _ in 0..2_000 {
        v4::Packet::Publish(v4::Publish::new(status(A), QoS::AtMostOnce, vec![1u8]))
            .write(&mut publishes, 1 << 20)
            .expect("encodes");
    }
    raw.write_all(&publishes).await.expect("publishes");
    // Blocked once the edge has taken the first and waits for the rate to take the next.
    tokio::time::timeout(Duration::from_secs(5), async {
        while edge.stats().received() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the edge takes the first publish");
    assert!(edge.close(&vin(A), Refusal::VehicleBlocked));
    let closed = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match raw.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "still open 2 s after it was blocked");
    assert_eq!(edge.stats().refused(Refusal::VehicleBlocked), 1);
}
