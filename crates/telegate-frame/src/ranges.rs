//! Plausibility ranges for body values. A value outside them is a broken sensor or a forged
//! frame; either way it must not reach a service. Errors name the field, never the value.
//!
//! An enum field holds one of the values its schema names. Binary protobuf would carry any
//! number (proto3 enums are open), but such a frame could not be written as proto3-JSON, the
//! other encoding a service may take, and proto3-JSON refuses it when decoding.

use crate::pb::{self, vehicle_frame::Body};

type Check = Result<(), &'static str>;

const MAX_LIST: usize = 256;
const MAX_ID: usize = 64;

fn within(v: f64, lo: f64, hi: f64, field: &'static str) -> Check {
    if v.is_finite() && (lo..=hi).contains(&v) {
        Ok(())
    } else {
        Err(field)
    }
}

fn opt<T: Into<f64> + Copy>(v: Option<T>, lo: f64, hi: f64, field: &'static str) -> Check {
    v.map_or(Ok(()), |v| within(v.into(), lo, hi, field))
}

fn id(s: &str, required: bool, field: &'static str) -> Check {
    let ok = s.len() <= MAX_ID
        && (!required || !s.is_empty())
        && s.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
    if ok { Ok(()) } else { Err(field) }
}

fn count(n: usize, field: &'static str) -> Check {
    if n <= MAX_LIST { Ok(()) } else { Err(field) }
}

/// `v` is a value of the enum `E`.
fn known<E: TryFrom<i32>>(v: i32, field: &'static str) -> Check {
    match E::try_from(v) {
        Ok(_) => Ok(()),
        Err(_) => Err(field),
    }
}

pub(crate) fn check_body(body: &Body) -> Check {
    match body {
        Body::Status(s) => status(s),
        Body::Diagnostics(d) => {
            known::<pb::DiagnosticsTrigger>(d.trigger, "diagnostics.trigger")?;
            count(d.dtcs.len(), "diagnostics.dtcs")?;
            d.dtcs.iter().try_for_each(dtc)
        }
        Body::Location(l) => location(l),
        Body::Privacy(p) => {
            count(p.services.len(), "privacy.services")?;
            p.services
                .keys()
                .try_for_each(|k| id(k, true, "privacy.services.key"))
        }
        Body::Breakdown(b) => {
            id(&b.call_id, true, "breakdown.call_id")?;
            known::<pb::BreakdownTrigger>(b.trigger, "breakdown.trigger")?;
            if let Some(snap) = &b.snapshot {
                if let Some(s) = &snap.status {
                    status(s)?;
                }
                count(snap.dtcs.len(), "breakdown.snapshot.dtcs")?;
                snap.dtcs.iter().try_for_each(dtc)?;
                if let Some(l) = &snap.location {
                    location(l)?;
                }
            }
            Ok(())
        }
        Body::Charging(c) => charging(c),
        Body::Software(s) => {
            known::<pb::SoftwareEvent>(s.event, "software.event")?;
            count(s.ecus.len(), "software.ecus")?;
            for e in &s.ecus {
                id(&e.ecu, true, "software.ecus.ecu")?;
                id(&e.version, true, "software.ecus.version")?;
            }
            id(&s.head_unit_version, false, "software.head_unit_version")?;
            id(&s.map_version, false, "software.map_version")?;
            id(&s.campaign_id, false, "software.campaign_id")
        }
    }
}

