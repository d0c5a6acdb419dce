//! The closed edge under attack, black box: the real `telegate serve` with its TLS listener,
//! a well-behaved fleet publishing beside every attack, and the attacks one after another on
//! raw TCP and TLS sockets (malformed packets, remaining lengths that lie, oversized
//! payloads, stalled handshakes, a connect flood, a subscribe storm, a vehicle publishing at a
//! hundred times its rate, a vehicle cycling its connection).
//!
//! Asserted: the gateway stays up, ready and bounded in memory; every abuse is counted with
//! its reason; every fleet vehicle keeps getting PUBACKs during every attack, and every frame
//! the fleet published is acknowledged. Timings are only reported: the fleet's delivered rate
//! and p99 publish-to-PUBACK latency just before and during each attack, as a table
//! (docs/performance.md, "Under attack"): `cargo test -p telegate --test under_attack --
//! --nocapture`.

mod tls_gateway;

use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use telegate_sim::tls::VehicleCertificates;
use telegate_tests::*;
use tls_gateway::Gateway;
use tls_gateway::raw::*;

const FLEET: usize = 20;
/// Each fleet vehicle's frames per second.
const FLEET_RATE: u64 = 5;
/// The gateway's per-connection publish limit in this test (`mqtt.publish_rate`, burst).
const RATE_LIMIT: u64 = 50;
const BURST: u64 = 100;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_HANDSHAKES: usize = 250;
const QUIET: Duration = Duration::from_secs(2);
/// The shortest window the fleet is judged over: each vehicle publishes every 200 ms, so over
/// a shorter window a vehicle can have no PUBACK without being starved. An attack that ends
/// sooner is judged over this much time from its start.
const MIN_WINDOW: Duration = Duration::from_secs(1);

fn status(vin: &str, seq: u64) -> Vec<u8> {
    format!(
        r#"{{"vin":"{vin}","seq":"{seq}","capturedAtMs":"{}","status":{{"odometerKm":1.5,"fuelLevelPct":40,"ignition":"IGNITION_ON"}}}}"#,
        now_ms() - 500
    )
    .into_bytes()
}

/// What the fleet saw: each PUBACK's time and its publish-to-PUBACK latency, per vehicle.
#[derive(Default)]
struct Record {
    acks: Mutex<Vec<(Instant, Duration, usize)>>,
    published: AtomicU64,
    acked: AtomicU64,
    errors: AtomicU64,
}

impl Record {
    /// Frames acknowledged per second within the window, their p99 latency, and the
    /// vehicles that got no PUBACK in it.
    fn window(&self, from: Instant, to: Instant) -> (f64, Duration, usize) {
        let acks = self.acks.lock().expect("lock");
        let mut lat: Vec<Duration> = Vec::new();
        let mut heard = [false; FLEET];
        for (_, l, v) in acks.iter().filter(|(at, ..)| *at >= from && *at < to) {
            lat.push(*l);
            heard[*v] = true;
        }
        lat.sort_unstable();
        let p99 = lat
            .get((lat.len() * 99 / 100).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default();
        let rate = lat.len() as f64 / (to - from).as_secs_f64();
        (rate, p99, heard.iter().filter(|h| !**h).count())
    }
}

/// A well-behaved vehicle: MQTT 3.1.1 over TLS with its certificate, one QoS 1 status frame
/// every 1/FLEET_RATE s until `stop`.
async fn vehicle(
    i: usize,
    vin: String,
    transport: rumqttc::Transport,
    port: u16,
    rec: Arc<Record>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut o = MqttOptions::new(
        format!("fleet-{i}-{:x}", rand::random::<u32>()),
        "127.0.0.1",
        port,
    );
    o.set_transport(transport);
    o.set_keep_alive(Duration::from_secs(30));
    let (client, mut ev) = AsyncClient::new(o, 64);
    let sent: Arc<Mutex<VecDeque<Instant>>> = Arc::default();
    let (sent2, rec2) = (sent.clone(), rec.clone());
    let events = tokio::spawn(async move {
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    let now = Instant::now();
                    if let Some(t) = sent2.lock().expect("lock").pop_front() {
                        rec2.acks.lock().expect("lock").push((now, now - t, i));
                        rec2.acked.fetch_add(1, Relaxed);
                    }
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
                Ok(_) => {}
                Err(_) => {
                    rec2.errors.fetch_add(1, Relaxed);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    });
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / FLEET_RATE));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0;
    while !*stop.borrow() {
        tick.tick().await;
        seq += 1;
        sent.lock().expect("lock").push_back(Instant::now());
        rec.published.fetch_add(1, Relaxed);
        client
            .publish(
                format!("/tenants/{vin}/v1/status"),
                QoS::AtLeastOnce,
                false,
                status(&vin, seq),
            )
            .await
            .expect("queued");
    }
    // Every frame acknowledged, then a clean DISCONNECT.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sent.lock().expect("lock").is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), events).await;
}

