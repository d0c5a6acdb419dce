//! Smart service: per vehicle, the component status and the maintenance needs derived from
//! status and DTC records; an event whenever a need appears or clears. Its topic never
//! carries location, and this service never asks for it.

use crate::record::Record;
use crate::runner::{Output, Service};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use telegate_frame::pb::{self, vehicle_frame::Body};

/// Thresholds that make a need. Km and percentages as the frames carry them.
#[derive(Debug, Clone)]
pub struct Thresholds {
    /// A service is due within this distance.
    pub service_due_km: f64,
    /// 12 V board-net battery weaker than this.
    pub lv_battery_v: f32,
    pub tyre_kpa: f32,
    /// Traction battery state of health below this.
    pub hv_soh_pct: f32,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            service_due_km: 1_000.0,
            lv_battery_v: 11.8,
            tyre_kpa: 200.0,
            hv_soh_pct: 80.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
struct Need {
    severity: &'static str,
    since_ms: i64,
}

#[derive(Debug, Default, serde::Serialize)]
struct Vehicle {
    /// Needs from status records and from DTC scans, kept apart: a scan replaces only DTC
    /// needs, a status only the others.
    status_needs: BTreeMap<String, Need>,
    dtc_needs: BTreeMap<String, Need>,
    odometer_km: Option<f64>,
    last_status_seq: u64,
    last_scan_seq: u64,
}

#[derive(Debug)]
pub struct Maintenance {
    purposes: Vec<String>,
    thresholds: Thresholds,
    vehicles: HashMap<String, Vehicle>,
}

impl Maintenance {
    pub fn new(purposes: Vec<String>, thresholds: Thresholds) -> Self {
        Self {
            purposes,
            thresholds,
            vehicles: HashMap::new(),
        }
    }

    fn status_needs(&self, s: &pb::Status) -> BTreeMap<String, &'static str> {
        let t = &self.thresholds;
        let mut needs = BTreeMap::new();
        if s.service_due_km.is_some_and(|km| km <= t.service_due_km) {
            needs.insert("service-due".to_owned(), "warning");
        }
        if let Some(f) = &s.fluids {
            for (name, level) in [
                ("engine-oil", f.engine_oil),
                ("coolant", f.coolant),
                ("brake-fluid", f.brake_fluid),
                ("washer-fluid", f.washer_fluid),
            ] {
                match pb::FluidLevel::try_from(level) {
                    Ok(pb::FluidLevel::Low) => needs.insert(format!("fluid:{name}"), "warning"),
                    Ok(pb::FluidLevel::Critical) => {
                        needs.insert(format!("fluid:{name}"), "critical")
                    }
                    _ => None,
                };
            }
        }
        if s.lv_battery
            .as_ref()
            .and_then(|b| b.voltage_v)
            .is_some_and(|v| v < t.lv_battery_v)
        {
            needs.insert("lv-battery-weak".to_owned(), "warning");
        }
        if let Some(ty) = &s.tyres {
            for (pos, kpa) in [
                ("front-left", ty.front_left_kpa),
                ("front-right", ty.front_right_kpa),
                ("rear-left", ty.rear_left_kpa),
                ("rear-right", ty.rear_right_kpa),
            ] {
                if kpa.is_some_and(|k| k < t.tyre_kpa) {
                    needs.insert(format!("tyre-pressure:{pos}"), "warning");
                }
            }
        }
        if s.hv_battery
            .as_ref()
            .and_then(|b| b.soh_pct)
            .is_some_and(|h| h < t.hv_soh_pct)
        {
            needs.insert("hv-battery-health".to_owned(), "warning");
        }
        needs
    }
}

/// DTCs that need a workshop: confirmed, active or pending, of warning or critical severity.
fn dtc_needs(d: &pb::Diagnostics) -> BTreeMap<String, &'static str> {
    d.dtcs
        .iter()
        .filter(|c| {
            matches!(
                pb::DtcStatus::try_from(c.status),
                Ok(pb::DtcStatus::Confirmed | pb::DtcStatus::Active | pb::DtcStatus::Pending)
            )
        })
        .filter_map(|c| match pb::DtcSeverity::try_from(c.severity) {
            Ok(pb::DtcSeverity::Critical) => Some((format!("dtc:{}", c.code), "critical")),
            Ok(pb::DtcSeverity::Warning) => Some((format!("dtc:{}", c.code), "warning")),
            _ => None,
        })
        .collect()
}

