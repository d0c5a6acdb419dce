//! The lean vehicles against a tiny MQTT acceptor written here, which can drop connections
//! before acknowledging what it got, or never acknowledge: what the vehicles promise is
//! checked from both sides, the acceptor's log and the tracker.

use super::{Limits, run};
use crate::generate::{LoadConfig, Mix};
use crate::tracker::Tracker;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use telegate_frame::PayloadFormat;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    /// On each client's first connection: of the first `after` publishes acknowledge every
    /// second one, then close the connection (reading on until the client closes too).
    DropFirst {
        after: usize,
    },
    NeverAck,
    AckAll,
}

/// One PUBLISH as the acceptor read it.
#[derive(Debug, Clone)]
struct Seen {
    client: String,
    connection: usize,
    seq: u64,
    pkid: Option<u16>,
    dup: bool,
    acked: bool,
}

#[derive(Debug, Default)]
struct Log {
    publishes: Vec<Seen>,
    violations: Vec<String>,
    connections: usize,
    clients: HashSet<String>,
}

async fn packet(rd: &mut (impl AsyncRead + Unpin)) -> Option<(u8, Vec<u8>)> {
    let header = rd.read_u8().await.ok()?;
    let (mut len, mut shift) = (0usize, 0);
    loop {
        let b = rd.read_u8().await.ok()?;
        len |= usize::from(b & 0x7f) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            break;
        }
    }
    let mut body = vec![0; len];
    rd.read_exact(&mut body).await.ok()?;
    Some((header, body))
}

async fn acceptor(behaviour: Behaviour) -> (SocketAddr, Arc<Mutex<Log>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let log = Arc::new(Mutex::new(Log::default()));
    let shared = log.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream, behaviour, shared.clone()));
        }
    });
    (addr, log)
}

async fn serve(stream: tokio::net::TcpStream, behaviour: Behaviour, log: Arc<Mutex<Log>>) {
    let (mut rd, mut wr) = stream.into_split();
    let Some((0x10, connect)) = packet(&mut rd).await else {
        return;
    };
    let id_len = usize::from(u16::from_be_bytes([connect[10], connect[11]]));
    let client = String::from_utf8_lossy(&connect[12..12 + id_len]).into_owned();
    let (connection, first) = {
        let mut log = log.lock().expect("log");
        log.connections += 1;
        (log.connections, log.clients.insert(client.clone()))
    };
    if wr.write_all(&[0x20, 2, 0, 0]).await.is_err() {
        return;
    }
    let mut unacked = HashSet::new();
    let (mut count, mut closing) = (0, false);
    while let Some((header, body)) = packet(&mut rd).await {
        match header >> 4 {
            3 => {
                let qos = (header >> 1) & 3;
                let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
                let mut at = 2 + topic_len;
                let pkid = (qos > 0).then(|| {
                    at += 2;
                    u16::from_be_bytes([body[at - 2], body[at - 1]])
                });
                let (frame, _) = telegate_frame::decode(&body[at..]).expect("a frame");
                count += 1;
                let ack = match behaviour {
                    _ if pkid.is_none() || closing => false,
                    Behaviour::AckAll => true,
                    Behaviour::NeverAck => false,
                    Behaviour::DropFirst { .. } if !first => true,
                    Behaviour::DropFirst { .. } => count % 2 == 0,
                };
                let seen = Seen {
                    client: client.clone(),
                    connection,
                    seq: frame.seq,
                    pkid,
                    dup: header & 0x08 != 0,
                    acked: ack,
                };
                {
                    let mut log = log.lock().expect("log");
                    if let Some(id) = pkid
                        && !unacked.insert(id)
                    {
                        log.violations.push(format!(
                            "{client} reused packet id {id} while it was unacknowledged"
                        ));
                    }
                    log.publishes.push(seen);
                }
                if let (true, Some(id)) = (ack, pkid) {
                    unacked.remove(&id);
                    let [hi, lo] = id.to_be_bytes();
                    if wr.write_all(&[0x40, 2, hi, lo]).await.is_err() {
                        return;
                    }
                }
                if let Behaviour::DropFirst { after } = behaviour
                    && first
                    && count == after
                {
                    // The acknowledgements written go out before the end of the stream.
                    let _ = wr.shutdown().await;
                    closing = true;
                }
            }
            12 if !closing => {
                let _ = wr.write_all(&[0xD0, 0]).await;
            }
            14 => return,
            _ => {}
        }
    }
}

