//! The load generator ops teams run before trusting an ingestion tier: N simulated vehicles,
//! each with its own MQTT connection, publishing at a set rate; an observer on the far side
//! (the Kafka topic, or an MQTT subscriber for bare brokers) matching every frame back by
//! (VIN, seq). It reports publish and delivery rates, end-to-end latency (HDR histogram),
//! lost and duplicated frames, the target process's CPU time and resident memory, and the
//! generator's own CPU time over the same window (whether the target or the generator set
//! the ceiling), as a table, JSON and a self-contained HTML page. The MQTT vehicles are the
//! generator's own lean publisher (`lean`). [`targets`] starts what is compared (telegate,
//! bare rumqttd, Mosquitto, Kafka directly) as processes of their own; [`connections`] holds
//! idle connections to measure memory per vehicle. With a fleet directory ([`tls`]) vehicles
//! connect over mutual TLS, each with its own certificate, issued before anything is timed.

pub mod connections;
mod generate;
mod lean;
mod observe;
mod procstat;
mod report;
pub mod targets;
pub mod tls;
mod tracker;

pub use generate::{LoadConfig, Mix, Sink, run, vins};
pub use observe::Observer;
pub use procstat::ProcSample;
pub use report::{Latency, Report, Second, html, table};
pub use tracker::Tracker;
