//! The connection's protocol driven packet by packet, without a socket or a clock: every
//! answer is read back from the bytes the machine encoded.

use super::*;
use crate::budget::BufferBudget;
use crate::config::EdgeConfig;
use crate::edge::EdgeStats;
use crate::handshakes::Handshakes;
use crate::sessions::{Delivery, Presence, Registry};
use crate::tls::Identity;
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;
use std::sync::Mutex;
use tokio::sync::mpsc;

const A: &str = "WP0ZZZ99ZTS392124";
const B: &str = "KNAZZZ99ZTS392124";

fn vin(s: &str) -> Vin {
    Vin::parse(s).expect("valid VIN")
}

fn request(v: &str) -> String {
    format!("/tenants/{v}/v1/request")
}

fn status(v: &str) -> String {
    format!("/tenants/{v}/v1/status")
}

/// A packet the machine wrote, in terms both versions share.
#[derive(Debug, PartialEq, Eq)]
enum Out {
    /// Return code (rumqttc's name for it) and whether a session was present.
    ConnAck(String, bool),
    /// Packet id and reason (3.1.1 has only success).
    PubAck(u16, String),
    SubAck(u16, Vec<Option<u8>>),
    /// Packet id and, in MQTT 5, whether each subscription existed.
    UnsubAck(u16, Vec<bool>),
    Publish {
        topic: String,
        qos: u8,
        pkid: u16,
        dup: bool,
    },
    PingResp,
}

fn ok(pkid: u16) -> Out {
    Out::PubAck(pkid, "Success".into())
}

fn connack(code: &str, present: bool) -> Out {
    Out::ConnAck(code.into(), present)
}

fn qos4(q: rumqttc::mqttbytes::QoS) -> u8 {
    q as u8
}

fn qos5(q: rumqttc::v5::mqttbytes::QoS) -> u8 {
    q as u8
}

fn from_v4(p: v4::Packet) -> Out {
    match p {
        v4::Packet::ConnAck(c) => Out::ConnAck(format!("{:?}", c.code), c.session_present),
        v4::Packet::PubAck(a) => ok(a.pkid),
        v4::Packet::SubAck(s) => Out::SubAck(
            s.pkid,
            s.return_codes
                .into_iter()
                .map(|c| match c {
                    v4::SubscribeReasonCode::Success(q) => Some(qos4(q)),
                    v4::SubscribeReasonCode::Failure => None,
                })
                .collect(),
        ),
        v4::Packet::UnsubAck(u) => Out::UnsubAck(u.pkid, Vec::new()),
        v4::Packet::Publish(p) => Out::Publish {
            topic: p.topic,
            qos: qos4(p.qos),
            pkid: p.pkid,
            dup: p.dup,
        },
        v4::Packet::PingResp => Out::PingResp,
        other => panic!("a server does not send {other:?}"),
    }
}

fn from_v5(p: v5::Packet) -> Out {
    match p {
        v5::Packet::ConnAck(c) => Out::ConnAck(format!("{:?}", c.code), c.session_present),
        v5::Packet::PubAck(a) => Out::PubAck(a.pkid, format!("{:?}", a.reason)),
        v5::Packet::SubAck(s) => Out::SubAck(
            s.pkid,
            s.return_codes
                .into_iter()
                .map(|c| match c {
                    v5::SubscribeReasonCode::Success(q) => Some(qos5(q)),
                    _ => None,
                })
                .collect(),
        ),
        v5::Packet::UnsubAck(u) => Out::UnsubAck(
            u.pkid,
            u.reasons
                .iter()
                .map(|r| *r == v5::UnsubAckReason::Success)
                .collect(),
        ),
        v5::Packet::Publish(p) => Out::Publish {
            topic: String::from_utf8(p.topic.to_vec()).expect("UTF-8 topic"),
            qos: qos5(p.qos),
            pkid: p.pkid,
            dup: p.dup,
        },
        v5::Packet::PingResp(_) => Out::PingResp,
        other => panic!("a server does not send {other:?}"),
    }
}

/// The edge's shared state, with a gate the test can close.
struct Edge {
    ctx: Arc<Shared>,
    blocked: Arc<Mutex<Vec<Vin>>>,
    t0: Instant,
}

