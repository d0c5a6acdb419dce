//! MQTT ingress: runs the embedded rumqttd broker (MQTT 3.1.1 and 5 listeners, configured in
//! code) and reads every vehicle frame through the broker's local link into a bounded
//! channel. rumqttd cannot push back on publishers and evicts old segments of its in-memory
//! log when a reader falls behind; this crate detects each frame lost that way from the
//! link's cursor and counts it. It knows nothing of frames, policy or Kafka.

mod broker;
mod reader;

pub use broker::{Ingress, IngressConfig, IngressError};
pub use reader::{Incoming, IngressStats};
