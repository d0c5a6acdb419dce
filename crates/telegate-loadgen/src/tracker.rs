//! Every frame published is remembered by (vehicle, seq) until it is observed: exact loss and
//! duplicate counts, latency from publish to observation and from publish to PUBACK, and
//! which lost frames had been acknowledged (a PUBACK the gateway should not have sent).

use hdrhistogram::Histogram;
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use telegate_sim::DeliveryStats;

#[derive(Debug, Clone, Copy)]
struct Sent {
    at: Instant,
    measured: bool,
    acked: bool,
}

#[derive(Debug, Default)]
struct Vehicle {
    pending: HashMap<u64, Sent>,
    delivered: u64,
    duplicates: u64,
}

/// One second of a run.
#[derive(Debug, Clone)]
pub(crate) struct SecondStats {
    pub published: u64,
    pub delivered: u64,
    pub latency: Histogram<u64>,
    pub acked: u64,
    pub ack_latency: Histogram<u64>,
    /// The most frames the vehicles kept unacknowledged at once in this second.
    pub outstanding: u64,
}

impl SecondStats {
    fn new() -> Self {
        Self {
            published: 0,
            delivered: 0,
            latency: histogram(),
            acked: 0,
            ack_latency: histogram(),
            outstanding: 0,
        }
    }
}

/// Shared by the generator and the observer.
#[derive(Debug)]
pub struct Tracker {
    vins: HashMap<String, usize>,
    vehicles: Vec<Mutex<Vehicle>>,
    hist: Mutex<Histogram<u64>>,
    acks: Mutex<Histogram<u64>>,
    seconds: Mutex<Vec<SecondStats>>,
    start: Instant,
    unknown: Mutex<u64>,
    delivery: Arc<DeliveryStats>,
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 60 s, three significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

fn micros(d: Duration) -> u64 {
    (d.as_micros().max(1) as u64).min(60_000_000)
}

impl Tracker {
    pub fn new(vins: &[String], start: Instant) -> Self {
        Self {
            vins: vins
                .iter()
                .enumerate()
                .map(|(i, v)| (v.clone(), i))
                .collect(),
            vehicles: vins
                .iter()
                .map(|_| Mutex::new(Vehicle::default()))
                .collect(),
            hist: Mutex::new(histogram()),
            acks: Mutex::new(histogram()),
            seconds: Mutex::new(Vec::new()),
            start,
            unknown: Mutex::new(0),
            delivery: Arc::default(),
        }
    }

    /// What the vehicles' links count: acknowledged, resent, held back, still kept.
    pub fn delivery(&self) -> Arc<DeliveryStats> {
        self.delivery.clone()
    }

    fn second(&self, at: Instant, f: impl FnOnce(&mut SecondStats)) {
        let s = at.duration_since(self.start).as_secs() as usize;
        if let Ok(mut secs) = self.seconds.lock() {
            while secs.len() <= s {
                secs.push(SecondStats::new());
            }
            f(&mut secs[s]);
        }
    }

    /// A frame left the vehicle. `measured` is false during warm-up.
    pub fn published(&self, vehicle: usize, seq: u64, measured: bool) {
        let now = Instant::now();
        if let Some(v) = self
            .vehicles
            .get(vehicle)
            .and_then(|m| m.lock().ok())
            .as_mut()
        {
            v.pending.insert(
                seq,
                Sent {
                    at: now,
                    measured,
                    acked: false,
                },
            );
        }
        if measured {
            self.second(now, |s| s.published += 1);
        }
    }

    /// The vehicle got the frame's PUBACK, `latency` after it published it.
    pub fn acked(&self, vehicle: usize, seq: u64, latency: Duration, measured: bool) {
        if let Some(sent) = self
            .vehicles
            .get(vehicle)
            .and_then(|m| m.lock().ok())
            .as_mut()
            .and_then(|v| v.pending.get_mut(&seq))
        {
            sent.acked = true;
        }
        if measured {
            let us = micros(latency);
            if let Ok(mut h) = self.acks.lock() {
                let _ = h.record(us);
            }
            self.second(Instant::now(), |s| {
                s.acked += 1;
                let _ = s.ack_latency.record(us);
            });
        }
    }

