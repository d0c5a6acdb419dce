//! Frames a vehicle sends again, and more frames than it was told it may have unacknowledged,
//! black box: the real `telegate serve` with its TLS listener, a raw MQTT client (3.1.1 and 5)
//! that behaves as some client libraries do, and Apache Kafka read back.
//!
//! - A frame whose PUBACK was lost (the connection dropped after Kafka had it) and that is
//!   sent again after a reconnect, as a new publish without DUP, is acknowledged and not
//!   written again; so is a copy sent while the first is still being written.
//! - A client that sends 300 QoS 1 frames at once, beyond its receive maximum (10 here), is
//!   slowed down, not disconnected: every frame is acknowledged and in Kafka once.

mod tls_gateway;

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;
use telegate_sim::tls::VehicleCertificates;
use telegate_tests::*;
use tls_gateway::Gateway;
use tls_gateway::raw::*;

/// A valid status frame of `vin` with sequence number `seq`, as proto3-JSON.
fn status(vin: &str, seq: u64) -> Vec<u8> {
    let at = now_ms() - 1_000;
    format!(
        r#"{{"vin":"{vin}","seq":"{seq}","capturedAtMs":"{at}","status":{{"odometerKm":12.5,"fuelLevelPct":40,"ignition":"IGNITION_ON"}}}}"#
    )
    .into_bytes()
}

fn topic(vin: &str) -> String {
    format!("/tenants/{vin}/v1/status")
}

/// An MQTT 5 CONNECT, clean start, no properties.
fn connect_v5(keep_alive: u16) -> Vec<u8> {
    let mut body = string(b"MQTT");
    body.extend([5, 0x02]);
    body.extend(keep_alive.to_be_bytes());
    body.push(0);
    body.extend(string(b"v5"));
    packet(0x10, &body)
}

/// An MQTT 5 QoS 1 PUBLISH without properties.
fn publish_v5(topic: &str, pkid: u16, payload: &[u8]) -> Vec<u8> {
    let body = [
        &string(topic.as_bytes())[..],
        &pkid.to_be_bytes(),
        &[0],
        payload,
    ]
    .concat();
    packet(0x32, &body)
}

/// The next packet the server sends: its first byte and its body.
fn next_packet(s: &mut impl Read) -> (u8, Vec<u8>) {
    let mut first = [0u8; 1];
    s.read_exact(&mut first).expect("a packet from the server");
    let (mut len, mut shift) = (0usize, 0);
    loop {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).expect("remaining length");
        len |= usize::from(b[0] & 0x7F) << shift;
        if b[0] & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).expect("body");
    (first[0], body)
}

/// Reads PUBACKs until `n` have come; returns their packet ids in order. Any other packet
/// (a DISCONNECT) fails the test.
fn pubacks(s: &mut impl Read, n: usize) -> Vec<u16> {
    (0..n)
        .map(|_| {
            let (first, body) = next_packet(s);
            assert_eq!(first, 0x40, "expected a PUBACK, got {first:#x} {body:?}");
            if let Some(&reason) = body.get(2) {
                assert_eq!(reason, 0, "PUBACK reason {reason:#x}");
            }
            u16::from_be_bytes([body[0], body[1]])
        })
        .collect()
}

