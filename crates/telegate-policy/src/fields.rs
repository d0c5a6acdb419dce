//! Field allow-lists over the closed frame schema. A pack names fields as `message.field`
//! (`status.odometer_km`, `location.*`); loading compiles them into one bit mask per message
//! type, and shaping clears every field whose bit is off, wherever that message appears
//! (a `status` inside a breakdown snapshot obeys the `status.*` list too).

use telegate_frame::pb;

/// Declares a message's allow-listable fields: their names and the function that clears
/// the ones a mask leaves out. The field list is the message's, in proto order.
macro_rules! message_fields {
    ($names:ident, $clear:ident, $ty:ty, [$($field:ident),* $(,)?]) => {
        const $names: &[&str] = &[$(stringify!($field)),*];

        fn $clear(m: &mut $ty, keep: u64) {
            let mut bit = 0u32;
            $(
                if keep & (1u64 << bit) == 0 {
                    m.$field = Default::default();
                }
                bit += 1;
            )*
            let _ = bit;
        }
    };
}

message_fields!(
    STATUS,
    clear_status,
    pb::Status,
    [
        odometer_km,
        fuel_level_pct,
        battery_soc_pct,
        range_km,
        ignition,
        openings,
        tyres,
        fluids,
        lv_battery,
        hv_battery,
        trigger,
        service_due_km,
    ]
);
message_fields!(
    DIAGNOSTICS,
    clear_diagnostics,
    pb::Diagnostics,
    [dtcs, trigger]
);
message_fields!(
    LOCATION,
    clear_location,
    pb::Location,
    [
        lat_deg,
        lon_deg,
        altitude_m,
        speed_kmh,
        heading_deg,
        accuracy_m,
    ]
);
message_fields!(
    PRIVACY,
    clear_privacy,
    pb::PrivacySettings,
    [
        private_mode,
        offline_mode,
        location_services,
        non_location_services,
        services,
    ]
);
message_fields!(
    BREAKDOWN,
    clear_breakdown,
    pb::BreakdownCall,
    [call_id, trigger, consent, snapshot]
);
message_fields!(
    SNAPSHOT,
    clear_snapshot,
    pb::BreakdownSnapshot,
    [status, dtcs, location]
);
message_fields!(
    CHARGING,
    clear_charging,
    pb::ChargingSession,
    [
        session_id,
        phase,
        energy_kwh,
        max_power_kw,
        soc_start_pct,
        soc_end_pct,
        started_at_ms,
        ended_at_ms,
        evse_id,
        current,
        location,
    ]
);
message_fields!(
    SOFTWARE,
    clear_software,
    pb::SoftwareState,
    [ecus, head_unit_version, map_version, event, campaign_id,]
);

/// The message types a path can start with, in [`FieldMask`] order.
const MESSAGES: [(&str, &[&str]); 8] = [
    ("status", STATUS),
    ("diagnostics", DIAGNOSTICS),
    ("location", LOCATION),
    ("privacy", PRIVACY),
    ("breakdown", BREAKDOWN),
    ("snapshot", SNAPSHOT),
    ("charging", CHARGING),
    ("software", SOFTWARE),
];

/// One bit mask per message type; a set bit keeps the field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldMask([u64; MESSAGES.len()]);

impl FieldMask {
    /// Every field of every message.
    pub fn all() -> Self {
        Self([u64::MAX; MESSAGES.len()])
    }

    /// Compiles `message.field` and `message.*` paths. Unknown paths are returned as errors
    /// (with the valid choices), all of them.
    pub fn compile(paths: &[String]) -> Result<Self, Vec<(usize, String)>> {
        let mut mask = [0u64; MESSAGES.len()];
        let mut errors = Vec::new();
        for (i, path) in paths.iter().enumerate() {
            let Some((msg, field)) = path.split_once('.') else {
                errors.push((i, format!("{path:?} is not message.field or message.*")));
                continue;
            };
            let Some(m) = MESSAGES.iter().position(|(name, _)| *name == msg) else {
                let names: Vec<_> = MESSAGES.iter().map(|(n, _)| *n).collect();
                errors.push((
                    i,
                    format!("no message {msg:?}; messages are {}", names.join(", ")),
                ));
                continue;
            };
            let fields = MESSAGES[m].1;
            if field == "*" {
                mask[m] = u64::MAX;
            } else if let Some(bit) = fields.iter().position(|f| *f == field) {
                mask[m] |= 1 << bit;
            } else {
                errors.push((
                    i,
                    format!(
                        "{msg} has no field {field:?}; fields are {}",
                        fields.join(", ")
                    ),
                ));
            }
        }
        if errors.is_empty() {
            Ok(Self(mask))
        } else {
            Err(errors)
        }
    }

