//! The telegate gateway as a library: its configuration (data, validated before anything starts),
//! the per-frame pipeline from MQTT ingress to the Kafka sink, every vehicle's consent state
//! (with the roll markers that keep erasure's bound on its quiet partitions) and the consent
//! ledger, the admin API server, requests to vehicles across instances, the HTTP endpoints, the
//! frames' traces, and start-up and shutdown in order. It knows nothing of the command line, the simulator, the
//! reference consumers or the load generator (CI checks its dependency tree); the `telegate`
//! binary and the system tests build on it.

pub mod admin;
pub mod config;
pub mod console;
pub mod frame_stats;
pub mod gateway;
pub mod http;
pub mod ledger;
pub mod pipeline;
pub mod registry;
pub mod requests;
mod resends;
mod roll;
pub mod state;
pub mod support;
pub mod traces;

pub use config::Config;
pub use config::PackSource;
pub use frame_stats::FrameStats;
pub use gateway::Gateway;
pub use state::StateStore;

/// The reference policy pack, built in so the demo and the tests need no files.
pub const REFERENCE_PACK: &str = include_str!("../../../packs/reference.toml");