/// Replaces `current` with `next`, returning an event per need that appeared or cleared.
fn diff(
    subject: &str,
    record: &Record,
    current: &mut BTreeMap<String, Need>,
    next: BTreeMap<String, &'static str>,
    odometer_km: Option<f64>,
) -> Vec<Output> {
    let event = |need: &str, state: &str, severity: &str| Output {
        key: Some(subject.to_owned()),
        value: json!({
            "type": "maintenance-need", "subject": subject, "need": need, "state": state,
            "severity": severity, "at_ms": record.captured_at_ms, "seq": record.seq,
            "odometer_km": odometer_km,
        }),
    };
    let mut out = Vec::new();
    current.retain(|need, n| {
        let keep = next.contains_key(need);
        if !keep {
            out.push(event(need, "cleared", n.severity));
        }
        keep
    });
    for (need, severity) in next {
        if let std::collections::btree_map::Entry::Vacant(slot) = current.entry(need) {
            out.push(event(slot.key(), "appeared", severity));
            slot.insert(Need {
                severity,
                since_ms: record.captured_at_ms,
            });
        }
    }
    out
}

impl Service for Maintenance {
    fn purposes(&self) -> &[String] {
        &self.purposes
    }

    fn handle(&mut self, record: &Record, _now_ms: i64) -> Vec<Output> {
        let Some(subject) = record.subject.clone() else {
            return Vec::new();
        };
        let seq = record.seq.unwrap_or_default();
        match record.frame.body.as_ref() {
            Some(Body::Status(s)) => {
                let next = self.status_needs(s);
                let v = self.vehicles.entry(subject.clone()).or_default();
                // An older status arriving late says nothing about now.
                if seq < v.last_status_seq {
                    return Vec::new();
                }
                v.last_status_seq = seq;
                v.odometer_km = s.odometer_km.or(v.odometer_km);
                let odo = v.odometer_km;
                diff(&subject, record, &mut v.status_needs, next, odo)
            }
            Some(Body::Diagnostics(d)) => {
                let next = dtc_needs(d);
                let v = self.vehicles.entry(subject.clone()).or_default();
                if seq < v.last_scan_seq {
                    return Vec::new();
                }
                v.last_scan_seq = seq;
                let odo = v.odometer_km;
                diff(&subject, record, &mut v.dtc_needs, next, odo)
            }
            _ => Vec::new(),
        }
    }

    fn tick(&mut self, _now_ms: i64) -> Vec<Output> {
        Vec::new()
    }

    fn view(&self) -> serde_json::Value {
        let vehicles: BTreeMap<&String, serde_json::Value> = self
            .vehicles
            .iter()
            .map(|(k, v)| {
                let needs: BTreeMap<&String, &Need> =
                    v.status_needs.iter().chain(&v.dtc_needs).collect();
                (k, json!({ "odometer_km": v.odometer_km, "needs": needs }))
            })
            .collect();
        json!({ "service": "smart-service", "vehicles": vehicles })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use telegate_frame::pb::VehicleFrame;

    fn record(seq: u64, body: Body) -> Record {
        Record {
            topic: "t".into(),
            subject: Some("veh".into()),
            purpose: "component-status".into(),
            seq: Some(seq),
            captured_at_ms: seq as i64,
            schema_id: None,
            frame: VehicleFrame {
                body: Some(body),
                ..Default::default()
            },
        }
    }

    fn scan(codes: &[(&str, pb::DtcSeverity)]) -> Body {
        Body::Diagnostics(pb::Diagnostics {
            dtcs: codes
                .iter()
                .map(|(c, s)| pb::Dtc {
                    code: (*c).into(),
                    status: pb::DtcStatus::Confirmed as i32,
                    severity: *s as i32,
                    ..Default::default()
                })
                .collect(),
            trigger: pb::DiagnosticsTrigger::IgnitionScan as i32,
        })
    }

    fn states(out: &[Output]) -> Vec<String> {
        out.iter()
            .map(|o| {
                format!(
                    "{}:{}",
                    o.value["need"].as_str().unwrap_or(""),
                    o.value["state"].as_str().unwrap_or("")
                )
            })
            .collect()
    }

    #[test]
    fn needs_appear_and_clear_once() {
        let mut m = Maintenance::new(vec!["component-status".into()], Thresholds::default());
        let out = m.handle(
            &record(
                1,
                scan(&[
                    ("P0301", pb::DtcSeverity::Warning),
                    ("P0420", pb::DtcSeverity::Info),
                ]),
            ),
            0,
        );
        assert_eq!(
            states(&out),
            ["dtc:P0301:appeared"],
            "info DTCs make no need"
        );
        assert!(
            m.handle(&record(2, scan(&[("P0301", pb::DtcSeverity::Warning)])), 0)
                .is_empty()
        );
        let low = Body::Status(pb::Status {
            service_due_km: Some(400.0),
            lv_battery: Some(pb::LowVoltageBattery {
                voltage_v: Some(11.5),
                soc_pct: None,
            }),
            ..Default::default()
        });
        let mut got = states(&m.handle(&record(3, low), 0));
        got.sort();
        assert_eq!(got, ["lv-battery-weak:appeared", "service-due:appeared"]);
        assert_eq!(
            states(&m.handle(&record(4, scan(&[])), 0)),
            ["dtc:P0301:cleared"]
        );
        // A late, older status changes nothing.
        assert!(
            m.handle(&record(2, Body::Status(pb::Status::default())), 0)
                .is_empty()
        );
    }
}
