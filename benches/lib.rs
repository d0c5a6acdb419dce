//! Inputs for the benchmarks: a status frame as a vehicle sends it, and a pack routing it to
//! three services, one per identity form (VIN, pseudonym, anonymous with coarsening).

use telegate_frame::pb::{self, VehicleFrame, vehicle_frame::Body};
use telegate_policy::{SubjectRecord, SubjectSecret};

pub const VIN: &str = "WP0ZZZ99ZTS392124";
pub const NOW: i64 = 1_790_000_000_000;

/// The pack the hot-path bench uses.
pub const THREE_SERVICES: &str = include_str!("three-services.toml");

/// A periodic status frame with the fields a real modem fills in.
pub fn status_frame() -> VehicleFrame {
    VehicleFrame {
        vin: VIN.into(),
        seq: 4711,
        captured_at_ms: NOW - 2_000,
        body: Some(Body::Status(pb::Status {
            odometer_km: Some(48_211.4),
            fuel_level_pct: Some(41.5),
            range_km: Some(390.0),
            ignition: pb::Ignition::On as i32,
            openings: Some(pb::Openings {
                locked: Some(false),
                door_front_left: pb::OpenState::Closed as i32,
                bonnet: pb::OpenState::Closed as i32,
                boot: pb::OpenState::Closed as i32,
                ..Default::default()
            }),
            tyres: Some(pb::TyrePressures {
                front_left_kpa: Some(250.0),
                front_right_kpa: Some(251.0),
                rear_left_kpa: Some(248.0),
                rear_right_kpa: Some(249.0),
            }),
            fluids: Some(pb::FluidLevels {
                engine_oil: pb::FluidLevel::Ok as i32,
                brake_fluid: pb::FluidLevel::Ok as i32,
                ..Default::default()
            }),
            lv_battery: Some(pb::LowVoltageBattery {
                voltage_v: Some(12.6),
                soc_pct: Some(88.0),
            }),
            trigger: pb::StatusTrigger::Periodic as i32,
            service_due_km: Some(11_789.0),
            ..Default::default()
        })),
    }
}

/// A vehicle the gateway already knows: key material and a settings history with both
/// service groups on.
pub fn known_vehicle() -> SubjectRecord {
    let mut subject = SubjectRecord {
        secret: Some(SubjectSecret::from_random([1; 16], [2; 32])),
        ..Default::default()
    };
    subject.record_settings(
        NOW - 60_000,
        &pb::PrivacySettings {
            location_services: true,
            non_location_services: true,
            ..Default::default()
        },
    );
    subject
}