fn edge(cfg: EdgeConfig) -> Edge {
    let blocked: Arc<Mutex<Vec<Vin>>> = Arc::default();
    let gate = {
        let blocked = blocked.clone();
        Arc::new(move |v: &Vin| !blocked.lock().expect("gate").contains(v))
    };
    let ctx = Arc::new(Shared {
        // The machine hands nothing to the channel and never waits for the stop: the
        // driver does.
        tx: mpsc::channel(1).0,
        stop: tokio_util::sync::CancellationToken::new(),
        tasks: tokio_util::task::TaskTracker::new(),
        registry: Registry::default(),
        gate,
        tls: None,
        stats: Arc::new(EdgeStats::new()),
        handshakes: Arc::new(Handshakes::new(16, 16)),
        buffers: BufferBudget::new(cfg.max_buffered_bytes),
        cfg,
    });
    Edge {
        ctx,
        blocked,
        t0: Instant::now(),
    }
}

fn hello(version: Version, clean_start: bool) -> Hello {
    Hello {
        version,
        clean_start,
        keep_alive: 30,
        session_expiry: (!clean_start).then_some(3_600),
        receive_maximum: None,
    }
}

/// One connection's machine, what it wrote, and the time the test says it is.
struct Client {
    m: Machine,
    out: BytesMut,
    now: Instant,
}

impl Edge {
    fn connect(&self, listener: Listener, peer: Peer, hello: Hello) -> (Client, Result<(), End>) {
        let signal = Arc::new(Signal::default());
        let mut c = Client {
            m: Machine::new(self.ctx.clone(), signal, hello, self.t0),
            out: BytesMut::new(),
            now: self.t0,
        };
        let opened = c.m.open(listener, peer, Ok(()), &mut c.out);
        (c, opened)
    }

    /// A vehicle with a certificate for `v`, connected.
    fn vehicle(&self, v: &str, hello: Hello) -> Client {
        let (mut c, opened) = self.connect(Listener::Tls, certified(v), hello);
        assert_eq!(opened, Ok(()));
        assert_eq!(c.take(), [connack("Success", false)]);
        c
    }

    /// A client without a certificate on the plain listener of its version, connected.
    fn anonymous(&self, version: Version) -> Client {
        let listener = match version {
            Version::V4 => Listener::PlainV4,
            Version::V5 => Listener::PlainV5,
        };
        let (mut c, opened) = self.connect(listener, Peer::Anonymous, hello(version, true));
        assert_eq!(opened, Ok(()));
        assert_eq!(c.take(), [connack("Success", false)]);
        c
    }

    fn refused(&self, why: Refusal) -> u64 {
        self.ctx.stats.refused(why)
    }

    fn presence(&self, v: &str) -> Presence {
        self.ctx.registry.presence(&vin(v))
    }

    fn send_request(&self, v: &str) -> Delivery {
        self.ctx
            .registry
            .send(&vin(v), request(v), Bytes::from_static(b"{}"), 16)
    }
}

fn certified(v: &str) -> Peer {
    Peer::Vehicle(Identity {
        vin: vin(v),
        serial: vec![1],
        not_after: i64::MAX,
        verified: None,
    })
}

impl Client {
    fn take(&mut self) -> Vec<Out> {
        let mut packets = Vec::new();
        while !self.out.is_empty() {
            packets.push(match self.m.version() {
                Version::V4 => from_v4(v4::Packet::read(&mut self.out, usize::MAX).expect("v4")),
                Version::V5 => from_v5(v5::Packet::read(&mut self.out, None).expect("v5")),
            });
        }
        packets
    }

    fn send(&mut self, p: Inbound) -> Result<Step, End> {
        self.m.packet(self.now, p, &mut self.out)
    }

    fn publish(&mut self, qos: u8, pkid: u16, topic: &str) -> Result<Step, End> {
        self.send(Inbound::Publish {
            qos,
            pkid,
            dup: false,
            retain: false,
            topic: Bytes::copy_from_slice(topic.as_bytes()),
            payload: Bytes::from_static(b"frame"),
            traceparent: None,
        })
    }

    fn subscribe(&mut self, pkid: u16, filters: &[(&str, u8)]) -> Result<Step, End> {
        let filters = filters.iter().map(|(f, q)| ((*f).to_owned(), *q)).collect();
        self.send(Inbound::Subscribe { pkid, filters })
    }

