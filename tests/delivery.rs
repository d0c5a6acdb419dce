//! A PUBACK means Kafka has the frame, seen from the vehicles. Vehicles that keep every
//! frame until its PUBACK (telegate-sim's link; half MQTT 3.1.1, half MQTT 5) load a gateway
//! running in a process of its own with the load pack (one record per frame, keyed by VIN,
//! with its seq), and then:
//! - the gateway is killed with SIGKILL: every frame acknowledged before is in Kafka; once it
//!   is started again on the same ports, every frame the vehicles made is;
//! - the only Kafka node is stopped for 20 s and started again: every frame is in Kafka, and
//!   the time from Kafka's return until the vehicles hold nothing older is printed;
//! - Kafka is away for longer than the gateway's delivery timeout: MQTT 5 vehicles get failure
//!   reasons and 3.1.1 vehicles are disconnected, they publish again, and nothing is lost.
//!
//! Loss is asserted; duplicates and timings are printed, never asserted.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Child;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use telegate_frame::pb::{self, vehicle_frame::Body};
use telegate_gateway::Config;
use telegate_sim::{DeliveryStats, Link, LinkConfig, MqttVersion, Update};
use telegate_tests::*;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Not a test: the gateway's own process, which the tests start (see
/// [`spawn_gateway_process`]).
#[test]
#[ignore = "the gateway process of the delivery tests, started by them"]
fn gateway_process() {
    run_gateway_process();
}

/// A gateway in a child process, killed with SIGKILL when dropped.
struct GatewayProcess {
    child: Child,
}

impl GatewayProcess {
    fn start(config: &Path, log: &Path) -> Self {
        let child = spawn_gateway_process(config, log);
        Self { child }
    }

    /// Its peak resident memory so far (VmHWM), in MiB.
    fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    }

    /// SIGKILL: no shutdown, no flush, no last PUBACK.
    fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A gateway config for these tests, with both plain listeners, written where the child reads
/// it.
fn gateway_files(ns: &str, dir: &Path, bootstrap: &str) -> (Config, std::path::PathBuf) {
    let mut config = gateway_config("loadgen", ns, dir);
    config.mqtt.listen_v5 = Some(free_addr());
    config.kafka.bootstrap = bootstrap.to_owned();
    config.kafka.linger_ms = 5;
    let path = dir.join("gateway.json");
    std::fs::write(&path, serde_json::to_vec(&config).expect("config as JSON")).expect("write");
    (config, path)
}

/// What one vehicle made and got acknowledged.
#[derive(Debug, Default)]
struct Log {
    made: u64,
    acked: BTreeSet<u64>,
}

/// Vehicles that each make one status frame per `period` and keep it until its PUBACK.
struct Vehicles {
    vins: Vec<String>,
    logs: Arc<Vec<Mutex<Log>>>,
    /// MQTT 3.1.1 vehicles' counts, then MQTT 5 vehicles'.
    stats: [Arc<DeliveryStats>; 2],
    producing: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

type Key = (String, u64);

impl Vehicles {
    fn start(n: usize, v4: SocketAddr, v5: SocketAddr, period: Duration) -> Self {
        let vins: Vec<String> = (0..n).map(|_| unique_vin()).collect();
        let logs: Arc<Vec<Mutex<Log>>> = Arc::new((0..n).map(|_| Mutex::default()).collect());
        let stats: [Arc<DeliveryStats>; 2] = Default::default();
        let (producing, rx) = watch::channel(true);
        let mut tasks = JoinSet::new();
        for (i, vin) in vins.iter().enumerate() {
            let (version, addr) = match i % 2 {
                0 => (MqttVersion::V311, v4),
                _ => (MqttVersion::V5, v5),
            };
            let counts = stats[i % 2].clone();
            let mut cfg = LinkConfig::new("127.0.0.1", addr.port(), format!("dv-{i}"));
            cfg.version = version;
            cfg.reconnect_after = Duration::from_millis(500);
            let stagger = period.mul_f64(i as f64 / n as f64);
            tasks.spawn(vehicle(
                vin.clone(),
                cfg,
                counts,
                (logs.clone(), i),
                period,
                stagger,
                rx.clone(),
            ));
        }
        Self {
            vins,
            logs,
            stats,
            producing,
            tasks,
        }
    }

