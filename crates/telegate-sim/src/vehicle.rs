//! One simulated vehicle: a small state machine that drives plausible trips and emits the
//! frames a real modem would. No IO: time and randomness come in, frames go out.

use rand::Rng;
use telegate_frame::geo::{bearing, destination, haversine_km};
use telegate_frame::pb::{self, VehicleFrame, vehicle_frame::Body};

/// What the fleet's vehicles do and how often. Times are milliseconds.
#[derive(Debug, Clone)]
pub struct Behaviour {
    pub location_every_ms: i64,
    pub status_every_ms: i64,
    pub trip_ms: (i64, i64),
    pub park_ms: (i64, i64),
    /// Chance per trip that a DTC appears.
    pub dtc_per_trip: f64,
    /// Chance per trip of a breakdown call.
    pub breakdown_per_trip: f64,
    /// Chance per trip that the driver changes a privacy setting before it.
    pub privacy_toggle_per_trip: f64,
    /// Share of vehicles that are battery-electric.
    pub ev_share: f64,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            location_every_ms: 2_000,
            status_every_ms: 30_000,
            trip_ms: (60_000, 600_000),
            park_ms: (20_000, 120_000),
            dtc_per_trip: 0.15,
            breakdown_per_trip: 0.03,
            privacy_toggle_per_trip: 0.1,
            ev_share: 0.4,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Parked { until_ms: i64 },
    Driving { until_ms: i64, dest: (f64, f64) },
    Charging { until_ms: i64 },
}

/// What the simulator knows it did: ground truth for end-to-end checks.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Truth {
    pub trips: u32,
    pub distance_km: f64,
    /// Trips that ended with ignition off (a breakdown ends a trip without one).
    pub closed_trips: Vec<TripTruth>,
    pub breakdown_calls: Vec<(String, pb::BreakdownConsent)>,
    pub dtcs_raised: Vec<String>,
    /// DTCs raised at an ignition-on and reported in that ignition scan, with severity.
    pub dtcs_scanned: Vec<(String, pb::DtcSeverity)>,
}

/// One trip as driven.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TripTruth {
    pub started_at_ms: i64,
    pub ended_at_ms: i64,
    pub distance_km: f64,
}

/// A simulated vehicle.
#[derive(Debug, Clone)]
pub struct Vehicle {
    vin: String,
    /// Survives reconnects: it belongs to the vehicle, not to its MQTT session.
    seq: u64,
    ev: bool,
    phase: Phase,
    pos: (f64, f64),
    speed_kmh: f32,
    heading_deg: f32,
    odometer_km: f64,
    energy_pct: f32,
    lv_voltage: f32,
    tyre_kpa: [f32; 4],
    dtcs: Vec<pb::Dtc>,
    privacy: pb::PrivacySettings,
    next_location_ms: i64,
    next_status_ms: i64,
    trips: u32,
    trip_started_at_ms: i64,
    trip_distance_km: f64,
    /// Frames captured while offline mode was on, sent when it goes off (store-and-forward).
    outbox: Vec<VehicleFrame>,
    truth: Truth,
}

const HOME: (f64, f64) = (48.7758, 9.1829); // Stuttgart

impl Vehicle {
    pub fn new(vin: String, now_ms: i64, behaviour: &Behaviour, rng: &mut impl Rng) -> Self {
        let pos = (
            HOME.0 + rng.random_range(-0.15..0.15),
            HOME.1 + rng.random_range(-0.2..0.2),
        );
        let ev = rng.random_bool(behaviour.ev_share);
        Self {
            vin,
            seq: 0,
            ev,
            // Staggered starts, so a fleet does not move in lockstep.
            phase: Phase::Parked {
                until_ms: now_ms + rng.random_range(0..behaviour.park_ms.1.max(1)),
            },
            pos,
            speed_kmh: 0.0,
            heading_deg: rng.random_range(0.0..360.0),
            odometer_km: rng.random_range(500.0..120_000.0),
            energy_pct: rng.random_range(25.0..95.0),
            lv_voltage: rng.random_range(12.2..12.8),
            tyre_kpa: [rng.random_range(235.0..260.0); 4],
            dtcs: Vec::new(),
            privacy: pb::PrivacySettings {
                location_services: true,
                non_location_services: true,
                ..Default::default()
            },
            next_location_ms: 0,
            next_status_ms: 0,
            trips: 0,
            trip_started_at_ms: 0,
            trip_distance_km: 0.0,
            outbox: Vec::new(),
            truth: Truth::default(),
        }
    }

