//! Every frame published is remembered by (vehicle, seq) until it is observed: exact loss and
//! duplicate counts, and latency from publish to observation.

use hdrhistogram::Histogram;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

#[derive(Debug, Default)]
struct Vehicle {
    pending: HashMap<u64, (Instant, bool)>,
    delivered: u64,
    duplicates: u64,
}

/// Shared by the generator and the observer.
#[derive(Debug)]
pub struct Tracker {
    vins: HashMap<String, usize>,
    vehicles: Vec<Mutex<Vehicle>>,
    hist: Mutex<Histogram<u64>>,
    /// Per second since start: (published, delivered, latency histogram).
    seconds: Mutex<Vec<(u64, u64, Histogram<u64>)>>,
    start: Instant,
    unknown: Mutex<u64>,
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 60 s, three significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
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
            seconds: Mutex::new(Vec::new()),
            start,
            unknown: Mutex::new(0),
        }
    }

    fn second(&self, at: Instant, f: impl FnOnce(&mut (u64, u64, Histogram<u64>))) {
        let s = at.duration_since(self.start).as_secs() as usize;
        if let Ok(mut secs) = self.seconds.lock() {
            while secs.len() <= s {
                secs.push((0, 0, histogram()));
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
            v.pending.insert(seq, (now, measured));
        }
        if measured {
            self.second(now, |s| s.0 += 1);
        }
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
            Some((sent, measured)) => {
                v.delivered += 1;
                if measured {
                    let us = now.duration_since(sent).as_micros().max(1) as u64;
                    if let Ok(mut h) = self.hist.lock() {
                        let _ = h.record(us.min(60_000_000));
                    }
                    drop(v);
                    self.second(now, |s| {
                        s.1 += 1;
                        let _ = s.2.record(us.min(60_000_000));
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

    pub fn latency(&self) -> Histogram<u64> {
        self.hist
            .lock()
            .map(|h| h.clone())
            .unwrap_or_else(|_| histogram())
    }

    /// Per-second series: (second, published, delivered, p50 µs, p99 µs).
    pub fn series(&self) -> Vec<(usize, u64, u64, u64, u64)> {
        self.seconds
            .lock()
            .map(|s| {
                s.iter()
                    .enumerate()
                    .map(|(i, (p, d, h))| {
                        (
                            i,
                            *p,
                            *d,
                            h.value_at_quantile(0.5),
                            h.value_at_quantile(0.99),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
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
}
