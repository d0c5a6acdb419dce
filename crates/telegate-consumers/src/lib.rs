//! Reference consumers (smart service, breakdown call, trip log, product insights): how a
//! backend team uses telegate's output correctly. Each one reads
//! its service's topic in a consumer group, refuses (and counts) records whose
//! `telegate-purpose` is not its own, de-duplicates on (subject, seq), does its work, writes
//! results to its own output topic, and only then commits the offset. None of them ever sees
//! more than its topic gives it. The per-service logic is pure and tested without Kafka.

mod cases;
mod insights;
mod maintenance;
mod record;
mod reference;
mod runner;
mod trips;

pub use cases::Cases;
pub use insights::Insights;
pub use maintenance::Maintenance;
pub use maintenance::Thresholds;
pub use record::{Record, RecordError};
pub use reference::Reference;
pub use runner::{ConsumerStats, Output, RunnerConfig, Service, run};
pub use trips::Trips;