    fn signalled(&mut self) -> Result<(), End> {
        self.m.signalled(&mut self.out)
    }

    /// The publishes waiting for the pipeline, taken as the driver takes them.
    fn handed(&mut self) -> Vec<Incoming> {
        std::iter::from_fn(|| self.m.next_publish()).collect()
    }
}

fn done(step: Result<Step, End>) {
    match step {
        Ok(Step::Done) => {}
        other => panic!("expected the packet handled, got {other:?}"),
    }
}

#[test]
fn every_connect_refusal_is_answered_in_the_connack_and_counted() {
    let v5 = |clean| hello(Version::V5, clean);
    let v4 = |clean| hello(Version::V4, clean);
    type Case = (
        Listener,
        Peer,
        Hello,
        Result<(), Refusal>,
        &'static str,
        Refusal,
    );
    let cases: Vec<Case> = vec![
        (
            Listener::PlainV4,
            Peer::Anonymous,
            v5(true),
            Ok(()),
            "UnsupportedProtocolVersion",
            Refusal::ProtocolVersion,
        ),
        (
            Listener::PlainV5,
            Peer::Anonymous,
            v4(true),
            Ok(()),
            "RefusedProtocolVersion",
            Refusal::ProtocolVersion,
        ),
        (
            Listener::Tls,
            Peer::NoVin,
            v4(true),
            Ok(()),
            "NotAuthorized",
            Refusal::CertificateWithoutVin,
        ),
        (
            Listener::Tls,
            Peer::Anonymous,
            v5(true),
            Ok(()),
            "NotAuthorized",
            Refusal::Anonymous,
        ),
        (
            Listener::Tls,
            certified(A),
            v4(true),
            Err(Refusal::CertificateRevoked),
            "NotAuthorized",
            Refusal::CertificateRevoked,
        ),
        (
            Listener::Tls,
            certified(A),
            v5(true),
            Err(Refusal::CertificateExpired),
            "NotAuthorized",
            Refusal::CertificateExpired,
        ),
    ];
    for (listener, peer, hello, certificate, code, why) in cases {
        let e = edge(EdgeConfig::default());
        let version = hello.version;
        let mut c = Client {
            m: Machine::new(e.ctx.clone(), Arc::default(), hello, e.t0),
            out: BytesMut::new(),
            now: e.t0,
        };
        let opened = c.m.open(listener, peer, certificate, &mut c.out);
        assert_eq!(
            opened,
            Err(End::Closed),
            "{why:?}: no DISCONNECT after the CONNACK"
        );
        assert_eq!(c.take(), [connack(code, false)], "{why:?} in {version:?}");
        assert_eq!(e.refused(why), 1, "{why:?}");
        assert_eq!(e.presence(A), Presence::Absent, "{why:?}: nothing bound");
    }

    // The connection limit counts authenticated connections; a blocked vehicle is refused.
    let e = edge(EdgeConfig {
        max_connections: 1,
        ..EdgeConfig::default()
    });
    e.ctx.stats.authenticated(1);
    let (mut c, opened) = e.connect(Listener::Tls, certified(A), hello(Version::V5, true));
    assert_eq!(opened, Err(End::Closed));
    assert_eq!(c.take(), [connack("ServerBusy", false)]);
    assert_eq!(e.refused(Refusal::TooManyConnections), 1);
    e.ctx.stats.authenticated(-1);
    e.blocked.lock().expect("gate").push(vin(A));
    let (mut c, opened) = e.connect(Listener::Tls, certified(A), hello(Version::V4, true));
    assert_eq!(opened, Err(End::Closed));
    assert_eq!(c.take(), [connack("NotAuthorized", false)]);
    assert_eq!(e.refused(Refusal::VehicleBlocked), 1);
    assert_eq!(e.presence(A), Presence::Absent);
}

