//! The vehicle frame as telegate understands it: the generated `telegate.v1` schema, the
//! VIN, the MQTT topic layout, decoding from protobuf or proto3-JSON, validation into a
//! [`Frame`] (each failure a bounded [`RejectReason`]), and classification into data
//! categories. This crate is pure: it performs no IO and must never depend on tokio, rdkafka,
//! rumqttd, rumqttc or tonic (CI checks its dependency tree). Its functions take the time as an
//! argument; [`now_ms`] is the one clock the edges read to supply it.

mod classify;
mod clock;
mod decode;
pub mod geo;
mod kind;
mod ranges;
pub mod schema;
mod validate;
mod vin;

/// Generated from `proto/telegate/v1/*.proto` (prost types, pbjson proto3-JSON serde).
#[allow(clippy::all, missing_debug_implementations, unreachable_pub)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/telegate.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/telegate.v1.serde.rs"));
}

pub use classify::{Categories, DataCategory, classify};
pub use clock::now_ms;
pub use decode::{DecodeError, PayloadFormat, decode, encode};
pub use kind::{FrameKind, VEHICLE_TOPIC_FILTER, VehicleTopic, vehicle_topic};
pub use validate::{Frame, RejectReason, Rejection, ValidationConfig, validate};
pub use vin::{Vin, VinError, check_digit};