    /// A count over all vehicles.
    fn sum(&self, count: impl Fn(&DeliveryStats) -> &AtomicU64) -> u64 {
        self.stats.iter().map(|s| count(s).load(Relaxed)).sum()
    }

    fn log<T>(&self, f: impl Fn(&str, &Log) -> T) -> Vec<T> {
        self.vins
            .iter()
            .zip(self.logs.iter())
            .map(|(vin, log)| f(vin, &log.lock().expect("log")))
            .collect()
    }

    fn acknowledged(&self) -> BTreeSet<Key> {
        self.log(|vin, l| {
            l.acked
                .iter()
                .map(|s| (vin.to_owned(), *s))
                .collect::<Vec<_>>()
        })
        .into_iter()
        .flatten()
        .collect()
    }

    fn made(&self) -> BTreeSet<Key> {
        self.log(|vin, l| {
            (1..=l.made)
                .map(|s| (vin.to_owned(), s))
                .collect::<Vec<_>>()
        })
        .into_iter()
        .flatten()
        .collect()
    }

    /// Per vehicle, the frames made so far.
    fn made_counts(&self) -> Vec<u64> {
        self.log(|_, l| l.made)
    }

    /// Whether every vehicle has every frame up to `upto` (its count) acknowledged.
    fn acknowledged_up_to(&self, upto: &[u64]) -> bool {
        self.log(|_, l| (1u64..).take_while(|s| l.acked.contains(s)).count() as u64)
            .iter()
            .zip(upto)
            .all(|(contiguous, want)| contiguous >= want)
    }