#[test]
fn mqtt_5_is_told_the_limits_in_the_connack() {
    let e = edge(EdgeConfig {
        max_keep_alive: Duration::from_secs(60),
        session_expiry: Duration::from_secs(600),
        max_inflight: 7,
        ..EdgeConfig::default()
    });
    let mut asked = hello(Version::V5, false);
    asked.keep_alive = 0;
    asked.session_expiry = Some(u32::MAX);
    let (mut c, opened) = e.connect(Listener::Tls, certified(A), asked);
    assert_eq!(opened, Ok(()));
    let v5::Packet::ConnAck(ack) = v5::Packet::read(&mut c.out, None).expect("CONNACK") else {
        panic!("not a CONNACK");
    };
    let p = ack.properties.expect("properties");
    assert_eq!(
        p.server_keep_alive,
        Some(60),
        "no keep-alive gets the edge's longest"
    );
    assert_eq!(p.session_expiry_interval, Some(600), "capped, and said so");
    assert_eq!(p.receive_max, Some(7));
    assert_eq!((p.max_qos, p.retain_available), (Some(1), Some(0)));
    // 1.5 keep-alive intervals of silence end it.
    assert_eq!(
        c.m.silence(e.t0 + Duration::from_secs(89)),
        Ok(e.t0 + Duration::from_secs(90))
    );
}

#[test]
fn keep_alive_counts_from_the_last_whole_packet() {
    let e = edge(EdgeConfig::default());
    let mut c = e.vehicle(A, hello(Version::V4, true));
    let s = Duration::from_secs;
    // Asked 30 s: silence runs out after 45 s.
    assert_eq!(c.m.keep_alive_from(e.t0), e.t0 + s(45));
    assert_eq!(c.m.silence(e.t0 + s(44)), Ok(e.t0 + s(45)));
    c.now = e.t0 + s(40);
    done(c.send(Inbound::PingReq));
    assert_eq!(c.take(), [Out::PingResp]);
    assert_eq!(c.m.silence(e.t0 + s(45)), Ok(e.t0 + s(85)), "heard at 40 s");
    assert_eq!(
        c.m.silence(e.t0 + s(85)),
        Err(End::Refused(Refusal::KeepAliveTimeout))
    );
    // While the edge does not read, the silence is not the client's.
    assert_eq!(c.m.keep_alive_from(e.t0 + s(100)), e.t0 + s(145));
    assert!(c.m.silence(e.t0 + s(120)).is_ok());
}

#[test]
fn pubacks_go_out_in_arrival_order_whatever_order_the_pipeline_completes_in() {
    let e = edge(EdgeConfig::default());
    let mut c = e.vehicle(A, hello(Version::V4, true));
    done(c.publish(1, 10, &status(A)));
    done(c.publish(0, 0, &status(A)));
    done(c.publish(1, 11, &status(A)));
    done(c.publish(1, 12, &status(A)));
    let mut handed = c.handed();
    assert_eq!(handed.len(), 4, "QoS 0 goes to the pipeline too");
    assert!(handed[1].ack.is_none(), "and is never acknowledged");
    assert_eq!(e.ctx.stats.received(), 4);
    let mut acks: Vec<Ack> = handed.iter_mut().filter_map(|m| m.ack.take()).collect();
    let third = acks.pop().expect("third");
    let second = acks.pop().expect("second");
    let first = acks.pop().expect("first");

    third.complete(AckOutcome::Accepted);
    assert_eq!(c.signalled(), Ok(()));
    assert_eq!(c.take(), [], "the first two wait");
    first.complete(AckOutcome::Accepted);
    assert_eq!(c.signalled(), Ok(()));
    assert_eq!(c.take(), [ok(10)]);
    second.complete(AckOutcome::Accepted);
    assert_eq!(c.signalled(), Ok(()));
    assert_eq!(c.take(), [ok(11), ok(12)]);
}

#[test]
fn a_frame_the_pipeline_could_not_take_closes_3_1_1_and_is_refused_in_5() {
    let e = edge(EdgeConfig::default());
    let mut c = e.vehicle(A, hello(Version::V4, true));
    done(c.publish(1, 1, &status(A)));
    // An acknowledgement dropped without an outcome is a failure.
    drop(c.handed());
    assert_eq!(
        c.signalled(),
        Err(End::Closed),
        "the vehicle sends it again"
    );
    assert_eq!(c.take(), []);

    let mut c = e.vehicle(B, hello(Version::V5, true));
    done(c.publish(1, 1, &status(B)));
    done(c.publish(1, 2, &status(B)));
    let mut handed = c.handed();
    let second = handed[1].ack.take().expect("QoS 1");
    let first = handed[0].ack.take().expect("QoS 1");
    second.complete(AckOutcome::Accepted);
    first.complete(AckOutcome::Failed);
    assert_eq!(c.signalled(), Ok(()));
    assert_eq!(
        c.take(),
        [Out::PubAck(1, "ImplementationSpecificError".into()), ok(2)]
    );
}