    pub fn vin(&self) -> &str {
        &self.vin
    }

    pub fn seq(&self) -> u64 {
        self.seq
    }

    pub fn truth(&self) -> &Truth {
        &self.truth
    }

    /// Advances the vehicle to `now_ms` and returns the frames it sends now.
    pub fn step(
        &mut self,
        now_ms: i64,
        dt_ms: i64,
        b: &Behaviour,
        rng: &mut impl Rng,
    ) -> Vec<VehicleFrame> {
        let mut out = Vec::new();
        match self.phase {
            Phase::Parked { until_ms } | Phase::Charging { until_ms } if now_ms >= until_ms => {
                if matches!(self.phase, Phase::Charging { .. }) {
                    self.end_charging(now_ms, &mut out);
                }
                self.start_trip(now_ms, b, rng, &mut out);
            }
            Phase::Driving { until_ms, dest } => {
                self.drive(dt_ms, dest, rng);
                if now_ms >= self.next_location_ms {
                    self.next_location_ms = now_ms + b.location_every_ms;
                    let l = self.location();
                    self.emit(now_ms, Body::Location(l), &mut out);
                }
                if now_ms >= self.next_status_ms {
                    self.next_status_ms = now_ms + b.status_every_ms;
                    let s = self.status(pb::StatusTrigger::Periodic);
                    self.emit(now_ms, Body::Status(s), &mut out);
                }
                if rng.random_bool(per_step(b.breakdown_per_trip, dt_ms, b.trip_ms)) {
                    self.breakdown(now_ms, b, rng, &mut out);
                } else if now_ms >= until_ms {
                    self.end_trip(now_ms, b, rng, &mut out);
                }
            }
            _ => {}
        }
        out
    }

    fn start_trip(
        &mut self,
        now_ms: i64,
        b: &Behaviour,
        rng: &mut impl Rng,
        out: &mut Vec<VehicleFrame>,
    ) {
        if rng.random_bool(b.privacy_toggle_per_trip) {
            self.toggle_privacy(now_ms, rng, out);
        }
        let dest = (
            HOME.0 + rng.random_range(-0.2..0.2),
            HOME.1 + rng.random_range(-0.3..0.3),
        );
        self.phase = Phase::Driving {
            until_ms: now_ms + rng.random_range(b.trip_ms.0..=b.trip_ms.1),
            dest,
        };
        self.trips += 1;
        self.truth.trips += 1;
        self.trip_started_at_ms = now_ms;
        self.trip_distance_km = 0.0;
        self.speed_kmh = 20.0;
        let s = self.status(pb::StatusTrigger::IgnitionOn);
        self.emit(now_ms, Body::Status(s), out);
        if rng.random_bool(b.dtc_per_trip) {
            let raised = self.raise_dtc(rng);
            self.truth.dtcs_scanned.push(raised);
        }
        // Every ignition-on runs a DTC scan and reports its result.
        let scan = pb::Diagnostics {
            dtcs: self.dtcs.clone(),
            trigger: pb::DiagnosticsTrigger::IgnitionScan as i32,
        };
        self.emit(now_ms, Body::Diagnostics(scan), out);
        if self.trips % 20 == 1 {
            let sw = self.software(pb::SoftwareEvent::PeriodicReport);
            self.emit(now_ms, Body::Software(sw), out);
        }
        self.next_location_ms = now_ms;
        self.next_status_ms = now_ms + b.status_every_ms;
    }