    fn keep(&self, message: usize) -> u64 {
        self.0[message]
    }

    /// Whether `message.field` survives the mask.
    pub fn allows(&self, message: &str, field: &str) -> bool {
        MESSAGES
            .iter()
            .position(|(n, _)| *n == message)
            .is_some_and(|m| {
                MESSAGES[m]
                    .1
                    .iter()
                    .position(|f| *f == field)
                    .is_some_and(|b| self.0[m] & (1 << b) != 0)
            })
    }

    /// Clears every field the mask leaves out, recursively.
    pub fn apply(&self, body: &mut pb::vehicle_frame::Body) {
        use pb::vehicle_frame::Body;
        match body {
            Body::Status(s) => self.status(s),
            Body::Diagnostics(d) => clear_diagnostics(d, self.keep(1)),
            Body::Location(l) => clear_location(l, self.keep(2)),
            Body::Privacy(p) => clear_privacy(p, self.keep(3)),
            Body::Breakdown(b) => {
                clear_breakdown(b, self.keep(4));
                if let Some(snap) = b.snapshot.as_mut() {
                    clear_snapshot(snap, self.keep(5));
                    if let Some(s) = snap.status.as_mut() {
                        self.status(s);
                    }
                    if let Some(l) = snap.location.as_mut() {
                        clear_location(l, self.keep(2));
                    }
                }
            }
            Body::Charging(c) => {
                clear_charging(c, self.keep(6));
                if let Some(l) = c.location.as_mut() {
                    clear_location(l, self.keep(2));
                }
            }
            Body::Software(s) => clear_software(s, self.keep(7)),
        }
    }

    fn status(&self, s: &mut pb::Status) {
        clear_status(s, self.keep(0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::vehicle_frame::Body;

    #[test]
    fn masks_keep_only_listed_fields_everywhere() {
        let mask = FieldMask::compile(&[
            "status.odometer_km".into(),
            "breakdown.*".into(),
            "snapshot.status".into(),
        ])
        .expect("valid");
        let mut body = Body::Breakdown(pb::BreakdownCall {
            call_id: "c".into(),
            snapshot: Some(pb::BreakdownSnapshot {
                status: Some(pb::Status {
                    odometer_km: Some(1.0),
                    fuel_level_pct: Some(2.0),
                    ..Default::default()
                }),
                dtcs: vec![pb::Dtc::default()],
                location: Some(pb::Location::default()),
            }),
            ..Default::default()
        });
        mask.apply(&mut body);
        let Body::Breakdown(b) = body else {
            panic!("breakdown")
        };
        let snap = b.snapshot.expect("snapshot kept");
        assert_eq!(b.call_id, "c");
        assert!(snap.dtcs.is_empty() && snap.location.is_none());
        let s = snap.status.expect("status kept");
        assert_eq!((s.odometer_km, s.fuel_level_pct), (Some(1.0), None));
    }

    #[test]
    fn unknown_paths_are_all_reported() {
        let errs = FieldMask::compile(&["status.colour".into(), "radio.volume".into(), "x".into()])
            .expect_err("invalid");
        assert_eq!(errs.len(), 3);
        assert!(
            errs[0].1.contains("odometer_km"),
            "lists valid fields: {}",
            errs[0].1
        );
    }

    #[test]
    fn all_keeps_everything() {
        assert!(FieldMask::all().allows("charging", "evse_id"));
        assert!(
            !FieldMask::compile(&["charging.phase".into()])
                .expect("ok")
                .allows("charging", "evse_id")
        );
    }
}