#[test]
fn a_publish_outside_the_vehicles_prefix_is_acknowledged_and_handed_on_as_a_rejection() {
    let e = edge(EdgeConfig::default());
    let mut c = e.vehicle(A, hello(Version::V5, true));
    done(c.publish(1, 1, &status(A)));
    done(c.publish(1, 2, &status(B)));
    done(c.publish(0, 0, &status(B)));
    assert_eq!(c.take(), [], "nothing is acknowledged before Kafka has it");
    let mut handed = c.handed();
    let denied: Vec<_> = handed.iter().map(|m| m.denied).collect();
    let by_a = Some(Denied { by: Some(vin(A)) });
    assert_eq!(
        denied,
        [None, by_a, by_a],
        "B's are marked refused, with who sent them"
    );
    for m in &mut handed {
        if let Some(ack) = m.ack.take() {
            ack.complete(AckOutcome::Accepted);
        }
    }
    assert_eq!(c.signalled(), Ok(()));
    assert_eq!(c.take(), [ok(1), Out::PubAck(2, "NotAuthorized".into())]);
    assert_eq!(e.refused(Refusal::PublishNotPermitted), 2);

    // MQTT 3.1.1 has no negative PUBACK: a plain one, so that the client does not send it
    // again on every reconnect; the connection stays open.
    let mut c = e.vehicle(B, hello(Version::V4, true));
    done(c.publish(1, 7, &status(A)));
    let mut handed = c.handed();
    assert_eq!(handed[0].denied, Some(Denied { by: Some(vin(B)) }));
    handed[0]
        .ack
        .take()
        .expect("QoS 1")
        .complete(AckOutcome::Accepted);
    assert_eq!(c.signalled(), Ok(()));
    assert_eq!(c.take(), [ok(7)]);
    assert_eq!(e.refused(Refusal::PublishNotPermitted), 3);
}

#[test]
fn with_the_disconnect_deny_action_a_refused_publish_closes_the_connection() {
    let e = edge(EdgeConfig {
        deny_action: DenyAction::Disconnect,
        ..EdgeConfig::default()
    });
    for version in [Version::V4, Version::V5] {
        let mut c = e.vehicle(A, hello(version, true));
        let end = c.publish(1, 1, &status(B)).expect_err("closed");
        assert_eq!(end, End::Refused(Refusal::PublishNotPermitted));
        assert!(c.handed().is_empty());
        c.m.close(&end, &mut c.out);
        if version == Version::V5 {
            // DISCONNECT "not authorized" (0x87).
            assert_eq!(&c.out[..], [0xE0, 0x02, 0x87, 0x00]);
        }
    }
    assert_eq!(e.refused(Refusal::PublishNotPermitted), 2);
}

#[test]
fn packets_the_edge_does_not_serve_close_the_connection() {
    let e = edge(EdgeConfig::default());
    let retained = || Inbound::Publish {
        qos: 1,
        pkid: 1,
        dup: false,
        retain: true,
        topic: Bytes::from(status(A)),
        payload: Bytes::new(),
        traceparent: None,
    };
    let mut c = e.vehicle(A, hello(Version::V5, true));
    assert_eq!(
        c.send(retained()).err(),
        Some(End::Refused(Refusal::RetainNotSupported))
    );
    let mut c = e.vehicle(A, hello(Version::V4, true));
    done(c.send(retained()));
    assert_eq!(
        c.handed().len(),
        1,
        "3.1.1: the flag is ignored, nothing is retained"
    );
    assert_eq!(
        c.publish(2, 2, &status(A)).err(),
        Some(End::Refused(Refusal::QosNotSupported))
    );
    assert_eq!(
        c.send(Inbound::Unexpected).err(),
        Some(End::Refused(Refusal::ProtocolError))
    );
    assert_eq!(c.send(Inbound::Disconnect).err(), Some(End::Closed));
}