    fn drive(&mut self, dt_ms: i64, dest: (f64, f64), rng: &mut impl Rng) {
        let dt_h = dt_ms as f64 / 3_600_000.0;
        let target_heading = bearing(self.pos, dest);
        let turn = ((target_heading - self.heading_deg as f64 + 540.0) % 360.0) - 180.0;
        self.heading_deg =
            ((self.heading_deg as f64 + turn.clamp(-15.0, 15.0) + rng.random_range(-3.0..3.0))
                .rem_euclid(360.0)) as f32;
        let cruise = if haversine_km(self.pos, HOME) < 8.0 {
            45.0
        } else {
            95.0
        };
        self.speed_kmh =
            (self.speed_kmh + rng.random_range(-6.0..6.0) + (cruise - self.speed_kmh) * 0.1)
                .clamp(0.0, 140.0);
        let step_km = self.speed_kmh as f64 * dt_h;
        let before = self.pos;
        self.pos = destination(self.pos, self.heading_deg as f64, step_km);
        let moved = haversine_km(before, self.pos);
        self.odometer_km += moved;
        self.truth.distance_km += moved;
        self.trip_distance_km += moved;
        let per_km = if self.ev { 0.18 } else { 0.12 };
        self.energy_pct = (self.energy_pct - (moved * per_km) as f32).max(0.0);
        self.lv_voltage = (self.lv_voltage + rng.random_range(-0.01..0.012)).clamp(11.4, 14.4);
        if rng.random_bool(0.0005) {
            let t = rng.random_range(0..4);
            self.tyre_kpa[t] -= 40.0;
        }
    }

    fn end_trip(
        &mut self,
        now_ms: i64,
        b: &Behaviour,
        rng: &mut impl Rng,
        out: &mut Vec<VehicleFrame>,
    ) {
        self.speed_kmh = 0.0;
        let l = self.location();
        self.emit(now_ms, Body::Location(l), out);
        let s = self.status(pb::StatusTrigger::IgnitionOff);
        self.emit(now_ms, Body::Status(s), out);
        self.truth.closed_trips.push(TripTruth {
            started_at_ms: self.trip_started_at_ms,
            ended_at_ms: now_ms,
            distance_km: self.trip_distance_km,
        });
        if self.threshold_crossed() {
            let s = self.status(pb::StatusTrigger::Threshold);
            self.emit(now_ms, Body::Status(s), out);
        }
        let park = rng.random_range(b.park_ms.0..=b.park_ms.1);
        if self.ev && self.energy_pct < 35.0 {
            self.start_charging(now_ms, park, rng, out);
        } else {
            if !self.ev && self.energy_pct < 15.0 {
                self.energy_pct = 95.0; // refuelled while parked
            }
            self.phase = Phase::Parked {
                until_ms: now_ms + park,
            };
        }
    }

    fn breakdown(
        &mut self,
        now_ms: i64,
        b: &Behaviour,
        rng: &mut impl Rng,
        out: &mut Vec<VehicleFrame>,
    ) {
        self.speed_kmh = 0.0;
        if self.dtcs.is_empty() {
            self.raise_dtc(rng);
        }
        let call_id = format!("call-{}-{}", &self.vin[11..], self.seq + 1);
        let consent = pb::BreakdownConsent {
            assistance: rng.random_bool(0.85),
            dealer: rng.random_bool(0.4),
        };
        self.truth.breakdown_calls.push((call_id.clone(), consent));
        let call = pb::BreakdownCall {
            call_id,
            trigger: pb::BreakdownTrigger::Vehicle as i32,
            consent: Some(consent),
            snapshot: Some(pb::BreakdownSnapshot {
                status: Some(self.status(pb::StatusTrigger::OnRequest)),
                dtcs: self.dtcs.clone(),
                location: Some(self.location()),
            }),
        };
        self.emit(now_ms, Body::Breakdown(call), out);
        // Repaired on the spot; the DTCs clear, and the vehicle waits for the tow or mechanic.
        self.dtcs.clear();
        self.phase = Phase::Parked {
            until_ms: now_ms + b.park_ms.1,
        };
    }

    fn start_charging(
        &mut self,
        now_ms: i64,
        park_ms: i64,
        rng: &mut impl Rng,
        out: &mut Vec<VehicleFrame>,
    ) {
        let session = pb::ChargingSession {
            session_id: format!("chg-{}-{}", &self.vin[11..], self.seq + 1),
            phase: pb::ChargingPhase::Started as i32,
            soc_start_pct: Some(self.energy_pct),
            started_at_ms: Some(now_ms),
            evse_id: format!("DE*TGS*E{:06}", rng.random_range(0..1_000_000)),
            current: if rng.random_bool(0.5) {
                pb::ChargingCurrent::Dc
            } else {
                pb::ChargingCurrent::Ac
            } as i32,
            location: Some(self.location()),
            ..Default::default()
        };
        self.emit(now_ms, Body::Charging(session), out);
        self.phase = Phase::Charging {
            until_ms: now_ms + park_ms,
        };
    }

