//! The shipped packs, the clock, the gateway's keys and the frames a vehicle sends.

use std::sync::LazyLock;
use telegate_frame::pb::{self, VehicleFrame, vehicle_frame::Body};
use telegate_frame::{
    Frame, FrameKind, PayloadFormat, ValidationConfig, encode, validate, vehicle_topic,
};
use telegate_policy::{Keyring, Pack, SubjectSecret};

pub(crate) const VIN: &str = "WP0ZZZ99ZTS392124";
pub(crate) const OTHER: &str = "WP0ZZZ99ZTS392125";
pub(crate) const NOW: i64 = 1_790_000_000_000;
/// Rows give capture times as offsets from here; it lies on no hour or day boundary, so a
/// coarsened time differs from the exact one.
pub(crate) const T: i64 = NOW - 60_000;
pub(crate) const HOUR: i64 = 3_600_000;
pub(crate) const DAY: i64 = 86_400_000;

fn load(text: &str) -> Pack {
    Pack::from_toml(text).unwrap_or_else(|e| panic!("shipped pack is valid: {e}"))
}
pub(crate) static PORSCHE: LazyLock<Pack> =
    LazyLock::new(|| load(include_str!("../../../../packs/porsche-connect.toml")));
pub(crate) static KIA: LazyLock<Pack> =
    LazyLock::new(|| load(include_str!("../../../../packs/kia-connect.toml")));
pub(crate) static EV: LazyLock<Pack> =
    LazyLock::new(|| load(include_str!("../../../../packs/ev-charging.toml")));
pub(crate) static REFERENCE: LazyLock<Pack> =
    LazyLock::new(|| load(include_str!("../../../../packs/reference.toml")));

pub(crate) fn keys() -> Keyring {
    Keyring::ephemeral([7; 32])
}

/// The key material `admit` mints for a vehicle it sees for the first time.
pub(crate) fn minted() -> SubjectSecret {
    SubjectSecret::from_random([0x11; 16], [0x22; 32])
}

// --- frames -------------------------------------------------------------------------------

/// A frame as the vehicle sends it.
pub(crate) struct Sent {
    pub(crate) vin: &'static str,
    pub(crate) seq: u64,
    pub(crate) at: i64,
    pub(crate) body: Body,
}

/// A frame of the vehicle `VIN`, captured `at` ms after `T`.
pub(crate) fn sent(seq: u64, at: i64, body: Body) -> Sent {
    let (vin, at) = (VIN, T + at);
    Sent { vin, seq, at, body }
}

impl Sent {
    pub(crate) fn from(self, vin: &'static str) -> Self {
        Self { vin, ..self }
    }

    pub(crate) fn raw(&self) -> (String, Vec<u8>) {
        let f = VehicleFrame {
            vin: self.vin.into(),
            seq: self.seq,
            captured_at_ms: self.at,
            body: Some(self.body.clone()),
        };
        let topic = vehicle_topic(self.vin, FrameKind::of_body(&self.body));
        (topic, encode(&f, PayloadFormat::Json))
    }

    pub(crate) fn valid(&self) -> Frame {
        let (topic, payload) = self.raw();
        validate(&topic, &payload, NOW, &ValidationConfig::default())
            .unwrap_or_else(|r| panic!("test frame is valid: {r:?}"))
    }
}

pub(crate) fn status(odo: f64) -> pb::Status {
    pb::Status {
        odometer_km: Some(odo),
        fuel_level_pct: Some(30.0),
        ignition: pb::Ignition::On as i32,
        hv_battery: Some(pb::HighVoltageBattery {
            soc_pct: Some(50.0),
            alert: true,
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(crate) fn location(lat_deg: f64, lon_deg: f64) -> Body {
    Body::Location(pb::Location {
        lat_deg,
        lon_deg,
        altitude_m: Some(250.0),
        speed_kmh: Some(50.0),
        heading_deg: Some(90.0),
        accuracy_m: Some(3.0),
    })
}

pub(crate) fn dtc() -> Body {
    Body::Diagnostics(pb::Diagnostics {
        dtcs: vec![pb::Dtc {
            code: "P0301".into(),
            ecu: "engine".into(),
            ..Default::default()
        }],
        trigger: pb::DiagnosticsTrigger::IgnitionScan as i32,
    })
}

/// A breakdown call; `consent` is (assistance, dealer) as given in the vehicle, `None` for a
/// call placed in the app.
pub(crate) fn breakdown(call: &str, consent: Option<(bool, bool)>) -> Body {
    Body::Breakdown(pb::BreakdownCall {
        call_id: call.into(),
        trigger: pb::BreakdownTrigger::Vehicle as i32,
        consent: consent.map(|(assistance, dealer)| pb::BreakdownConsent { assistance, dealer }),
        snapshot: Some(pb::BreakdownSnapshot {
            status: Some(status(1000.0)),
            dtcs: vec![pb::Dtc {
                code: "C0035".into(),
                ..Default::default()
            }],
            location: Some(pb::Location {
                lat_deg: 48.8,
                lon_deg: 9.1,
                ..Default::default()
            }),
        }),
    })
}

pub(crate) fn software() -> Body {
    Body::Software(pb::SoftwareState {
        ecus: vec![pb::EcuSoftware {
            ecu: "gateway".into(),
            version: "4.2.1".into(),
        }],
        head_unit_version: "23.11".into(),
        map_version: "EU-2026.09".into(),
        event: pb::SoftwareEvent::UpdateInstalled as i32,
        campaign_id: "camp-9".into(),
    })
}

pub(crate) fn session(id: &str) -> Body {
    Body::Charging(pb::ChargingSession {
        session_id: id.into(),
        phase: pb::ChargingPhase::Ended as i32,
        energy_kwh: Some(31.5),
        evse_id: "DE*TGS*E000123".into(),
        location: Some(pb::Location {
            lat_deg: 52.5,
            lon_deg: 13.4,
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// Factory settings changed by `edit`, e.g. `private_mode`.
pub(crate) fn settings(edit: fn(&mut pb::PrivacySettings)) -> pb::PrivacySettings {
    let mut s = pb::PrivacySettings {
        location_services: true,
        non_location_services: true,
        ..Default::default()
    };
    edit(&mut s);
    s
}
pub(crate) fn privacy(edit: fn(&mut pb::PrivacySettings)) -> Body {
    Body::Privacy(settings(edit))
}
pub(crate) fn normal(_: &mut pb::PrivacySettings) {}
pub(crate) fn private_mode(s: &mut pb::PrivacySettings) {
    s.private_mode = true;
}
pub(crate) fn offline_mode(s: &mut pb::PrivacySettings) {
    s.offline_mode = true;
}
pub(crate) fn with_location_off(s: &mut pb::PrivacySettings) {
    s.location_services = false;
}
pub(crate) fn without_location_off(s: &mut pb::PrivacySettings) {
    s.non_location_services = false;
}
pub(crate) fn gis(on: bool) -> fn(&mut pb::PrivacySettings) {
    if on {
        |s| _ = s.services.insert("gis".into(), true)
    } else {
        |s| _ = s.services.insert("gis".into(), false)
    }
}
