//! Product insights: anonymous aggregates only. DTC frequency by code and day, and charging
//! statistics by day and current, released only for groups of at least `k` vehicles.
//!
//! Its input has no identifier of any kind (a record that has one is refused), so the service
//! cannot tell vehicles apart. It relies on the purpose's `once_per_vehicle` rule instead:
//! telegate forwards at most one record per vehicle, kind and period, so within a period a
//! count of records is a count of vehicles.

use crate::record::Record;
use crate::runner::{Output, Service};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use telegate_frame::pb::{self, vehicle_frame::Body};

#[derive(Debug, Default, Clone, Copy)]
struct Charging {
    vehicles: u64,
    energy_kwh: f64,
}

#[derive(Debug)]
pub struct Insights {
    purposes: Vec<String>,
    k: u64,
    /// (date, code) → vehicles reporting it.
    dtc: BTreeMap<(String, String), u64>,
    /// (date, current) → sessions (= vehicles).
    charging: BTreeMap<(String, String), Charging>,
    /// Group → vehicle count at its last release.
    released: BTreeMap<String, u64>,
    /// Records carrying a key or sequence number: not anonymous, refused.
    pub identified_refused: u64,
}

impl Insights {
    pub fn new(purposes: Vec<String>, k: u64) -> Self {
        Self {
            purposes,
            k: k.max(1),
            dtc: BTreeMap::new(),
            charging: BTreeMap::new(),
            released: BTreeMap::new(),
            identified_refused: 0,
        }
    }

    /// Released aggregates as they stand: only groups of at least k vehicles.
    fn aggregates(&self) -> Vec<(String, u64, serde_json::Value)> {
        let dtc = self
            .dtc
            .iter()
            .filter(|(_, n)| **n >= self.k)
            .map(|((date, code), n)| {
                let id = format!("dtc/{date}/{code}");
                (
                    id,
                    *n,
                    json!({"type": "dtc-frequency", "date": date, "code": code, "vehicles": n}),
                )
            });
        let charging = self
            .charging
            .iter()
            .filter(|(_, c)| c.vehicles >= self.k)
            .map(|((date, current), c)| {
                let id = format!("charging/{date}/{current}");
                let value = json!({
                    "type": "charging", "date": date, "current": current, "vehicles": c.vehicles,
                    "energy_kwh_total": c.energy_kwh,
                    "energy_kwh_mean": c.energy_kwh / c.vehicles as f64,
                });
                (id, c.vehicles, value)
            });
        dtc.chain(charging).collect()
    }
}

/// UTC calendar date of a time in ms (proleptic Gregorian; H. Hinnant's civil_from_days).
pub(crate) fn utc_date(ms: i64) -> String {
    let z = ms.div_euclid(86_400_000) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

impl Service for Insights {
    fn purposes(&self) -> &[String] {
        &self.purposes
    }

    fn handle(&mut self, record: &Record, _now_ms: i64) -> Vec<Output> {
        if record.subject.is_some() || record.seq.is_some() || !record.frame.vin.is_empty() {
            self.identified_refused += 1;
            return Vec::new();
        }
        let date = utc_date(record.captured_at_ms);
        match record.frame.body.as_ref() {
            Some(Body::Diagnostics(d)) => {
                let codes: BTreeSet<&str> = d.dtcs.iter().map(|c| c.code.as_str()).collect();
                for code in codes {
                    *self.dtc.entry((date.clone(), code.to_owned())).or_default() += 1;
                }
            }
            Some(Body::Charging(c)) if c.phase == pb::ChargingPhase::Ended as i32 => {
                let current = match pb::ChargingCurrent::try_from(c.current) {
                    Ok(pb::ChargingCurrent::Ac) => "ac",
                    Ok(pb::ChargingCurrent::Dc) => "dc",
                    _ => "unknown",
                };
                let agg = self.charging.entry((date, current.to_owned())).or_default();
                agg.vehicles += 1;
                agg.energy_kwh += f64::from(c.energy_kwh.unwrap_or_default());
            }
            _ => {}
        }
        Vec::new()
    }

    /// Releases every group that has reached k vehicles and changed since its last release.
    fn tick(&mut self, _now_ms: i64) -> Vec<Output> {
        let mut out = Vec::new();
        for (id, n, value) in self.aggregates() {
            if self.released.get(&id) != Some(&n) {
                self.released.insert(id, n);
                out.push(Output { key: None, value });
            }
        }
        out
    }

    fn view(&self) -> serde_json::Value {
        let released: Vec<serde_json::Value> =
            self.aggregates().into_iter().map(|(_, _, v)| v).collect();
        let groups = self.dtc.len() + self.charging.len();
        json!({
            "service": "product-insights",
            "k": self.k,
            "aggregates": released,
            "groups_below_k": groups - released.len(),
            "identified_records_refused": self.identified_refused,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use telegate_frame::pb::VehicleFrame;

    fn dtc(code: &str, at: i64) -> Record {
        Record {
            topic: "t".into(),
            subject: None,
            purpose: "product-improvement".into(),
            seq: None,
            captured_at_ms: at,
            schema_id: None,
            frame: VehicleFrame {
                body: Some(Body::Diagnostics(pb::Diagnostics {
                    dtcs: vec![
                        pb::Dtc {
                            code: code.into(),
                            ..Default::default()
                        };
                        2
                    ],
                    ..Default::default()
                })),
                ..Default::default()
            },
        }
    }

    #[test]
    fn nothing_below_k_is_released_and_identified_input_is_refused() {
        let mut i = Insights::new(vec![], 3);
        for _ in 0..2 {
            i.handle(&dtc("P0301", 0), 0);
        }
        assert!(i.tick(0).is_empty(), "two vehicles are fewer than k");
        i.handle(&dtc("P0301", 0), 0);
        let out = i.tick(0);
        assert_eq!(out.len(), 1);
        assert_eq!(
            out[0].value["vehicles"], 3,
            "a code listed twice in one record is one vehicle"
        );
        assert_eq!(out[0].key, None);
        assert!(i.tick(0).is_empty(), "released once until it changes");
        let mut identified = dtc("P0301", 0);
        identified.subject = Some("pseudonym".into());
        i.handle(&identified, 0);
        assert_eq!(i.identified_refused, 1);
        assert_eq!(i.view()["groups_below_k"], 0);
    }

    #[test]
    fn dates_are_utc_calendar_days() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(1_790_000_000_000), "2026-09-21");
        assert_eq!(utc_date(951_782_400_000), "2000-02-29");
    }
}
