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
