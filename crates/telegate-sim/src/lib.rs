//! The vehicle simulator: a pure vehicle model ([`Vehicle`]) that drives plausible trips
//! around a home city and emits the frames a real modem would (status periodically and on
//! threshold crossings, DTC scans at ignition-on, locations, privacy toggles with
//! store-and-forward while offline, breakdown calls, charging sessions, software reports),
//! and a [`Fleet`] that runs many of them over MQTT 3.1.1 or 5, one connection each:
//! anonymous, or over TLS with one certificate per VIN from a fleet directory ([`tls`]). Like
//! a well-made vehicle, each keeps every QoS 1 frame until its PUBACK and publishes it again
//! after a reconnect or a failure reason ([`outbox`], [`link`]); a vehicle whose outbox is
//! full stops producing. Per-vehicle `seq` belongs to the vehicle and survives reconnects. It
//! must not name a VIN in its logs or errors: the VIN is the vehicles' payload and
//! certificate subject, nothing else.

mod fleet;
pub mod link;
pub mod outbox;
pub mod tls;
mod vehicle;
pub mod vin;

pub use fleet::{Fleet, FleetConfig, FleetStats, FormatMix};
pub use link::{DeliveryStats, Link, LinkConfig, MqttVersion, Update};
pub use vehicle::{Behaviour, TripTruth, Truth, Vehicle};