#[test]
fn past_the_receive_maximum_a_client_is_not_read_until_pubacks_make_room() {
    let cfg = EdgeConfig {
        max_inflight: 2,
        ..EdgeConfig::default()
    };
    let e = edge(cfg);
    // MQTT 5 was told the receive maximum, 3.1.1 could not be: some libraries of either
    // send beyond it, and both are slowed down, not disconnected.
    for (v, version) in [(A, Version::V5), (B, Version::V4)] {
        let mut c = e.vehicle(v, hello(version, true));
        for pkid in 1..=3 {
            assert!(c.m.may_read(), "{version:?}: within the window it is read");
            done(c.publish(1, pkid, &status(v)));
        }
        assert!(!c.m.may_read(), "{version:?}: past it, it is not");
        let mut handed = c.handed();
        assert_eq!(handed.len(), 3, "nothing read is refused");
        handed[0]
            .ack
            .take()
            .expect("QoS 1")
            .complete(AckOutcome::Accepted);
        assert_eq!(c.signalled(), Ok(()));
        assert_eq!(c.take(), [ok(1)]);
        assert!(c.m.may_read());
    }
    assert_eq!(e.refused(Refusal::ProtocolError), 0);
}

#[test]
fn a_closing_connection_acknowledges_what_kafka_holds_first() {
    let e = edge(EdgeConfig::default());
    let mut c = e.vehicle(A, hello(Version::V4, true));
    for pkid in 1..=3 {
        done(c.publish(1, pkid, &status(A)));
    }
    let mut handed = c.handed();
    // A fourth is read but not handed to the pipeline when the connection closes.
    done(c.publish(1, 4, &status(A)));
    let mut acks: Vec<Ack> = handed.iter_mut().filter_map(|m| m.ack.take()).collect();
    let third = acks.pop().expect("third");
    let second = acks.pop().expect("second");
    acks.pop().expect("first").complete(AckOutcome::Accepted);
    third.complete(AckOutcome::Accepted);
    c.m.closing();
    assert!(
        !c.m.settled(&mut c.out),
        "the second is still in the pipeline"
    );
    assert_eq!(c.take(), [ok(1)]);
    second.complete(AckOutcome::Accepted);
    assert!(c.m.settled(&mut c.out));
    assert_eq!(
        c.take(),
        [ok(2), ok(3)],
        "the fourth, never handed on, stays unacknowledged: the client sends it again"
    );

    // A failure stops the acknowledgements: what follows it is sent again anyway.
    let mut c = e.vehicle(B, hello(Version::V5, true));
    done(c.publish(1, 1, &status(B)));
    done(c.publish(1, 2, &status(B)));
    let mut handed = c.handed();
    let second = handed[1].ack.take().expect("QoS 1");
    handed[0]
        .ack
        .take()
        .expect("QoS 1")
        .complete(AckOutcome::Failed);
    second.complete(AckOutcome::Accepted);
    c.m.closing();
    assert!(c.m.settled(&mut c.out));
    assert_eq!(c.take(), []);
}

#[test]
fn publishes_the_pipeline_has_no_room_for_wait_in_order_and_stop_the_reading() {
    let e = edge(EdgeConfig {
        max_inflight: 2,
        ..EdgeConfig::default()
    });
    let mut c = e.vehicle(A, hello(Version::V5, true));
    for _ in 0..3 {
        done(c.publish(0, 0, &status(A)));
    }
    assert!(
        !c.m.may_read(),
        "more than a window's worth waits: back-pressure"
    );
    let first = c.m.next_publish().expect("first");
    assert!(c.m.may_read());
    // The channel was full: it goes back first.
    let topic = first.topic.clone();
    c.m.hold(first);
    assert!(c.m.has_outbox());
    assert_eq!(c.m.next_publish().map(|m| m.topic), Some(topic));
}

