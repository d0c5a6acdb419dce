//! The Kafka sink: creates telegate's topics itself (never relying on broker auto-creation)
//! with the retention policy allows, produces [`OutRecord`]s with an idempotent, acks=all,
//! compressing, batching producer, turns a full producer queue into back-pressure, and
//! tracks every delivery (latency, failures) with bounded in-flight work. It knows nothing
//! of MQTT or policy decisions: records arrive already shaped.
//!
//! [`OutRecord`]: telegate_policy::OutRecord

mod config;
mod sink;
mod statelog;
mod topics;
pub mod trace;

pub use config::KafkaConfig;
pub use sink::{KafkaSink, Receipt, Report, Reported, SinkError, SinkStats};
pub use statelog::{
    Entry, LogWriter, Run, Scanned, Start, assign_all, follow, follow_from, is_roll_marker,
    roll_marker, scan,
};
pub use topics::{COMPACTION_BOUND, TopicError, ensure_topics, topic_config, topic_retention_ms};