/// The refusals counted for these reasons, summed.
fn refused(g: &Gateway, reasons: &[&str]) -> f64 {
    reasons.iter().map(|r| g.refused(r)).sum()
}

fn all_refused(g: &Gateway) -> f64 {
    g.metric("telegate_mqtt_refused_total", "")
}

/// Runs a blocking attack on its own thread.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("attack thread")
}

struct Row {
    scenario: &'static str,
    before: (f64, Duration),
    during: (f64, Duration),
    counted: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_survives_attacks_and_counts_them_while_the_fleet_delivers() {
    let started = Instant::now();
    let mut g = Gateway::start(&[
        ("TELEGATE__MQTT__CONNECT_TIMEOUT", "2s"),
        (
            "TELEGATE__MQTT__MAX_HANDSHAKES",
            &MAX_HANDSHAKES.to_string(),
        ),
        ("TELEGATE__MQTT__PUBLISH_RATE", &RATE_LIMIT.to_string()),
        ("TELEGATE__MQTT__PUBLISH_BURST", &BURST.to_string()),
    ])
    .await;
    let certs = Arc::new(VehicleCertificates::open(&g.pki).expect("fleet CA"));
    let addr = g.tls;

    let rec = Arc::new(Record::default());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut fleet = Vec::new();
    for i in 0..FLEET {
        let vin = unique_vin();
        let transport = certs.transport(&vin).expect("vehicle transport");
        fleet.push(tokio::spawn(vehicle(
            i,
            vin,
            transport,
            addr.port(),
            rec.clone(),
            stopped.clone(),
        )));
    }
    assert!(
        g.eventually(Duration::from_secs(20), |g| {
            g.metric("telegate_mqtt_connections_open", "") >= FLEET as f64
        })
        .await,
        "the fleet did not connect"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss_before, _) = g.rss_kib();
    let mut rows = Vec::new();

    macro_rules! scenario {
        ($name:expr, $attack:expr) => {{
            let quiet = Instant::now();
            tokio::time::sleep(QUIET).await;
            let from = Instant::now();
            let counted: String = $attack.await;
            let to = Instant::now().max(from + MIN_WINDOW);
            tokio::time::sleep_until(to.into()).await;
            let (r0, p0, _) = rec.window(quiet, from);
            let (r1, p1, starved) = rec.window(from, to);
            assert_eq!(
                starved, 0,
                "{}: fleet vehicles got no PUBACK during the attack",
                $name
            );
            assert!(g.alive(), "{}: the gateway died: {}", $name, g.log_text());
            assert_eq!(
                http_get(g.metrics, "/readyz").map(|(c, _)| c).unwrap_or(0),
                200,
                "{}: not ready",
                $name
            );
            rows.push(Row {
                scenario: $name,
                before: (r0, p0),
                during: (r1, p1),
                counted,
            });
        }};
    }

    // Malformed packets from a vehicle with a valid certificate, each on a new connection.
    scenario!("malformed packets", async {
        let reasons = ["malformed-packet", "protocol-error"];
        let before = (refused(&g, &reasons), all_refused(&g));
        let (certs, vin) = (certs.clone(), unique_vin());
        let n = blocking(move || {
            let topic = format!("/tenants/{vin}/v1/status");
            let cases: Vec<(bool, Vec<u8>)> = vec![
                // (after a CONNECT, bytes)
                (false, vec![0xff; 16]),
                (
                    false,
                    packet(0x10, &[&string(b"MQTX")[..], &[4, 2, 0, 30, 0, 0]].concat()),
                ),
                (true, vec![0xf0, 0x00]),
                (
                    true,
                    packet(0x32, &[&string(&[0xc3, 0x28])[..], &[0, 1], b"x"].concat()),
                ),
                (true, connect(30, true)),
                (true, publish(&topic, 0, b"pkid zero")),
            ];
            let mut n = 0;
            let until = Instant::now() + Duration::from_secs(3);
            while Instant::now() < until {
                for (after_connect, bytes) in &cases {
                    let mut s = match after_connect {
                        true => connected(&certs, addr, &vin, true),
                        false => tls(&certs, addr, &vin),
                    };
                    s.write_all(bytes).expect("write");
                    assert!(
                        tls_closed(&mut s, Duration::from_secs(5)),
                        "case {n} left open"
                    );
                    n += 1;
                }
            }
            n
        })
        .await;
        let counted = refused(&g, &reasons) - before.0;
        assert_eq!(counted, n as f64, "malformed packets counted");
        assert_eq!(all_refused(&g) - before.1, n as f64, "other refusals");
        format!("{n} connections, {counted} `malformed-packet` + `protocol-error`")
    });

    // Remaining lengths that lie: beyond any limit, a varint of five bytes, shorter than the
    // packet's own fields, and longer than what is sent (the rest never comes, before and
    // after CONNECT).
    scenario!("remaining lengths that lie", async {
        let reasons = [
            "packet-too-large",
            "malformed-packet",
            "protocol-error",
            "keep-alive-timeout",
            "handshake-timeout",
        ];
        let before: Vec<f64> = reasons.iter().map(|r| g.refused(r)).collect();
        let (certs, vin) = (certs.clone(), unique_vin());
        let n = blocking(move || {
            let mut n = [0usize; 5];
            for _ in 0..10 {
                let mut s = connected(&certs, addr, &vin, true);
                s.write_all(&[0x32, 0xff, 0xff, 0xff, 0x7f, 0, 1])
                    .expect("write");
                assert!(tls_closed(&mut s, Duration::from_secs(5)));
                n[0] += 1;
                let mut s = connected(&certs, addr, &vin, true);
                s.write_all(&[0x32, 0xff, 0xff, 0xff, 0xff, 0x01, 0])
                    .expect("write");
                assert!(tls_closed(&mut s, Duration::from_secs(5)));
                n[1] += 1;
                let mut s = connected(&certs, addr, &vin, true);
                s.write_all(&[0x32, 0x03, 0x00, 0x64, b'/']).expect("write");
                assert!(tls_closed(&mut s, Duration::from_secs(5)));
                n[1] += 1;
            }
            // Longer than what comes: 200,000 bytes announced, 10 sent. After a CONNECT with a
            // keep-alive of 1 s the connection is closed 1.5 s later; a CONNECT that long is
            // refused at once (a CONNECT may be 16 KiB).
            let mut stalled = Vec::new();
            for _ in 0..10 {
                let mut s = tls(&certs, addr, &vin);
                s.write_all(&[0x10, 0xc0, 0x9a, 0x0c, 0, 4, b'M', b'Q', b'T', b'T'])
                    .expect("write");
                stalled.push((s, 0));
            }
            let mut s = tls(&certs, addr, &vin);
            s.write_all(&[&connect(1, true)[..], &[0x32, 0xc0, 0x9a, 0x0c, 0, 4, b'/']].concat())
                .expect("write");
            stalled.push((s, 3));
            for (mut s, i) in stalled {
                assert!(tls_closed(&mut s, CONNECT_TIMEOUT + Duration::from_secs(3)));
                n[i] += 1;
            }
            n
        })
        .await;
        let delta: Vec<f64> = reasons
            .iter()
            .zip(&before)
            .map(|(r, b)| g.refused(r) - b)
            .collect();
        assert_eq!(delta[0], n[0] as f64, "packet-too-large");
        assert_eq!(
            delta[1] + delta[2],
            n[1] as f64,
            "malformed-packet + protocol-error"
        );
        assert_eq!(delta[3], n[3] as f64, "keep-alive-timeout");
        assert_eq!(delta[4], n[4] as f64, "handshake-timeout");
        format!(
            "{} `packet-too-large`, {} `malformed-packet`, {} `keep-alive-timeout`, {} `handshake-timeout`",
            n[0], n[1], n[3], n[4]
        )
    });

    // Oversized payloads: above the packet limit (the edge closes the connection), and above
    // validation's payload limit but within the packet limit (acknowledged, rejected, counted).
    scenario!("oversized payloads", async {
        let too_large = g.refused("packet-too-large");
        let rejected = g.metric(
            "telegate_frames_rejected_total",
            "reason=\"payload-too-large\"",
        );
        let (certs, vin) = (certs.clone(), unique_vin());
        let (big, large) = blocking(move || {
            let topic = format!("/tenants/{vin}/v1/status");
            let (mut big, mut large) = (0, 0u16);
            let mut s = connected(&certs, addr, &vin, true);
            let until = Instant::now() + Duration::from_secs(3);
            while Instant::now() < until {
                let mut over = connected(&certs, addr, &vin.replace("WP0", "WP1"), true);
                // The edge may close before all of it is written.
                let _ = over.write_all(&publish(
                    &topic.replace("WP0", "WP1"),
                    1,
                    &vec![b'x'; 300 * 1024],
                ));
                assert!(tls_closed(&mut over, Duration::from_secs(5)));
                big += 1;
                for _ in 0..5 {
                    large += 1;
                    s.write_all(&publish(&topic, large, &vec![b'y'; 100 * 1024]))
                        .expect("write");
                }
                for pkid in large - 4..=large {
                    let mut ack = [0u8; 4];
                    s.read_exact(&mut ack).expect("PUBACK");
                    assert_eq!(ack, [0x40, 2, (pkid >> 8) as u8, pkid as u8]);
                }
            }
            (big, large)
        })
        .await;
        assert_eq!(g.refused("packet-too-large") - too_large, big as f64);
        let counted = g.metric(
            "telegate_frames_rejected_total",
            "reason=\"payload-too-large\"",
        ) - rejected;
        assert_eq!(counted, f64::from(large), "payload-too-large rejections");
        format!(
            "{big} `packet-too-large` (300 KiB), {large} frames rejected `payload-too-large` (100 KiB)"
        )
    });

    // Stalled TLS handshakes: TCP connections that say nothing, or half a ClientHello.
    scenario!("stalled TLS handshakes", async {
        let before = g.refused("handshake-timeout");
        let n = blocking(move || {
            let mut held = Vec::new();
            for i in 0..100 {
                let mut s = TcpStream::connect(addr).expect("tcp");
                if i % 2 == 1 {
                    s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
                        .expect("write");
                }
                held.push(s);
            }
            let n = held.len();
            for mut s in held {
                let sock = s.try_clone().expect("clone");
                assert!(closed_by_server(
                    &mut s,
                    &sock,
                    CONNECT_TIMEOUT + Duration::from_secs(3)
                ));
            }
            n
        })
        .await;
        assert_eq!(g.refused("handshake-timeout") - before, n as f64);
        format!("{n} `handshake-timeout`")
    });

    // A connect flood: 300 connections held at once (unauthenticated connections may hold
    // 250 places; the fleet, connected, holds none of them), and 600 opened and closed at once.
    scenario!("connect flood", async {
        let reasons = [
            "too-many-handshakes",
            "too-many-from-source",
            "handshake-failed",
            "handshake-timeout",
        ];
        let evicted =
            |g: &Gateway| g.refused("too-many-handshakes") + g.refused("too-many-from-source");
        let before = (refused(&g, &reasons), evicted(&g), all_refused(&g));
        let n = blocking(move || {
            let held: Vec<TcpStream> = (0..300)
                .map(|_| TcpStream::connect(addr).expect("tcp"))
                .collect();
            let mut n = held.len();
            for _ in 0..600 {
                if TcpStream::connect(addr).is_ok() {
                    n += 1;
                }
            }
            std::thread::sleep(CONNECT_TIMEOUT + Duration::from_millis(500));
            drop(held);
            n
        })
        .await;
        assert!(
            g.eventually(Duration::from_secs(10), |g| refused(g, &reasons) - before.0
                >= n as f64)
                .await,
            "flood not counted: {} of {n}",
            refused(&g, &reasons) - before.0
        );
        let too_many = evicted(&g) - before.1;
        assert!(too_many >= 1.0, "the handshake budget closed nothing");
        assert_eq!(
            all_refused(&g) - before.2,
            n as f64,
            "each connection counted once"
        );
        format!(
            "{n} connections: {too_many} closed to make room (`too-many-handshakes`), the rest `handshake-failed`/`handshake-timeout`"
        )
    });

    // A subscribe storm: SUBSCRIBEs of five filters each (at least 2,000, for at least 2 s),
    // four of the filters refused.
    scenario!("subscribe storm", async {
        let before = g.refused("subscribe-not-permitted");
        let log_lines = g.log_text().lines().count();
        let (certs, vin) = (certs.clone(), unique_vin());
        let (packets, refused_filters) = blocking(move || {
            let mut s = connected(&certs, addr, &vin, true);
            let other = unique_vin();
            let filters = [
                (format!("/tenants/{vin}/v1/request"), true),
                (format!("/tenants/{other}/v1/request"), false),
                ("/tenants/+/v1/status".to_owned(), false),
                ("$share/g/#".to_owned(), false),
                (format!("/tenants/{other}/#"), false),
            ];
            let body: Vec<u8> = filters
                .iter()
                .flat_map(|(f, _)| [&string(f.as_bytes())[..], &[1]].concat())
                .collect();
            let (mut packets, mut pkid) = (0u32, 0u16);
            // At least 2,000 SUBSCRIBEs, and for at least 2 s: the fleet is judged over the
            // storm, not over a moment of it.
            let storm = Instant::now();
            while packets < 2_000 || storm.elapsed() < Duration::from_secs(2) {
                let mut batch = Vec::new();
                for _ in 0..100 {
                    pkid = pkid % 65_000 + 1;
                    batch.extend(packet(0x82, &[&pkid.to_be_bytes()[..], &body].concat()));
                }
                s.write_all(&batch).expect("write");
                let mut acks = vec![0u8; 100 * (4 + filters.len())];
                s.read_exact(&mut acks).expect("SUBACKs");
                for ack in acks.chunks(4 + filters.len()) {
                    assert_eq!(&ack[..2], &[0x90, 7]);
                    let codes: Vec<bool> = ack[4..].iter().map(|c| *c != 0x80).collect();
                    let want: Vec<bool> = filters.iter().map(|(_, ok)| *ok).collect();
                    assert_eq!(codes, want);
                }
                packets += 100;
            }
            (packets, packets * 4)
        })
        .await;
        let counted = g.refused("subscribe-not-permitted") - before;
        assert_eq!(counted, f64::from(refused_filters));
        // Counted, each of them, but not logged each: the vehicle does not fill the log.
        let logged = g.log_text().lines().count() - log_lines;
        assert!(
            logged <= 5,
            "{logged} log lines for one connection's refusals"
        );
        format!("{packets} SUBSCRIBEs: {counted} `subscribe-not-permitted`")
    });

    // One vehicle at a hundred times the fleet's rate (500 frames/s, QoS 1): the edge reads
    // it at its publish rate.
    scenario!("one vehicle at 100x its rate", async {
        let throttled = g.metric("telegate_mqtt_throttled_total", "");
        let vin = unique_vin();
        let mut o = MqttOptions::new(
            format!("loud-{:x}", rand::random::<u32>()),
            "127.0.0.1",
            addr.port(),
        );
        o.set_transport(certs.transport(&vin).expect("transport"));
        let (client, mut ev) = AsyncClient::new(o, 1000);
        let acked = Arc::new(AtomicU64::new(0));
        let acked2 = acked.clone();
        let events = tokio::spawn(async move {
            while let Ok(e) = ev.poll().await {
                if let Event::Incoming(Packet::PubAck(_)) = e {
                    acked2.fetch_add(1, Relaxed);
                }
            }
        });
        let start = Instant::now();
        let (mut seq, mut offered) = (0, 0);
        while start.elapsed() < Duration::from_secs(4) {
            for _ in 0..(FLEET_RATE * 100 / 10) {
                seq += 1;
                if client
                    .try_publish(
                        format!("/tenants/{vin}/v1/status"),
                        QoS::AtLeastOnce,
                        false,
                        status(&vin, seq),
                    )
                    .is_ok()
                {
                    offered += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let elapsed = start.elapsed().as_secs_f64();
        let took = acked.load(Relaxed);
        events.abort();
        let slowed = g.metric("telegate_mqtt_throttled_total", "") - throttled;
        assert!(slowed >= 1.0, "the flood was not throttled");
        let most = BURST as f64 + RATE_LIMIT as f64 * (elapsed + 1.0);
        assert!(
            (took as f64) <= most,
            "{took} frames taken in {elapsed:.1} s, at most {most}"
        );
        format!(
            "{offered} offered, {took} taken in {elapsed:.1} s; {slowed} `telegate_mqtt_throttled_total`"
        )
    });

    // A vehicle cycling its connection: each new connection takes over the one before.
    scenario!("a vehicle cycling connect/disconnect", async {
        let before = g.refused("session-taken-over");
        let (certs, vin) = (certs.clone(), unique_vin());
        let n = blocking(move || {
            let mut last: Option<Tls> = None;
            let mut n = 0;
            let until = Instant::now() + Duration::from_secs(3);
            while Instant::now() < until {
                let s = connected(&certs, addr, &vin, n % 2 == 0);
                if let Some(mut old) = last.replace(s) {
                    assert!(
                        tls_closed(&mut old, Duration::from_secs(5)),
                        "not taken over"
                    );
                    n += 1;
                }
            }
            if let Some(mut s) = last {
                s.write_all(&[0xe0, 0]).expect("DISCONNECT");
                let _ = tls_closed(&mut s, Duration::from_secs(5));
            }
            n
        })
        .await;
        assert_eq!(g.refused("session-taken-over") - before, n as f64);
        format!("{n} `session-taken-over`")
    });

    let _ = stop.send(true);
    for v in fleet {
        v.await.expect("vehicle");
    }
    let (published, acked) = (rec.published.load(Relaxed), rec.acked.load(Relaxed));
    assert_eq!(acked, published, "fleet frames without a PUBACK");
    assert_eq!(rec.errors.load(Relaxed), 0, "a fleet connection failed");
    assert!(
        g.eventually(Duration::from_secs(10), |g| g
            .metric("telegate_mqtt_connections_open", "")
            == 0.0)
            .await,
        "connections left open: {}",
        g.metric("telegate_mqtt_connections_open", "")
    );
    let (rss_after, peak) = g.rss_kib();
    assert!(
        rss_after < rss_before + 256 * 1024,
        "memory grew from {rss_before} KiB to {rss_after} KiB"
    );
    assert!(g.alive());
    // Every VIN of the test, the fleet's and the attackers', starts with WP0ZZZ or WP1ZZZ.
    let log = g.log_text();
    assert!(
        !log.contains("WP0ZZZ") && !log.contains("WP1ZZZ"),
        "a VIN in the gateway's log"
    );

    println!(
        "\nUnder attack: {FLEET} vehicles x {FLEET_RATE} frames/s (QoS 1, TLS); before = the {} s just before the attack\n",
        QUIET.as_secs()
    );
    println!(
        "| attack | delivered/s before | p99 before | delivered/s during | p99 during | counted |"
    );
    println!("|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {:.0} | {:.0} ms | {:.0} | {:.0} ms | {} |",
            r.scenario,
            r.before.0,
            r.before.1.as_secs_f64() * 1e3,
            r.during.0,
            r.during.1.as_secs_f64() * 1e3,
            r.counted
        );
    }
    println!(
        "\nfleet: {published} frames, all acknowledged; gateway RSS {} MiB before the attacks, {} MiB after, peak {} MiB; {} log lines; {:.0} s in all",
        rss_before / 1024,
        rss_after / 1024,
        peak / 1024,
        log.lines().count(),
        started.elapsed().as_secs_f64()
    );
}
