//! Vehicles that keep every frame until its PUBACK (telegate-sim's link), and what of their
//! frames is in Kafka.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use telegate_frame::pb::{self, vehicle_frame::Body};
use telegate_sim::{DeliveryStats, Link, LinkConfig, MqttVersion, Update};
use telegate_tests::*;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::cluster::Haproxy;

/// What one vehicle made and got acknowledged.
#[derive(Debug, Default)]
struct Log {
    made: u64,
    acked: u64,
}

/// Vehicles that each make one status frame per `period` and keep it until its PUBACK.
pub(crate) struct Fleet {
    pub(crate) vins: Vec<String>,
    logs: Arc<Vec<Mutex<Log>>>,
    pub(crate) stats: Arc<DeliveryStats>,
    producing: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Fleet {
    pub(crate) fn start(n: usize, lb: &Haproxy, period: Duration) -> Self {
        let vins: Vec<String> = (0..n).map(|_| unique_vin()).collect();
        let logs: Arc<Vec<Mutex<Log>>> = Arc::new((0..n).map(|_| Mutex::default()).collect());
        let stats = Arc::new(DeliveryStats::default());
        let (producing, rx) = watch::channel(true);
        let mut tasks = JoinSet::new();
        for (i, vin) in vins.iter().enumerate() {
            let (version, addr) = match i % 2 {
                0 => (MqttVersion::V311, lb.mqtt),
                _ => (MqttVersion::V5, lb.mqtt5),
            };
            let mut cfg = LinkConfig::new("127.0.0.1", addr.port(), format!("lb-{i}"));
            cfg.version = version;
            cfg.reconnect_after = Duration::from_millis(500);
            let stagger = period.mul_f64(i as f64 / n as f64);
            tasks.spawn(vehicle(
                vin.clone(),
                cfg,
                stats.clone(),
                (logs.clone(), i),
                (period, stagger),
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

    pub(crate) fn acknowledged(&self) -> u64 {
        self.stats.acknowledged.load(Relaxed)
    }

    pub(crate) async fn wait_acknowledged(&self, frames: u64, within: Duration) {
        let deadline = Instant::now() + within;
        while self.acknowledged() < frames {
            assert!(
                Instant::now() < deadline,
                "fewer than {frames} frames acknowledged within {within:?}: {:?}",
                self.stats
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every (VIN, seq) the vehicles made.
    pub(crate) fn made(&self) -> BTreeSet<(String, u64)> {
        self.vins
            .iter()
            .zip(self.logs.iter())
            .flat_map(|(vin, log)| {
                let made = log.lock().expect("log").made;
                (1..=made).map(move |s| (vin.clone(), s))
            })
            .collect()
    }

    /// Stops making frames, waits until the vehicles hold nothing (or a minute without a
    /// PUBACK), and disconnects them.
    pub(crate) async fn stop(mut self) -> Self {
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
    (period, stagger): (Duration, Duration),
    mut producing: watch::Receiver<bool>,
) {
    let record = |update: Update<u64>| {
        if let Update::Acked(_) = update {
            logs[i].lock().expect("log").acked += 1;
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

/// How often each (VIN, seq) of `vins` is in `topic` on the suite's Kafka.
pub(crate) async fn in_kafka(
    topic: &str,
    vins: &[String],
    want: &BTreeSet<(String, u64)>,
    patience: Duration,
) -> HashMap<(String, u64), u32> {
    frames_in_kafka(&kafka(), topic, vins, want, patience).await
}

/// How many vehicles the kill runs with: `TELEGATE_LB_VEHICLES`, 200 by default.
pub(crate) fn fleet_size() -> usize {
    std::env::var("TELEGATE_LB_VEHICLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}
