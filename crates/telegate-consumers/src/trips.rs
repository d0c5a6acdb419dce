//! Trip log: trips from ignition transitions and positions. Start and end (at whatever
//! precision the purpose delivers), great-circle distance, duration, average and maximum
//! speed, energy used. Records may arrive out of order or twice: everything is kept by
//! capture time, and a trip closes only `grace` after its ignition-off arrived.

use crate::record::Record;
use crate::runner::{Output, Service};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use telegate_frame::geo::haversine_km;
use telegate_frame::pb::{self, vehicle_frame::Body};

#[derive(Debug, Clone, Copy)]
struct Ignition {
    on: bool,
    energy_pct: Option<f32>,
    battery: bool,
    arrived_ms: i64,
}

#[derive(Debug, Clone, Copy)]
struct Point {
    lat: f64,
    lon: f64,
    speed_kmh: Option<f32>,
}

#[derive(Debug, Default)]
struct Vehicle {
    ignitions: BTreeMap<i64, Ignition>,
    points: BTreeMap<(i64, u64), Point>,
    /// Capture time up to which trips were emitted: positions before it arrive too late.
    closed_until: i64,
}

#[derive(Debug)]
pub struct Trips {
    purposes: Vec<String>,
    grace: Duration,
    vehicles: HashMap<String, Vehicle>,
    emitted: Vec<serde_json::Value>,
    /// Positions that arrived after their trip had closed.
    pub late_points: u64,
    /// Trips that ended without an ignition-off (e.g. a breakdown), dropped.
    pub abandoned: u64,
}

impl Trips {
    pub fn new(purposes: Vec<String>, grace: Duration) -> Self {
        Self {
            purposes,
            grace,
            vehicles: HashMap::new(),
            emitted: Vec::new(),
            late_points: 0,
            abandoned: 0,
        }
    }
}

fn trip(
    subject: &str,
    on: (i64, Ignition),
    off: (i64, Ignition),
    points: &[Point],
) -> serde_json::Value {
    let distance_km: f64 = points
        .windows(2)
        .map(|w| haversine_km((w[0].lat, w[0].lon), (w[1].lat, w[1].lon)))
        .sum();
    let duration_s = (off.0 - on.0) as f64 / 1000.0;
    let max_speed = points
        .iter()
        .filter_map(|p| p.speed_kmh)
        .fold(None, |m: Option<f32>, s| Some(m.map_or(s, |m| m.max(s))));
    let pos = |p: Option<&Point>| p.map(|p| json!({"lat_deg": p.lat, "lon_deg": p.lon}));
    json!({
        "type": "trip",
        "subject": subject,
        "started_at_ms": on.0,
        "ended_at_ms": off.0,
        "duration_s": duration_s,
        "distance_km": distance_km,
        "avg_speed_kmh": if duration_s > 0.0 { distance_km / (duration_s / 3600.0) } else { 0.0 },
        "max_speed_kmh": max_speed,
        "start": pos(points.first()),
        "end": pos(points.last()),
        "energy_used_pct": on.1.energy_pct.zip(off.1.energy_pct).map(|(a, b)| a - b),
        "energy_source": if on.1.battery { "battery" } else { "fuel" },
        "positions": points.len(),
    })
}

impl Service for Trips {
    fn purposes(&self) -> &[String] {
        &self.purposes
    }

    fn handle(&mut self, record: &Record, now_ms: i64) -> Vec<Output> {
        let Some(subject) = record.subject.clone() else {
            return Vec::new();
        };
        let v = self.vehicles.entry(subject).or_default();
        let t = record.captured_at_ms;
        match record.frame.body.as_ref() {
            Some(Body::Status(s)) => {
                let on = match pb::StatusTrigger::try_from(s.trigger) {
                    Ok(pb::StatusTrigger::IgnitionOn) => true,
                    Ok(pb::StatusTrigger::IgnitionOff) => false,
                    _ => return Vec::new(),
                };
                v.ignitions.insert(
                    t,
                    Ignition {
                        on,
                        energy_pct: s.battery_soc_pct.or(s.fuel_level_pct),
                        battery: s.battery_soc_pct.is_some(),
                        arrived_ms: now_ms,
                    },
                );
            }
            Some(Body::Location(l)) => {
                if t <= v.closed_until {
                    self.late_points += 1;
                } else {
                    let point = Point {
                        lat: l.lat_deg,
                        lon: l.lon_deg,
                        speed_kmh: l.speed_kmh,
                    };
                    v.points.insert((t, record.seq.unwrap_or_default()), point);
                }
            }
            _ => {}
        }
        Vec::new()
    }

