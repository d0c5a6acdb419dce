//! The embedded broker end to end with real MQTT clients on loopback.

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;
use telegate_mqtt::{Ingress, IngressConfig};

fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// Publishes `n` QoS1 messages and waits for every PUBACK.
async fn publish_all(addr: SocketAddr, n: usize, payload: Vec<u8>) {
    let mut opts = MqttOptions::new("vehicle-1", addr.ip().to_string(), addr.port());
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(64 * 1024, 64 * 1024);
    let (client, mut events) = AsyncClient::new(opts, 64);
    let publisher = tokio::spawn(async move {
        for i in 0..n {
            let topic = "/tenants/WP0ZZZ99ZTS392124/v1/status";
            let mut p = payload.clone();
            p.extend_from_slice(&(i as u64).to_be_bytes());
            client
                .publish(topic, QoS::AtLeastOnce, false, p)
                .await
                .expect("queued");
        }
        client
    });
    let mut acked = 0;
    while acked < n {
        match tokio::time::timeout(Duration::from_secs(20), events.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("mqtt error after {acked} acks: {e}"),
            Err(_) => panic!("timed out after {acked} acks"),
        }
    }
    drop(publisher.await.expect("publisher"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_publish_reaches_the_channel() {
    let cfg = IngressConfig {
        v4_listen: Some(free_addr()),
        v5_listen: Some(free_addr()),
        ..Default::default()
    };
    let (ingress, mut rx) = Ingress::start(&cfg).expect("starts");
    let addr = cfg.v4_listen.expect("v4");
    publish_all(addr, 500, b"frame".to_vec()).await;
    for i in 0..500u64 {
        let m = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("in time")
            .expect("open");
        assert_eq!(&m.topic[..], b"/tenants/WP0ZZZ99ZTS392124/v1/status");
        assert_eq!(&m.payload[5..], &i.to_be_bytes(), "in publish order");
    }
    assert_eq!(ingress.stats().received(), 500);
    assert_eq!(ingress.stats().lost(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_the_broker_evicts_are_counted_not_silently_lost() {
    // A tiny log and a one-slot channel that nobody drains while the vehicle publishes:
    // the broker must evict, and every evicted frame must show up in `lost`.
    let cfg = IngressConfig {
        v4_listen: Some(free_addr()),
        segment_bytes: 4 * 1024,
        segment_count: 2,
        channel_capacity: 1,
        ..Default::default()
    };
    let (ingress, mut rx) = Ingress::start(&cfg).expect("starts");
    let published = 3_000usize;
    publish_all(cfg.v4_listen.expect("v4"), published, vec![b'x'; 100]).await;

    let mut delivered = 0u64;
    loop {
        match tokio::time::timeout(Duration::from_secs(2), rx.recv()).await {
            Ok(Some(_)) => delivered += 1,
            Ok(None) => panic!("channel closed"),
            Err(_) => break,
        }
    }
    let stats = ingress.stats();
    assert_eq!(stats.received(), delivered);
    assert!(stats.lost() > 0, "the tiny log must have evicted something");
    assert_eq!(
        stats.received() + stats.lost(),
        published as u64,
        "every publish is either delivered or counted as lost"
    );
}