    fn end_charging(&mut self, now_ms: i64, out: &mut Vec<VehicleFrame>) {
        let start = self.energy_pct;
        self.energy_pct = 90.0;
        let session = pb::ChargingSession {
            session_id: format!("chg-{}-end", &self.vin[11..]),
            phase: pb::ChargingPhase::Ended as i32,
            soc_start_pct: Some(start),
            soc_end_pct: Some(self.energy_pct),
            energy_kwh: Some((self.energy_pct - start) * 0.77),
            ended_at_ms: Some(now_ms),
            ..Default::default()
        };
        self.emit(now_ms, Body::Charging(session), out);
    }

    fn toggle_privacy(&mut self, now_ms: i64, rng: &mut impl Rng, out: &mut Vec<VehicleFrame>) {
        match rng.random_range(0..4) {
            0 => self.privacy.private_mode = !self.privacy.private_mode,
            1 => self.privacy.offline_mode = !self.privacy.offline_mode,
            2 => self.privacy.location_services = !self.privacy.location_services,
            _ => self.privacy.non_location_services = !self.privacy.non_location_services,
        }
        let p = self.privacy.clone();
        self.emit(now_ms, Body::Privacy(p), out);
    }

    fn raise_dtc(&mut self, rng: &mut impl Rng) -> (String, pb::DtcSeverity) {
        const CODES: [(&str, &str, pb::DtcSeverity); 6] = [
            ("P0301", "engine", pb::DtcSeverity::Warning),
            ("P0420", "engine", pb::DtcSeverity::Info),
            ("C0035", "abs", pb::DtcSeverity::Critical),
            ("B1325", "body", pb::DtcSeverity::Info),
            ("P0A80", "bms", pb::DtcSeverity::Critical),
            ("U0100", "gateway", pb::DtcSeverity::Warning),
        ];
        let (code, ecu, severity) = CODES[rng.random_range(0..CODES.len())];
        self.truth.dtcs_raised.push(code.to_owned());
        self.dtcs.push(pb::Dtc {
            code: code.into(),
            ecu: ecu.into(),
            status: pb::DtcStatus::Confirmed as i32,
            occurrences: Some(1),
            severity: severity as i32,
        });
        (code.to_owned(), severity)
    }

    fn threshold_crossed(&self) -> bool {
        self.energy_pct < 15.0 || self.lv_voltage < 11.8 || self.tyre_kpa.iter().any(|&p| p < 200.0)
    }

    /// Stamps a body into a frame. While offline mode is on, frames are kept in the outbox;
    /// switching it off sends them (captured earlier, arriving late).
    fn emit(&mut self, now_ms: i64, body: Body, out: &mut Vec<VehicleFrame>) {
        self.seq += 1;
        let frame = VehicleFrame {
            vin: self.vin.clone(),
            seq: self.seq,
            captured_at_ms: now_ms,
            body: Some(body),
        };
        let settings_frame = matches!(frame.body, Some(Body::Privacy(_)));
        if self.privacy.offline_mode && !settings_frame {
            self.outbox.push(frame);
            return;
        }
        out.push(frame);
        if !self.privacy.offline_mode {
            out.append(&mut self.outbox);
        }
    }

    fn location(&self) -> pb::Location {
        pb::Location {
            lat_deg: self.pos.0,
            lon_deg: self.pos.1,
            altitude_m: Some(250.0),
            speed_kmh: Some(self.speed_kmh),
            heading_deg: Some(self.heading_deg),
            accuracy_m: Some(4.0),
        }
    }