    fn tick(&mut self, now_ms: i64) -> Vec<Output> {
        let grace = self.grace.as_millis() as i64;
        let mut out = Vec::new();
        for (subject, v) in &mut self.vehicles {
            loop {
                let mut it = v.ignitions.iter().map(|(t, i)| (*t, *i));
                let Some(first) = it.next() else { break };
                if !first.1.on {
                    // An ignition-off with no start before it: nothing to pair it with.
                    v.ignitions.remove(&first.0);
                    continue;
                }
                let Some(next) = it.next() else { break };
                if next.1.on {
                    // Started again without stopping (a breakdown): the first trip is lost.
                    self.abandoned += 1;
                    v.ignitions.remove(&first.0);
                    v.points.retain(|(t, _), _| *t >= next.0);
                    continue;
                }
                if next.1.arrived_ms > now_ms - grace {
                    break; // let late positions of this trip arrive
                }
                let points: Vec<Point> = v
                    .points
                    .range((first.0, 0)..=(next.0, u64::MAX))
                    .map(|(_, p)| *p)
                    .collect();
                let value = trip(subject, first, next, &points);
                self.emitted.push(value.clone());
                out.push(Output {
                    key: Some(subject.clone()),
                    value,
                });
                v.ignitions.retain(|t, _| *t > next.0);
                v.points.retain(|(t, _), _| *t > next.0);
                v.closed_until = next.0;
            }
        }
        out
    }

    fn view(&self) -> serde_json::Value {
        json!({
            "service": "trip-log",
            "trips": self.emitted,
            "late_points": self.late_points,
            "abandoned_trips": self.abandoned,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use telegate_frame::pb::VehicleFrame;

    fn rec(seq: u64, t: i64, body: Body) -> Record {
        Record {
            topic: "t".into(),
            subject: Some("p".into()),
            purpose: "trip-log".into(),
            seq: Some(seq),
            captured_at_ms: t,
            schema_id: None,
            frame: VehicleFrame {
                body: Some(body),
                ..Default::default()
            },
        }
    }

    fn ignition(on: bool, fuel: f32) -> Body {
        Body::Status(pb::Status {
            fuel_level_pct: Some(fuel),
            trigger: if on {
                pb::StatusTrigger::IgnitionOn
            } else {
                pb::StatusTrigger::IgnitionOff
            } as i32,
            ..Default::default()
        })
    }

    fn at(lat: f64, speed: f32) -> Body {
        Body::Location(pb::Location {
            lat_deg: lat,
            lon_deg: 9.0,
            speed_kmh: Some(speed),
            ..Default::default()
        })
    }

    #[test]
    fn out_of_order_delivery_builds_the_same_trip() {
        let frames = vec![
            rec(1, 0, ignition(true, 50.0)),
            rec(2, 1_000, at(48.0, 30.0)),
            rec(3, 2_000, at(48.01, 60.0)),
            rec(4, 3_000, at(48.02, 40.0)),
            rec(5, 3_600_000, ignition(false, 45.0)),
        ];
        let mut in_order = Trips::new(vec![], Duration::from_secs(5));
        for f in &frames {
            in_order.handle(f, 0);
        }
        let mut shuffled = Trips::new(vec![], Duration::from_secs(5));
        for i in [4, 2, 0, 3, 1] {
            shuffled.handle(&frames[i], 0);
        }
        assert!(
            in_order.tick(1_000).is_empty(),
            "waits out the grace period"
        );
        let a = in_order.tick(10_000);
        let b = shuffled.tick(10_000);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].value, b[0].value);
        let t = &a[0].value;
        let d = t["distance_km"].as_f64().expect("distance");
        assert!((d - 2.0 * 1.112).abs() < 0.01, "{d}");
        assert_eq!(t["max_speed_kmh"], 60.0);
        assert_eq!(t["energy_used_pct"], 5.0);
        assert_eq!(t["duration_s"], 3600.0);
        // A position of the closed trip arriving now is late, not a new trip.
        in_order.handle(&rec(6, 2_500, at(48.5, 10.0)), 20_000);
        assert_eq!(in_order.late_points, 1);
    }

    #[test]
    fn a_trip_without_ignition_off_is_abandoned() {
        let mut t = Trips::new(vec![], Duration::ZERO);
        t.handle(&rec(1, 0, ignition(true, 50.0)), 0);
        t.handle(&rec(2, 10, at(48.0, 30.0)), 0);
        t.handle(&rec(3, 100, ignition(true, 49.0)), 0);
        t.handle(&rec(4, 200, ignition(false, 48.0)), 0);
        let out = t.tick(1_000);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].value["started_at_ms"], 100);
        assert_eq!(t.abandoned, 1);
    }
}