#[test]
fn the_publish_rate_throttles_and_a_throttled_publish_is_charged() {
    let e = edge(EdgeConfig {
        publish_rate: 1,
        publish_burst: 1,
        ..EdgeConfig::default()
    });
    let mut c = e.vehicle(A, hello(Version::V4, true));
    done(c.publish(1, 1, &status(A)));
    let Ok(Step::Throttled { publish, until }) = c.publish(1, 2, &status(A)) else {
        panic!("over the rate");
    };
    assert_eq!(until, e.t0 + Duration::from_secs(1));
    assert_eq!(c.handed().len(), 1, "the throttled one waits");
    let Step::Throttled { publish, until } =
        c.m.throttled(until - Duration::from_millis(1), publish)
    else {
        panic!("too early");
    };
    assert!(matches!(c.m.throttled(until, publish), Step::Done));
    assert_eq!(c.handed().len(), 1);
    // The one that waited took the only token: the next waits a whole second.
    c.now = until;
    let Ok(Step::Throttled { until: next, .. }) = c.publish(1, 3, &status(A)) else {
        panic!("over the rate");
    };
    assert_eq!(next, until + Duration::from_secs(1));
    // Its PUBACKs keep their order.
    assert_eq!(
        c.m.pending.iter().map(|w| w.pkid).collect::<Vec<_>>(),
        [1, 2]
    );
}

#[test]
fn subscriptions_are_granted_only_for_the_vehicles_own_platform_topics() {
    let e = edge(EdgeConfig::default());
    let mut c = e.vehicle(A, hello(Version::V5, true));
    let own = request(A);
    let theirs = request(B);
    done(c.subscribe(1, &[(&own, 2), (&theirs, 1), ("$share/g/#", 1), ("#", 0)]));
    assert_eq!(
        c.take(),
        [Out::SubAck(1, vec![Some(1), None, None, Some(0)])]
    );
    assert_eq!(e.refused(Refusal::SubscribeNotPermitted), 2);
    done(c.send(Inbound::Unsubscribe {
        pkid: 2,
        filters: vec![own.clone(), theirs],
    }));
    assert_eq!(c.take(), [Out::UnsubAck(2, vec![true, false])]);
}

#[test]
fn requests_go_out_within_the_vehicles_window() {
    let e = edge(EdgeConfig::default());
    let mut asked = hello(Version::V5, true);
    asked.receive_maximum = Some(1);
    let mut c = e.vehicle(A, asked);
    done(c.subscribe(1, &[(&request(A), 1)]));
    assert_eq!(c.take(), [Out::SubAck(1, vec![Some(1)])]);
    assert_eq!(e.send_request(A), Delivery::Sent);
    assert_eq!(e.send_request(A), Delivery::Sent);
    assert_eq!(c.signalled(), Ok(()));
    let first = Out::Publish {
        topic: request(A),
        qos: 1,
        pkid: 1,
        dup: false,
    };
    assert_eq!(c.take(), [first], "a window of one");
    done(c.send(Inbound::PubAck { pkid: 1 }));
    let second = Out::Publish {
        topic: request(A),
        qos: 1,
        pkid: 2,
        dup: false,
    };
    assert_eq!(c.take(), [second]);

    // QoS 0 requests take no room in the window.
    done(c.send(Inbound::PubAck { pkid: 2 }));
    done(c.subscribe(2, &[(&request(A), 0)]));
    assert_eq!(e.send_request(A), Delivery::Sent);
    assert_eq!(e.send_request(A), Delivery::Sent);
    assert_eq!(c.signalled(), Ok(()));
    let qos0 = || Out::Publish {
        topic: request(A),
        qos: 0,
        pkid: 0,
        dup: false,
    };
    assert_eq!(c.take(), [Out::SubAck(2, vec![Some(0)]), qos0(), qos0()]);
}

