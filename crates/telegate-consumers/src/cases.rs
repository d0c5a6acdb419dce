//! Breakdown call: one case per call id from the snapshot (vehicle state, active DTCs, last
//! position) for the assistance service, and a dealer copy only from the dealer topic, which
//! telegate fills only when the dealer scope was consented. Cases expire after 7 days here
//! too, as the notice promises for the transfer [002 L18].

use crate::record::Record;
use crate::runner::{Output, Service};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;
use telegate_frame::pb::vehicle_frame::Body;

#[derive(Debug, Clone, serde::Serialize)]
struct Case {
    call_id: String,
    audience: &'static str,
    subject: String,
    opened_at_ms: i64,
    case: serde_json::Value,
}

#[derive(Debug)]
pub struct Cases {
    /// purpose → audience ("assistance", "dealer").
    audiences: Vec<(String, &'static str)>,
    purposes: Vec<String>,
    retention: Duration,
    /// (audience, call id) → case.
    cases: BTreeMap<(&'static str, String), Case>,
}

impl Cases {
    /// `assistance` and `dealer` name the purposes whose records feed each audience.
    pub fn new(assistance: &str, dealer: &str, retention: Duration) -> Self {
        Self {
            audiences: vec![
                (assistance.to_owned(), "assistance"),
                (dealer.to_owned(), "dealer"),
            ],
            purposes: vec![assistance.to_owned(), dealer.to_owned()],
            retention,
            cases: BTreeMap::new(),
        }
    }
}

impl Service for Cases {
    fn purposes(&self) -> &[String] {
        &self.purposes
    }

    fn handle(&mut self, record: &Record, _now_ms: i64) -> Vec<Output> {
        let Some(Body::Breakdown(call)) = record.frame.body.as_ref() else {
            return Vec::new();
        };
        let Some(audience) = self
            .audiences
            .iter()
            .find(|(p, _)| *p == record.purpose)
            .map(|(_, a)| *a)
        else {
            return Vec::new();
        };
        let key = (audience, call.call_id.clone());
        if self.cases.contains_key(&key) {
            return Vec::new(); // one case per call
        }
        let snap = call.snapshot.clone().unwrap_or_default();
        let status = snap.status.unwrap_or_default();
        let case = json!({
            "vehicle_state": {
                "odometer_km": status.odometer_km,
                "fuel_level_pct": status.fuel_level_pct,
                "battery_soc_pct": status.battery_soc_pct,
                "ignition": status.ignition,
                "lv_battery_v": status.lv_battery.and_then(|b| b.voltage_v),
            },
            "active_dtcs": snap.dtcs.iter().map(|d| json!({"code": d.code, "ecu": d.ecu, "severity": d.severity})).collect::<Vec<_>>(),
            // Present only where the purpose may see it (the dealer copy has none).
            "last_position": snap.location.map(|l| json!({"lat_deg": l.lat_deg, "lon_deg": l.lon_deg, "accuracy_m": l.accuracy_m})),
            "trigger": call.trigger,
        });
        let subject = record.subject.clone().unwrap_or_default();
        let c = Case {
            call_id: call.call_id.clone(),
            audience,
            subject: subject.clone(),
            opened_at_ms: record.captured_at_ms,
            case,
        };
        let out = Output {
            key: Some(subject),
            value: json!({"type": "case-opened", "call_id": c.call_id, "audience": audience,
                          "subject": c.subject, "opened_at_ms": c.opened_at_ms, "case": c.case}),
        };
        self.cases.insert(key, c);
        vec![out]
    }

    fn tick(&mut self, now_ms: i64) -> Vec<Output> {
        let horizon = now_ms - self.retention.as_millis() as i64;
        let mut out = Vec::new();
        self.cases.retain(|_, c| {
            let keep = c.opened_at_ms >= horizon;
            if !keep {
                out.push(Output {
                    key: Some(c.subject.clone()),
                    value: json!({"type": "case-expired", "call_id": c.call_id, "audience": c.audience}),
                });
            }
            keep
        });
        out
    }

    fn view(&self) -> serde_json::Value {
        json!({ "service": "breakdown-call", "cases": self.cases.values().collect::<Vec<_>>() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use telegate_frame::pb::{self, VehicleFrame};

    fn call(purpose: &str, id: &str, at: i64) -> Record {
        Record {
            topic: "t".into(),
            subject: Some("VIN".into()),
            purpose: purpose.into(),
            seq: Some(1),
            captured_at_ms: at,
            schema_id: None,
            frame: VehicleFrame {
                body: Some(Body::Breakdown(pb::BreakdownCall {
                    call_id: id.into(),
                    ..Default::default()
                })),
                ..Default::default()
            },
        }
    }

    #[test]
    fn one_case_per_call_and_audience_expiring_after_retention() {
        let day = 86_400_000;
        let mut c = Cases::new("a", "d", Duration::from_secs(7 * 86_400));
        assert_eq!(c.handle(&call("a", "c1", 0), 0).len(), 1);
        assert!(
            c.handle(&call("a", "c1", 5), 0).is_empty(),
            "a second snapshot is the same case"
        );
        assert_eq!(
            c.handle(&call("d", "c1", 0), 0).len(),
            1,
            "the dealer copy is its own case"
        );
        assert!(c.tick(6 * day).is_empty());
        let expired = c.tick(8 * day);
        assert_eq!(expired.len(), 2);
        assert!(expired.iter().all(|o| o.value["type"] == "case-expired"));
    }
}