    async fn wait_acknowledged(&self, frames: u64, within: Duration) {
        let deadline = Instant::now() + within;
        while self.sum(|s| &s.acknowledged) < frames {
            assert!(
                Instant::now() < deadline,
                "fewer than {frames} frames acknowledged within {within:?}: {:?}",
                self.stats
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops making frames, waits until the vehicles hold nothing (or nothing was acknowledged
    /// for a minute), and disconnects them.
    async fn stop(mut self) -> Self {
        let _ = self.producing.send(false);
        while self.tasks.join_next().await.is_some() {}
        self
    }
}

async fn vehicle(
    vin: String,
    cfg: LinkConfig,
    stats: Arc<DeliveryStats>,
    (logs, i): (Arc<Vec<Mutex<Log>>>, usize),
    period: Duration,
    stagger: Duration,
    mut producing: watch::Receiver<bool>,
) {
    let record = |update: Update<u64>| {
        if let Update::Acked(seq) = update {
            logs[i].lock().expect("log").acked.insert(seq);
        }
    };
    let mut link = Link::open(&cfg, stats.clone());
    tokio::time::sleep(stagger).await;
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = producing.changed() => break,
            update = link.next() => match update {
                Update::Closed => break,
                update => record(update),
            },
            _ = tick.tick() => {
                if link.is_full() {
                    stats.held_back.fetch_add(1, Relaxed);
                    continue;
                }
                let seq = {
                    let mut log = logs[i].lock().expect("log");
                    log.made += 1;
                    log.made
                };
                let body = Body::Status(pb::Status {
                    odometer_km: Some(1_000.0 + seq as f64),
                    ..Default::default()
                });
                let (topic, payload) = message(&vin, seq, now_ms() - 100, body);
                link.push(topic, payload, seq);
            }
        }
    }
    link.drain(Duration::from_secs(60), record).await;
    link.close().await;
}

fn missing(want: &BTreeSet<Key>, seen: &HashMap<Key, u32>) -> usize {
    want.iter().filter(|k| !seen.contains_key(*k)).count()
}

fn duplicates(seen: &HashMap<Key, u32>) -> u32 {
    seen.values().map(|n| n - 1).sum()
}

/// How many vehicles the kill test runs: `TELEGATE_DELIVERY_VEHICLES`, 1,000 by default.
fn fleet_size() -> usize {
    std::env::var("TELEGATE_DELIVERY_VEHICLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_with_sigkill_loses_no_acknowledged_frame_and_the_vehicles_resend_the_rest()
 {
    let dir = tempfile::tempdir().expect("tmp");
    let ns = format!("k{:08x}.", rand::random::<u32>());
    let (config, path) = gateway_files(&ns, dir.path(), &kafka());
    let topic = format!("{ns}telegate.loadgen");
    let log = dir.path().join("gateway.log");
    let gateway = GatewayProcess::start(&path, &log);
    let (v4, v5) = (
        config.mqtt.listen.expect("mqtt"),
        config.mqtt.listen_v5.expect("mqtt5"),
    );

    // Each vehicle makes 4 frames/s: 4,000 frames/s from 1,000 vehicles.
    let n = fleet_size();
    let vehicles = Vehicles::start(n, v4, v5, Duration::from_millis(250));
    let started = Instant::now();
    // Under load: every vehicle connected, frames acknowledged and more in flight.
    vehicles
        .wait_acknowledged(20 * n as u64, Duration::from_secs(120))
        .await;
    let rate = vehicles.sum(|s| &s.acknowledged) as f64 / started.elapsed().as_secs_f64();
    let in_flight = vehicles.sum(|s| &s.outstanding);
    let rss = gateway.peak_rss_mib();
    gateway.kill();
    let killed = Instant::now();
    // PUBACKs the gateway wrote before it died may still be on their way to the vehicles.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let acknowledged = vehicles.acknowledged();
    let seen = frames_in_kafka(
        &kafka(),
        &topic,
        &vehicles.vins,
        &acknowledged,
        Duration::from_secs(30),
    )
    .await;
    let lost = missing(&acknowledged, &seen);
    println!(
        "{n} vehicles, {rate:.0} frames/s acknowledged; gateway killed with {} frames acknowledged and {in_flight} kept by the vehicles (gateway peak RSS {rss:.0} MiB): {lost} missing from Kafka",
        acknowledged.len()
    );
    assert_eq!(
        lost, 0,
        "frames acknowledged before the kill are not in Kafka"
    );

    // The same ports again: the vehicles reconnect (no session survives) and publish what is
    // unacknowledged; they go on making frames for a while.
    let restarted = GatewayProcess::start(&path, &log);
    println!(
        "gateway back {:.1} s after the kill",
        killed.elapsed().as_secs_f64()
    );
    let before = vehicles.sum(|s| &s.acknowledged);
    vehicles
        .wait_acknowledged(before + 2 * n as u64, Duration::from_secs(120))
        .await;
    let vehicles = vehicles.stop().await;
    let made = vehicles.made();
    let seen = frames_in_kafka(
        &kafka(),
        &topic,
        &vehicles.vins,
        &made,
        Duration::from_secs(30),
    )
    .await;
    let lost = missing(&made, &seen);
    println!(
        "{} frames made, {lost} missing, {} duplicates in Kafka; vehicles: {:?}",
        made.len(),
        duplicates(&seen),
        vehicles.stats
    );
    assert_eq!(lost, 0, "frames the vehicles made are not in Kafka");
    assert_eq!(vehicles.sum(|s| &s.outstanding), 0);
    drop(restarted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_outage_under_load_loses_nothing_and_drains_when_kafka_returns() {
    let dir = tempfile::tempdir().expect("tmp");
    let cluster = KafkaCluster::start(1, &dir.path().join("kafka"));
    let ns = format!("o{:08x}.", rand::random::<u32>());
    let (config, path) = gateway_files(&ns, dir.path(), cluster.bootstrap());
    let gateway = GatewayProcess::start(&path, &dir.path().join("gateway.log"));
    let n = 200;
    let vehicles = Vehicles::start(
        n,
        config.mqtt.listen.expect("mqtt"),
        config.mqtt.listen_v5.expect("mqtt5"),
        Duration::from_millis(500),
    );
    vehicles
        .wait_acknowledged(4 * n as u64, Duration::from_secs(60))
        .await;

    cluster.stop();
    let outage = Duration::from_secs(20);
    tokio::time::sleep(outage).await;
    let kept = vehicles.sum(|s| &s.outstanding);
    cluster.restart_node(1);
    let back = Instant::now();
    let made_before = vehicles.made_counts();
    let deadline = back + Duration::from_secs(120);
    while !vehicles.acknowledged_up_to(&made_before) {
        assert!(
            Instant::now() < deadline,
            "not drained 120 s after Kafka returned: {:?}",
            vehicles.stats
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drained = back.elapsed();
    let rss = gateway.peak_rss_mib();
    let vehicles = vehicles.stop().await;
    let made = vehicles.made();
    let seen = frames_in_kafka(
        cluster.bootstrap(),
        &format!("{ns}telegate.loadgen"),
        &vehicles.vins,
        &made,
        Duration::from_secs(30),
    )
    .await;
    let lost = missing(&made, &seen);
    println!(
        "{n} vehicles, Kafka away {} s: {kept} frames kept by the vehicles at the end of the outage; drained {:.1} s after Kafka was back; gateway peak RSS {rss:.0} MiB; {} frames made, {lost} missing, {} duplicates; vehicles: {:?}",
        outage.as_secs(),
        drained.as_secs_f64(),
        made.len(),
        duplicates(&seen),
        vehicles.stats
    );
    assert_eq!(lost, 0, "frames lost in a Kafka outage");
    drop(gateway);
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_kafka_did_not_take_in_time_come_back_to_the_vehicles_and_go_out_again() {
    let dir = tempfile::tempdir().expect("tmp");
    let cluster = KafkaCluster::start(1, &dir.path().join("kafka"));
    let ns = format!("t{:08x}.", rand::random::<u32>());
    let (mut config, _) = gateway_files(&ns, dir.path(), cluster.bootstrap());
    // Records Kafka has not taken within 3 s fail: MQTT 5 vehicles get reason 0x83, 3.1.1
    // vehicles are disconnected.
    config.kafka.message_timeout_ms = 3_000;
    let path = dir.path().join("gateway.json");
    std::fs::write(&path, serde_json::to_vec(&config).expect("JSON")).expect("write");
    let _gateway = GatewayProcess::start(&path, &dir.path().join("gateway.log"));
    let n = 50;
    let vehicles = Vehicles::start(
        n,
        config.mqtt.listen.expect("mqtt"),
        config.mqtt.listen_v5.expect("mqtt5"),
        Duration::from_millis(500),
    );
    vehicles
        .wait_acknowledged(2 * n as u64, Duration::from_secs(60))
        .await;
    let connects = vehicles.stats[0].connects.load(Relaxed);
    assert_eq!(
        connects,
        n as u64 / 2,
        "every MQTT 3.1.1 vehicle connected once"
    );

    cluster.stop();
    tokio::time::sleep(Duration::from_secs(10)).await;
    cluster.restart_node(1);
    let before = vehicles.sum(|s| &s.acknowledged);
    vehicles
        .wait_acknowledged(before + 4 * n as u64, Duration::from_secs(120))
        .await;
    let vehicles = vehicles.stop().await;
    let made = vehicles.made();
    let seen = frames_in_kafka(
        cluster.bootstrap(),
        &format!("{ns}telegate.loadgen"),
        &vehicles.vins,
        &made,
        Duration::from_secs(30),
    )
    .await;
    let lost = missing(&made, &seen);
    let [v4, v5] = &vehicles.stats;
    println!(
        "{} frames made, {lost} missing, {} duplicates; MQTT 3.1.1 vehicles: {v4:?}; MQTT 5 vehicles: {v5:?}",
        made.len(),
        duplicates(&seen)
    );
    assert_eq!(lost, 0, "frames lost after delivery failures");
    // The failures did reach the vehicles, both ways.
    assert!(
        v5.failure_codes.load(Relaxed) > 0,
        "no MQTT 5 failure reason"
    );
    assert!(
        v4.connects.load(Relaxed) > connects,
        "no MQTT 3.1.1 vehicle was disconnected"
    );
}