fn status(s: &pb::Status) -> Check {
    known::<pb::Ignition>(s.ignition, "status.ignition")?;
    known::<pb::StatusTrigger>(s.trigger, "status.trigger")?;
    if let Some(o) = &s.openings {
        for (v, f) in [
            (o.door_front_left, "status.openings.door_front_left"),
            (o.door_front_right, "status.openings.door_front_right"),
            (o.door_rear_left, "status.openings.door_rear_left"),
            (o.door_rear_right, "status.openings.door_rear_right"),
            (o.window_front_left, "status.openings.window_front_left"),
            (o.window_front_right, "status.openings.window_front_right"),
            (o.window_rear_left, "status.openings.window_rear_left"),
            (o.window_rear_right, "status.openings.window_rear_right"),
            (o.bonnet, "status.openings.bonnet"),
            (o.boot, "status.openings.boot"),
            (o.sunroof, "status.openings.sunroof"),
        ] {
            known::<pb::OpenState>(v, f)?;
        }
    }
    opt(s.odometer_km, 0.0, 5_000_000.0, "status.odometer_km")?;
    opt(s.fuel_level_pct, 0.0, 100.0, "status.fuel_level_pct")?;
    opt(s.battery_soc_pct, 0.0, 100.0, "status.battery_soc_pct")?;
    opt(s.range_km, 0.0, 10_000.0, "status.range_km")?;
    opt(
        s.service_due_km,
        -1_000_000.0,
        1_000_000.0,
        "status.service_due_km",
    )?;
    if let Some(t) = &s.tyres {
        for (v, f) in [
            (t.front_left_kpa, "status.tyres.front_left_kpa"),
            (t.front_right_kpa, "status.tyres.front_right_kpa"),
            (t.rear_left_kpa, "status.tyres.rear_left_kpa"),
            (t.rear_right_kpa, "status.tyres.rear_right_kpa"),
        ] {
            opt(v, 0.0, 1_000.0, f)?;
        }
    }
    if let Some(f) = &s.fluids {
        for (v, field) in [
            (f.engine_oil, "status.fluids.engine_oil"),
            (f.coolant, "status.fluids.coolant"),
            (f.brake_fluid, "status.fluids.brake_fluid"),
            (f.washer_fluid, "status.fluids.washer_fluid"),
        ] {
            known::<pb::FluidLevel>(v, field)?;
        }
        opt(f.adblue_pct, 0.0, 100.0, "status.fluids.adblue_pct")?;
    }
    if let Some(b) = &s.lv_battery {
        opt(b.voltage_v, 0.0, 60.0, "status.lv_battery.voltage_v")?;
        opt(b.soc_pct, 0.0, 100.0, "status.lv_battery.soc_pct")?;
    }
    if let Some(b) = &s.hv_battery {
        opt(b.soc_pct, 0.0, 100.0, "status.hv_battery.soc_pct")?;
        opt(b.soh_pct, 0.0, 100.0, "status.hv_battery.soh_pct")?;
        opt(
            b.temperature_c,
            -60.0,
            120.0,
            "status.hv_battery.temperature_c",
        )?;
        opt(b.voltage_v, 0.0, 1_500.0, "status.hv_battery.voltage_v")?;
    }
    Ok(())
}

fn dtc(d: &pb::Dtc) -> Check {
    id(&d.code, true, "dtc.code")?;
    id(&d.ecu, false, "dtc.ecu")?;
    known::<pb::DtcStatus>(d.status, "dtc.status")?;
    known::<pb::DtcSeverity>(d.severity, "dtc.severity")
}

fn location(l: &pb::Location) -> Check {
    within(l.lat_deg, -90.0, 90.0, "location.lat_deg")?;
    within(l.lon_deg, -180.0, 180.0, "location.lon_deg")?;
    opt(l.altitude_m, -500.0, 9_000.0, "location.altitude_m")?;
    opt(l.speed_kmh, 0.0, 500.0, "location.speed_kmh")?;
    opt(l.heading_deg, 0.0, 360.0, "location.heading_deg")?;
    opt(l.accuracy_m, 0.0, 100_000.0, "location.accuracy_m")
}

fn charging(c: &pb::ChargingSession) -> Check {
    id(&c.session_id, true, "charging.session_id")?;
    id(&c.evse_id, false, "charging.evse_id")?;
    known::<pb::ChargingPhase>(c.phase, "charging.phase")?;
    known::<pb::ChargingCurrent>(c.current, "charging.current")?;
    opt(c.energy_kwh, 0.0, 1_000.0, "charging.energy_kwh")?;
    opt(c.max_power_kw, 0.0, 1_000.0, "charging.max_power_kw")?;
    opt(c.soc_start_pct, 0.0, 100.0, "charging.soc_start_pct")?;
    opt(c.soc_end_pct, 0.0, 100.0, "charging.soc_end_pct")?;
    if let Some(l) = &c.location {
        location(l)?;
    }
    Ok(())
}