#[test]
fn a_newer_connection_takes_over_and_resumes_the_session_with_resends() {
    let e = edge(EdgeConfig::default());
    let mut first = e.vehicle(A, hello(Version::V4, false));
    done(first.subscribe(1, &[(&request(A), 1)]));
    assert_eq!(e.send_request(A), Delivery::Sent);
    assert_eq!(first.signalled(), Ok(()));
    let sent = |pkid, dup| Out::Publish {
        topic: request(A),
        qos: 1,
        pkid,
        dup,
    };
    assert_eq!(
        first.take(),
        [Out::SubAck(1, vec![Some(1)]), sent(1, false)]
    );

    // The same vehicle again: the old connection is ordered closed, and the session, with
    // the request it never acknowledged, goes on here.
    let (mut second, opened) = e.connect(Listener::Tls, certified(A), hello(Version::V4, false));
    assert_eq!(opened, Ok(()));
    assert_eq!(second.take(), [connack("Success", true), sent(1, true)]);
    assert_eq!(
        first.signalled(),
        Err(End::Refused(Refusal::SessionTakenOver))
    );
    first.m.finish();
    assert_eq!(
        e.presence(A),
        Presence::Connected,
        "the old one's end is not the new one's"
    );

    // Queued while away, sent after the resend.
    second.m.finish();
    assert_eq!(e.presence(A), Presence::Away);
    assert_eq!(e.send_request(A), Delivery::Queued);
    let (mut third, opened) = e.connect(Listener::Tls, certified(A), hello(Version::V4, false));
    assert_eq!(opened, Ok(()));
    assert_eq!(
        third.take(),
        [connack("Success", true), sent(1, true), sent(2, false)]
    );
    done(third.send(Inbound::PubAck { pkid: 1 }));
    third.m.finish();

    // A clean start discards it all.
    let mut clean = e.vehicle(A, hello(Version::V4, true));
    assert_eq!(clean.take(), []);
    clean.m.finish();
    assert_eq!(e.presence(A), Presence::Absent);
}

#[test]
fn an_anonymous_client_is_held_to_the_first_vehicle_it_names() {
    let e = edge(EdgeConfig {
        allow_anonymous: true,
        ..EdgeConfig::default()
    });
    let mut c = e.anonymous(Version::V4);
    // A topic that names no vehicle binds nothing; the pipeline rejects it.
    done(c.publish(0, 0, "/elsewhere/x"));
    assert_eq!(e.presence(A), Presence::Absent);
    done(c.publish(1, 1, &status(A)));
    assert_eq!(e.presence(A), Presence::Connected);
    assert_eq!(c.handed().len(), 2);
    done(c.publish(1, 2, &status(B)));
    let denied: Vec<_> = c.handed().iter().map(|m| m.denied).collect();
    assert_eq!(denied, [Some(Denied { by: Some(vin(A)) })]);
    assert_eq!(e.refused(Refusal::PublishNotPermitted), 1);

    // A subscription binds only through a filter that names one topic.
    let mut c = e.anonymous(Version::V5);
    done(c.subscribe(1, &[("/tenants/+/v1/request", 1), (&request(B), 1)]));
    assert_eq!(c.take(), [Out::SubAck(1, vec![None, Some(1)])]);
    assert_eq!(e.presence(B), Presence::Connected);
    done(c.subscribe(2, &[(&request(A), 1)]));
    assert_eq!(c.take(), [Out::SubAck(2, vec![None])], "bound to B");

    // A blocked vehicle binds no anonymous connection.
    e.blocked.lock().expect("gate").push(vin(A));
    let mut c = e.anonymous(Version::V5);
    assert_eq!(
        c.publish(1, 1, &status(A)).err(),
        Some(End::Refused(Refusal::VehicleBlocked))
    );
}

#[test]
fn a_close_order_ends_the_connection_and_mqtt_5_is_told_why() {
    let e = edge(EdgeConfig::default());
    let mut c = e.vehicle(A, hello(Version::V5, true));
    assert!(e.ctx.registry.close(&vin(A), Refusal::VehicleBlocked));
    let end = c.signalled().expect_err("ordered closed");
    assert_eq!(end, End::Refused(Refusal::VehicleBlocked));
    c.m.close(&end, &mut c.out);
    // DISCONNECT, administrative action (0x98), no properties, and nothing after it.
    assert_eq!(&c.out[..], [0xE0, 2, 0x98, 0]);
    c.out.clear();
    assert_eq!(e.refused(Refusal::VehicleBlocked), 1);
    let signal = c.m.signal().clone();
    c.m.finish();
    assert!(
        !signal.close(Refusal::ShuttingDown),
        "nobody listens any more"
    );
    assert_eq!(e.presence(A), Presence::Absent);

    // 3.1.1 has no DISCONNECT from the server: the connection just closes.
    let mut c = e.vehicle(B, hello(Version::V4, true));
    c.m.close(&End::Refused(Refusal::KeepAliveTimeout), &mut c.out);
    assert_eq!(c.take(), []);
    assert_eq!(e.refused(Refusal::KeepAliveTimeout), 1);
}