    /// Notes how many frames the vehicles keep unacknowledged right now.
    pub fn sample(&self) {
        let outstanding = self.delivery.outstanding.load(Relaxed);
        self.second(Instant::now(), |s| {
            s.outstanding = s.outstanding.max(outstanding);
        });
    }

    /// A frame arrived on the far side.
    pub fn observed(&self, vin: &str, seq: u64) {
        let now = Instant::now();
        let Some(&i) = self.vins.get(vin) else {
            if let Ok(mut u) = self.unknown.lock() {
                *u += 1;
            }
            return;
        };
        let Ok(mut v) = self.vehicles[i].lock() else {
            return;
        };
        match v.pending.remove(&seq) {
            Some(sent) => {
                v.delivered += 1;
                if sent.measured {
                    let us = micros(now.duration_since(sent.at));
                    if let Ok(mut h) = self.hist.lock() {
                        let _ = h.record(us);
                    }
                    drop(v);
                    self.second(now, |s| {
                        s.delivered += 1;
                        let _ = s.latency.record(us);
                    });
                }
            }
            None => v.duplicates += 1,
        }
    }

    /// (delivered, still pending = lost if the run is over, duplicates, unknown).
    pub fn totals(&self) -> (u64, u64, u64, u64) {
        let mut t = (0, 0, 0, 0);
        for v in self.vehicles.iter().filter_map(|m| m.lock().ok()) {
            t.0 += v.delivered;
            t.1 += v.pending.len() as u64;
            t.2 += v.duplicates;
        }
        t.3 = self.unknown.lock().map(|u| *u).unwrap_or_default();
        t
    }

    /// Frames acknowledged with a PUBACK and not observed: once the run is over, frames the
    /// gateway acknowledged and lost.
    pub fn acked_not_observed(&self) -> u64 {
        self.vehicles
            .iter()
            .filter_map(|m| m.lock().ok())
            .map(|v| v.pending.values().filter(|s| s.acked).count() as u64)
            .sum()
    }

    /// Publish to observation, measured frames.
    pub fn latency(&self) -> Histogram<u64> {
        self.hist
            .lock()
            .map(|h| h.clone())
            .unwrap_or_else(|_| histogram())
    }

    /// Publish to PUBACK, measured frames.
    pub fn ack_latency(&self) -> Histogram<u64> {
        self.acks
            .lock()
            .map(|h| h.clone())
            .unwrap_or_else(|_| histogram())
    }

    pub(crate) fn seconds(&self) -> Vec<SecondStats> {
        self.seconds.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_duplicates_and_latency_are_exact() {
        let t = Tracker::new(&["A".into(), "B".into()], Instant::now());
        for seq in 1..=3 {
            t.published(0, seq, true);
        }
        t.published(1, 1, false);
        t.observed("A", 1);
        t.observed("A", 1);
        t.observed("A", 3);
        t.observed("B", 1);
        t.observed("Z", 9);
        assert_eq!(t.totals(), (3, 1, 1, 1));
        assert_eq!(t.latency().len(), 2, "warm-up frames are not measured");
    }

    #[test]
    fn an_acknowledged_frame_never_observed_is_told_apart() {
        let t = Tracker::new(&["A".into()], Instant::now());
        for seq in 1..=3 {
            t.published(0, seq, true);
        }
        t.acked(0, 1, Duration::from_millis(3), true);
        t.acked(0, 2, Duration::from_millis(5), true);
        t.observed("A", 1);
        assert_eq!(t.totals().1, 2, "two not observed");
        assert_eq!(t.acked_not_observed(), 1, "frame 2 was acknowledged");
        assert_eq!(t.ack_latency().len(), 2);
        assert_eq!(t.seconds()[0].acked, 2);
    }
}