fn load(vehicles: usize, rate: f64, qos: u8, duration: Duration) -> LoadConfig {
    LoadConfig {
        vehicles,
        rate,
        mix: Mix::default(),
        format: PayloadFormat::Protobuf,
        qos,
        ramp_up: Duration::ZERO,
        warm_up: Duration::ZERO,
        duration,
    }
}

async fn drive(cfg: &LoadConfig, addr: SocketAddr, limits: Limits) -> (u64, Arc<Tracker>) {
    let vins = crate::vins(cfg.vehicles);
    let start = Instant::now();
    let tracker = Arc::new(Tracker::new(&vins, start));
    let made = run(limits, cfg, addr, None, &vins, tracker.clone(), start)
        .await
        .expect("the run");
    (made, tracker)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_loses_nothing_and_each_frame_is_acknowledged_once() {
    let (addr, log) = acceptor(Behaviour::DropFirst { after: 10 }).await;
    let limits = Limits {
        outbox: 1_000,
        window: 100,
        drain_idle: Duration::from_secs(5),
    };
    let cfg = load(3, 50.0, 1, Duration::from_secs(1));
    let (made, tracker) = drive(&cfg, addr, limits).await;
    let log = log.lock().expect("log");
    assert!(log.violations.is_empty(), "{:?}", log.violations);
    assert!(
        log.connections >= 6,
        "each vehicle reconnected once at least"
    );

    let mut by_frame: BTreeMap<(String, u64), Vec<&Seen>> = BTreeMap::new();
    for p in &log.publishes {
        by_frame
            .entry((p.client.clone(), p.seq))
            .or_default()
            .push(p);
    }
    assert_eq!(
        by_frame.len() as u64,
        made,
        "every frame made reached the acceptor"
    );
    let mut republished = 0;
    for ((client, seq), seen) in &by_frame {
        assert!(
            seen.iter().any(|p| p.acked),
            "{client} frame {seq} was never acknowledged: {seen:?}"
        );
        assert!(!seen[0].dup, "{client} frame {seq}: DUP the first time");
        assert!(
            seen[1..].iter().all(|p| p.dup),
            "{client} frame {seq}: published again without DUP: {seen:?}"
        );
        let connections: BTreeSet<usize> = seen.iter().map(|p| p.connection).collect();
        assert_eq!(connections.len(), seen.len(), "once per connection");
        assert!(
            seen.iter().filter(|p| p.acked).count() == 1,
            "{client} frame {seq}: acknowledged and published again: {seen:?}"
        );
        republished += seen.len() - 1;
    }
    // Five of each vehicle's first ten were left without a PUBACK when the connection ended.
    assert!(republished >= 15, "{republished}");

    let stats = tracker.delivery();
    assert_eq!(stats.acknowledged.load(Relaxed), made);
    assert_eq!(stats.outstanding.load(Relaxed), 0);
    assert_eq!(stats.resent.load(Relaxed), republished as u64);
    assert_eq!(stats.published.load(Relaxed), made);
    assert_eq!(tracker.ack_latency().len(), made, "one PUBACK per frame");
    let acked: u64 = tracker.seconds().iter().map(|s| s.acked).sum();
    assert_eq!(acked, made);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_outbox_skips_ticks_and_what_is_never_acknowledged_stays_outstanding() {
    let (addr, log) = acceptor(Behaviour::NeverAck).await;
    let limits = Limits {
        outbox: 20,
        window: 5,
        drain_idle: Duration::from_millis(300),
    };
    let cfg = load(2, 200.0, 1, Duration::from_secs(1));
    let started = Instant::now();
    let (made, tracker) = drive(&cfg, addr, limits).await;
    assert!(started.elapsed() < Duration::from_secs(5), "the drain ends");
    assert_eq!(made, 40, "each vehicle made what its outbox holds");
    let stats = tracker.delivery();
    assert_eq!(stats.outstanding.load(Relaxed), 40);
    assert_eq!(stats.acknowledged.load(Relaxed), 0);
    assert!(stats.held_back.load(Relaxed) > 200, "{stats:?}");
    let log = log.lock().expect("log");
    assert_eq!(
        log.publishes.len(),
        10,
        "the window holds five publishes a vehicle on the wire"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos0_frames_are_written_once_and_not_kept() {
    let (addr, log) = acceptor(Behaviour::AckAll).await;
    let limits = Limits {
        outbox: 1_000,
        window: 100,
        drain_idle: Duration::from_secs(5),
    };
    let cfg = load(2, 50.0, 0, Duration::from_millis(500));
    let (made, tracker) = drive(&cfg, addr, limits).await;
    let stats = tracker.delivery();
    assert_eq!(stats.outstanding.load(Relaxed), 0);
    assert_eq!(stats.published.load(Relaxed), made);
    // The DISCONNECT went out after the last frame: everything written was read.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let log = log.lock().expect("log");
    assert_eq!(log.publishes.len() as u64, made);
    assert!(log.publishes.iter().all(|p| p.pkid.is_none() && !p.dup));
}

/// A broker's side of the observer's connection: CONNECT and SUBSCRIBE read, their acks
/// written (with `before_suback` publishes between them), then `publishes`, each of whose
/// PUBACK is read back. Returns the CONNECT's flags and the packet ids acknowledged.
async fn feed(
    stream: &mut tokio::net::TcpStream,
    session_present: bool,
    before_suback: &[Vec<u8>],
    publishes: &[Vec<u8>],
) -> (u8, Vec<u16>) {
    let (_, connect) = packet(stream).await.expect("CONNECT");
    let (header, _) = packet(stream).await.expect("SUBSCRIBE");
    assert_eq!(header, 0x82);
    stream
        .write_all(&[0x20, 2, u8::from(session_present), 0])
        .await
        .expect("CONNACK");
    for p in before_suback {
        stream.write_all(p).await.expect("publish");
    }
    stream.write_all(&[0x90, 3, 0, 1, 1]).await.expect("SUBACK");
    for p in publishes {
        stream.write_all(p).await.expect("publish");
    }
    let mut acked = Vec::new();
    for _ in 0..before_suback.len() + publishes.len() {
        let (header, body) = packet(stream).await.expect("PUBACK");
        assert_eq!(header, 0x40);
        acked.push(u16::from_be_bytes([body[0], body[1]]));
    }
    (connect[7], acked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_observer_keeps_its_session_across_a_dropped_connection() {
    let vins = crate::vins(1);
    let tracker = Arc::new(Tracker::new(&vins, Instant::now()));
    let vin = vins[0].clone();
    let frame = move |seq: u64| {
        let f = crate::generate::frame(&vin, seq, Mix::default(), 0);
        let mut out = Vec::new();
        let payload = telegate_frame::encode(&f, PayloadFormat::Protobuf);
        let topic = format!("/tenants/{vin}/v1/status");
        super::wire::publish(&mut out, &[&topic], Some(100 + seq as u16), false, &payload);
        out
    };
    for seq in 1..=4 {
        tracker.published(0, seq, true);
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let broker = tokio::spawn(async move {
        let (mut first, _) = listener.accept().await.expect("accept");
        let one = feed(&mut first, false, &[], &[frame(1), frame(2), frame(3)]).await;
        drop(first);
        // The session was kept: what the broker queued meanwhile may come before the SUBACK.
        let (mut second, _) = listener.accept().await.expect("accept");
        let two = feed(&mut second, true, &[frame(4)], &[]).await;
        (one, two, second)
    });
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let observer = super::subscriber::start(addr, 1, tracker.clone(), stop_rx)
        .await
        .expect("subscribed");
    let ((flags, acked), (flags_again, acked_again), _open) =
        tokio::time::timeout(Duration::from_secs(10), broker)
            .await
            .expect("in time")
            .expect("the broker's side");
    assert_eq!(flags & 0x02, 0, "no clean session");
    assert_eq!(flags_again & 0x02, 0);
    assert_eq!(acked, [101, 102, 103]);
    assert_eq!(acked_again, [104]);
    assert_eq!(tracker.totals(), (4, 0, 0, 0), "all four observed once");
    let _ = stop.send(true);
    observer.await.expect("stops");
}