/// The seqs of `vin`'s records on the gateway's smart-service topic: `want` of them, then
/// whatever else comes within 3 s.
async fn seqs_in_kafka(g: &Gateway, vin: &str, want: usize) -> Vec<u64> {
    let c = consumer(&[&format!("{}telegate.smart-service", g.ns)]);
    let got = collect_expecting(&c, want, Duration::from_secs(3), |r| {
        r.key.as_deref() == Some(vin.as_bytes())
    })
    .await;
    let mut seqs: Vec<u64> = got
        .iter()
        .filter_map(|r| r.header("telegate-seq")?.parse().ok())
        .collect();
    seqs.sort_unstable();
    seqs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_sent_again_is_acknowledged_and_not_written_twice() {
    let g = Gateway::start(&[]).await;
    let certs = Arc::new(VehicleCertificates::open(&g.pki).expect("fleet CA"));
    let v = unique_vin();
    g.issue(&v);
    let (addr, vin) = (g.tls, v.clone());
    tokio::task::spawn_blocking(move || {
        // Twenty frames, acknowledged: Kafka has them. The connection drops before the
        // client noted the PUBACKs (it never read them).
        let mut s = connected(&certs, addr, &vin, true);
        for seq in 1..=20u16 {
            s.write_all(&publish(&topic(&vin), seq, &status(&vin, u64::from(seq))))
                .expect("publish");
        }
        assert_eq!(pubacks(&mut s, 20), (1..=20).collect::<Vec<_>>());
        drop(s);

        // After reconnecting the client sends all twenty again as new publishes (new
        // packet ids, no DUP), then five new ones, then one twice at once.
        let mut s = connected(&certs, addr, &vin, true);
        for seq in 1..=25u16 {
            s.write_all(&publish(
                &topic(&vin),
                100 + seq,
                &status(&vin, u64::from(seq)),
            ))
            .expect("publish");
        }
        assert_eq!(pubacks(&mut s, 25), (101..=125).collect::<Vec<_>>());
        let twice = [
            publish(&topic(&vin), 200, &status(&vin, 26)),
            publish(&topic(&vin), 201, &status(&vin, 26)),
        ]
        .concat();
        s.write_all(&twice).expect("publish");
        assert_eq!(pubacks(&mut s, 2), [200, 201]);
    })
    .await
    .expect("vehicle");

    assert_eq!(
        seqs_in_kafka(&g, &v, 26).await,
        (1..=26).collect::<Vec<_>>(),
        "every frame once"
    );
    assert_eq!(g.metric("telegate_frames_resent_total", ""), 21.0);
    assert_eq!(g.metric("telegate_mqtt_received_dup_total", ""), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_beyond_its_receive_maximum_is_slowed_down_not_disconnected() {
    const FRAMES: u16 = 300;
    let g = Gateway::start(&[("TELEGATE__MQTT__MAX_INFLIGHT", "10")]).await;
    let certs = Arc::new(VehicleCertificates::open(&g.pki).expect("fleet CA"));
    let (a, b) = (unique_vin(), unique_vin());
    g.issue(&a);
    g.issue(&b);
    let addr = g.tls;
    let (va, vb) = (a.clone(), b.clone());
    tokio::task::spawn_blocking(move || {
        // MQTT 5, told the receive maximum in the CONNACK, and 3.1.1, told nothing.
        let mut s = tls(&certs, addr, &va);
        s.write_all(&connect_v5(30)).expect("CONNECT");
        let (first, connack) = next_packet(&mut s);
        assert_eq!((first, connack[1]), (0x20, 0), "CONNACK {connack:?}");
        let burst: Vec<u8> = (1..=FRAMES)
            .flat_map(|seq| publish_v5(&topic(&va), seq, &status(&va, u64::from(seq))))
            .collect();
        s.write_all(&burst).expect("burst");
        assert_eq!(
            pubacks(&mut s, FRAMES.into()),
            (1..=FRAMES).collect::<Vec<_>>()
        );

        let mut s = connected(&certs, addr, &vb, true);
        let burst: Vec<u8> = (1..=FRAMES)
            .flat_map(|seq| publish(&topic(&vb), seq, &status(&vb, u64::from(seq))))
            .collect();
        s.write_all(&burst).expect("burst");
        assert_eq!(
            pubacks(&mut s, FRAMES.into()),
            (1..=FRAMES).collect::<Vec<_>>()
        );
    })
    .await
    .expect("vehicles");

    let all: Vec<u64> = (1..=u64::from(FRAMES)).collect();
    assert_eq!(seqs_in_kafka(&g, &a, FRAMES.into()).await, all);
    assert_eq!(seqs_in_kafka(&g, &b, FRAMES.into()).await, all);
    assert!(g.metric("telegate_mqtt_window_overruns_total", "") > 0.0);
    assert_eq!(g.metric("telegate_mqtt_refused_total", ""), 0.0);
}
