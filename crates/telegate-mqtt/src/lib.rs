//! telegate's MQTT edge: an ingestion adapter, not a broker. It owns the sockets (plain TCP
//! and TLS with one client certificate per vehicle), ties each connection to one VIN, lets a
//! vehicle publish only under its own `/tenants/{VIN}/` prefix and subscribe only to the
//! platform's topics for it, and hands every publish straight to the pipeline. The
//! pipeline completes each QoS 1 publish's [`Ack`]; PUBACKs go out in the order the
//! publishes arrived. No vehicle-to-vehicle routing, no retained messages, no wills.
//!
//! It knows VINs (to bind identities) but nothing of frames, policy or Kafka.

mod budget;
mod codec;
mod config;
mod conn;
mod edge;
mod external;
mod handshakes;
mod refusal;
mod rules;
mod sessions;
mod signal;
mod tls;
mod verify;

pub use codec::AckOutcome;
pub use config::{BrokerUrl, DEFAULT_TLS_LISTEN, DenyAction, EdgeConfig, Listener, Mode};
pub use edge::{Delivery, Edge, EdgeError, EdgeStats, Presence, VehicleGate};
pub use refusal::Refusal;
pub use rules::request_topic;
pub use tls::{TlsError, check_tls, vin_of_certificate};

/// The wire readers and the topic rules, public only for the fuzz targets in `fuzz/`: not an
/// API, and not covered by any compatibility promise.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::codec::{Hello, Inbound, ReadError, Version, read, read_connect};
    pub use crate::rules::{is_concrete, may_publish, may_subscribe, named_vin};
}

use bytes::Bytes;
use std::sync::{Arc, OnceLock};
use telegate_frame::Vin;
use tokio::sync::oneshot;

/// One publish from a vehicle, as received.
#[derive(Debug)]
pub struct Incoming {
    pub topic: Bytes,
    pub payload: Bytes,
    /// Present for QoS 1: the vehicle's PUBACK waits for it.
    pub ack: Option<Ack>,
    /// The edge refused the publish (a topic the vehicle may not use) and acknowledges it
    /// under [`DenyAction::Acknowledge`]: the pipeline writes its rejection, nothing else.
    pub denied: Option<Denied>,
    /// The connection's memo of its vehicle, once a vehicle is bound to it.
    pub memo: Option<Arc<VehicleMemo>>,
    /// When the edge read it (before any wait of its rate limit).
    pub received: std::time::Instant,
    /// MQTT 5: the publish's `traceparent` user property (W3C trace context) as sent,
    /// unchecked; `None` for MQTT 3.1.1, which has no properties.
    pub traceparent: Option<String>,
}

/// What the pipeline derives from a connection's vehicle (sixteen bytes: its state key) and
/// keeps with the connection, so that it is derived once per connection rather than for every
/// frame. It holds the VIN it was derived for: a frame that names another vehicle derives its
/// own.
#[derive(Debug, Default)]
pub struct VehicleMemo(OnceLock<(Vin, [u8; 16])>);

impl VehicleMemo {
    /// What `derive` gives for `vin`: kept from the first call for the connection's vehicle.
    pub fn get_or_derive(&self, vin: &Vin, derive: impl FnOnce() -> [u8; 16]) -> [u8; 16] {
        if let Some((kept, bytes)) = self.0.get()
            && kept == vin
        {
            return *bytes;
        }
        let bytes = derive();
        // The first vehicle asked for keeps the slot.
        let _ = self.0.set((*vin, bytes));
        bytes
    }
}

/// Who sent a refused publish: the connection's vehicle, if it has one bound (the topic's
/// vehicle is someone else, or no one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denied {
    pub by: Option<telegate_frame::Vin>,
}

/// Completes one QoS 1 publish. Dropping it without [`Ack::complete`] counts as
/// [`AckOutcome::Failed`]: the vehicle never gets a success for a frame nobody took.
#[derive(Debug)]
pub struct Ack(Option<signal::AckTo>);

impl Ack {
    pub(crate) fn new() -> (Self, oneshot::Receiver<AckOutcome>) {
        let (tx, rx) = oneshot::channel();
        (Self(Some(signal::AckTo::Oneshot(tx))), rx)
    }

    /// An acknowledgement whose outcome arrives on the channel returned with it: for code
    /// that drives the pipeline without a connection (tests, tools).
    pub fn channel() -> (Self, oneshot::Receiver<AckOutcome>) {
        Self::new()
    }

    /// The `seq`-th publish of the connection that `signal` wakes.
    pub(crate) fn on_connection(signal: std::sync::Arc<signal::Signal>, seq: u64) -> Self {
        Self(Some(signal::AckTo::Conn { signal, seq }))
    }

    pub fn complete(mut self, outcome: AckOutcome) {
        if let Some(to) = self.0.take() {
            to.send(outcome);
        }
    }
}

impl Drop for Ack {
    fn drop(&mut self) {
        if let Some(to) = self.0.take() {
            to.send(AckOutcome::Failed);
        }
    }
}

#[cfg(test)]
mod memo_tests {
    use super::*;

    #[test]
    fn a_memo_derives_once_for_its_vehicle_and_never_serves_another() {
        let memo = VehicleMemo::default();
        let a = Vin::parse("WVWZZZ1JZXW000001").expect("VIN");
        let b = Vin::parse("WVWZZZ1JZXW000002").expect("VIN");
        let mut derived = 0;
        let mut derive = |byte| {
            derived += 1;
            [byte; 16]
        };
        assert_eq!(memo.get_or_derive(&a, || derive(1)), [1; 16]);
        assert_eq!(memo.get_or_derive(&a, || derive(9)), [1; 16], "kept");
        assert_eq!(
            memo.get_or_derive(&b, || derive(2)),
            [2; 16],
            "another vehicle's own"
        );
        assert_eq!(
            memo.get_or_derive(&a, || derive(9)),
            [1; 16],
            "the first stays"
        );
        assert_eq!(derived, 2);
    }
}