    fn status(&self, trigger: pb::StatusTrigger) -> pb::Status {
        let driving = matches!(self.phase, Phase::Driving { .. });
        pb::Status {
            odometer_km: Some((self.odometer_km * 10.0).round() / 10.0),
            fuel_level_pct: (!self.ev).then_some(self.energy_pct),
            battery_soc_pct: self.ev.then_some(self.energy_pct),
            range_km: Some(self.energy_pct * if self.ev { 4.5 } else { 7.0 }),
            ignition: if driving || trigger == pb::StatusTrigger::IgnitionOn {
                pb::Ignition::On
            } else {
                pb::Ignition::Off
            } as i32,
            openings: Some(pb::Openings {
                locked: Some(!driving),
                ..Default::default()
            }),
            tyres: Some(pb::TyrePressures {
                front_left_kpa: Some(self.tyre_kpa[0]),
                front_right_kpa: Some(self.tyre_kpa[1]),
                rear_left_kpa: Some(self.tyre_kpa[2]),
                rear_right_kpa: Some(self.tyre_kpa[3]),
            }),
            fluids: Some(pb::FluidLevels {
                engine_oil: if self.ev {
                    pb::FluidLevel::Unspecified
                } else {
                    pb::FluidLevel::Ok
                } as i32,
                brake_fluid: pb::FluidLevel::Ok as i32,
                ..Default::default()
            }),
            lv_battery: Some(pb::LowVoltageBattery {
                voltage_v: Some(self.lv_voltage),
                soc_pct: None,
            }),
            hv_battery: self.ev.then(|| pb::HighVoltageBattery {
                soc_pct: Some(self.energy_pct),
                soh_pct: Some(96.0),
                temperature_c: Some(24.0),
                charging: matches!(self.phase, Phase::Charging { .. }),
                ..Default::default()
            }),
            trigger: trigger as i32,
            service_due_km: Some(30_000.0 - self.odometer_km % 30_000.0),
        }
    }

    fn software(&self, event: pb::SoftwareEvent) -> pb::SoftwareState {
        pb::SoftwareState {
            ecus: vec![
                pb::EcuSoftware {
                    ecu: "gateway".into(),
                    version: "4.2.1".into(),
                },
                pb::EcuSoftware {
                    ecu: "head-unit".into(),
                    version: "23.11.0".into(),
                },
            ],
            head_unit_version: "23.11.0".into(),
            map_version: "EU-2026.09".into(),
            event: event as i32,
            campaign_id: String::new(),
        }
    }
}

/// Probability per step of an event expected about `per_trip` times per average trip.
fn per_step(per_trip: f64, dt_ms: i64, trip_ms: (i64, i64)) -> f64 {
    let avg = ((trip_ms.0 + trip_ms.1) / 2).max(1) as f64;
    (per_trip * dt_ms as f64 / avg).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;
    use telegate_frame::{
        FrameKind, PayloadFormat, ValidationConfig, encode, validate, vehicle_topic,
    };

    #[test]
    fn a_simulated_day_is_valid_ordered_and_plausible() {
        let mut rng = SmallRng::seed_from_u64(7);
        let b = Behaviour::default();
        let start = 1_790_000_000_000;
        let mut v = Vehicle::new(crate::vin::generate(&mut rng, "WP0"), start, &b, &mut rng);
        let mut last_seq = 0;
        let mut kinds = std::collections::BTreeSet::new();
        let step = 1_000;
        let mut now = start;
        for _ in 0..(6 * 3600) {
            now += step;
            for f in v.step(now, step, &b, &mut rng) {
                assert!(f.seq > last_seq, "seq strictly increases");
                last_seq = f.seq;
                let kind = FrameKind::of_body(f.body.as_ref().expect("body"));
                kinds.insert(kind);
                let payload = encode(&f, PayloadFormat::Protobuf);
                validate(
                    &vehicle_topic(v.vin(), kind),
                    &payload,
                    now,
                    &ValidationConfig::default(),
                )
                .unwrap_or_else(|r| panic!("simulated frame rejected: {r:?}"));
            }
        }
        assert!(v.truth().trips >= 10, "trips: {}", v.truth().trips);
        assert!(v.truth().distance_km > 10.0);
        for k in [
            FrameKind::Status,
            FrameKind::Diagnostics,
            FrameKind::Location,
        ] {
            assert!(kinds.contains(&k), "{k} never sent");
        }
    }
}
