//! Lean MQTT vehicles: the load generator's own MQTT 3.1.1 publisher, cheap enough that the
//! targets, not the generator, set the ceiling on a shared machine.
//!
//! Each vehicle is a connection (plain TCP, or mutual TLS with its own certificate) and a
//! [`session::Session`]; a few [`shard::Shard`] tasks, one per worker thread, drive all of
//! them. Delivery is what telegate-sim's vehicles promise: every QoS 1 frame is kept from the
//! moment it is made until its PUBACK; a connection that ends is made again after a pause, and
//! every frame it carried without a PUBACK is published again, marked DUP; with a full outbox
//! a vehicle skips its ticks, counted; when the load ends each vehicle waits for its
//! outstanding PUBACKs until none has come for 30 s. The vehicles connect with a
//! clean session: what is not acknowledged they publish again themselves.
//!
//! [`subscriber`] is the far side of a bare broker, written the same way.

mod conn;
mod session;
mod shard;
pub(crate) mod subscriber;
pub(crate) mod wire;

#[cfg(test)]
mod tests;

use crate::generate::LoadConfig;
use crate::tls::FleetTls;
use crate::tracker::Tracker;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use telegate_sim::DeliveryStats;

/// How much each vehicle keeps and waits for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Frames a vehicle keeps unacknowledged before it stops making new ones.
    outbox: usize,
    /// Publishes awaiting their PUBACK at once.
    window: usize,
    /// Once the load has ended, how long a vehicle waits for its outstanding PUBACKs after
    /// the last one came.
    drain_idle: Duration,
}

pub(crate) const LIMITS: Limits = Limits {
    // 100 s of a Kafka outage at 10 frames/s.
    outbox: 1_000,
    // The gateway's window: a 3.1.1 vehicle beyond it would write into a connection nobody
    // reads.
    window: 100,
    drain_idle: Duration::from_secs(30),
};

const KEEP_ALIVE_S: u16 = 60;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause before the next connection attempt, drawn between half and all of this.
const RECONNECT_AFTER: Duration = Duration::from_millis(400);

/// What every shard reads.
#[derive(Debug)]
struct Plan {
    addr: SocketAddr,
    tls: Option<Arc<FleetTls>>,
    load: LoadConfig,
    vins: Vec<String>,
    start: Instant,
    /// No frame is made from here on.
    end: Instant,
    period: Duration,
    limits: Limits,
    tracker: Arc<Tracker>,
    stats: Arc<DeliveryStats>,
}

impl Plan {
    fn pause(&self) -> Duration {
        RECONNECT_AFTER.mul_f64(rand::random_range(0.5..=1.0))
    }
}

/// A shard's changes to the fleet's delivery counters, handed over once per pass rather
/// than once per frame.
#[derive(Debug, Default)]
struct Counts {
    published: u64,
    resent: u64,
    acknowledged: u64,
    held_back: u64,
    connects: u64,
    outstanding: i64,
}

impl Counts {
    fn hand_to(&mut self, stats: &DeliveryStats) {
        let add = |counter: &std::sync::atomic::AtomicU64, n: u64| {
            if n > 0 {
                counter.fetch_add(n, Relaxed);
            }
        };
        add(&stats.published, self.published);
        add(&stats.resent, self.resent);
        add(&stats.acknowledged, self.acknowledged);
        add(&stats.held_back, self.held_back);
        add(&stats.connects, self.connects);
        if self.outstanding > 0 {
            stats
                .outstanding
                .fetch_add(self.outstanding as u64, Relaxed);
        } else if self.outstanding < 0 {
            stats
                .outstanding
                .fetch_sub(self.outstanding.unsigned_abs(), Relaxed);
        }
        *self = Self::default();
    }
}

/// Runs one lean vehicle per VIN against the MQTT target at `addr` until `start` + warm-up +
/// duration and then their drain; returns the frames made. `tls`, if given, has one identity
/// per VIN; `limits` are each vehicle's (the load generator's own: [`LIMITS`]).
pub(crate) async fn run(
    limits: Limits,
    cfg: &LoadConfig,
    addr: SocketAddr,
    tls: Option<Arc<FleetTls>>,
    vins: &[String],
    tracker: Arc<Tracker>,
    start: Instant,
) -> anyhow::Result<u64> {
    let shards = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, vins.len().max(1));
    let plan = Arc::new(Plan {
        addr,
        tls,
        load: cfg.clone(),
        vins: vins.to_vec(),
        start,
        end: start + cfg.warm_up + cfg.duration,
        period: Duration::from_secs_f64(1.0 / cfg.rate.max(0.001)),
        limits,
        stats: tracker.delivery(),
        tracker,
    });
    let mut tasks = tokio::task::JoinSet::new();
    for s in 0..shards {
        let shard = shard::Shard::new(plan.clone(), (s..vins.len()).step_by(shards));
        // A shard serves hundreds of sockets per pass and yields after each pass itself:
        // tokio's per-task budget would make it stop half-way.
        tasks.spawn(tokio::task::unconstrained(shard.run()));
    }
    let mut made = 0;
    while let Some(r) = tasks.join_next().await {
        made += r?;
    }
    Ok(made)
}
