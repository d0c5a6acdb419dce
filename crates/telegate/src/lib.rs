//! The telegate gateway as a library: settings, the per-frame pipeline, the HTTP endpoints,
//! the gateway wiring, and the demo. `main.rs` is the command line over it; integration
//! tests start the same gateway in process.

pub mod admin;
pub mod admin_cli;
pub mod connections;
pub mod demo;
pub mod gateway;
pub mod http;
pub mod ledger;
pub mod loadgen_cli;
pub mod pipeline;
pub mod policy_cli;
pub mod settings;
pub mod state;

pub use gateway::{Gateway, PackSource};
pub use settings::{Overrides, Settings};
pub use state::StateStore;

/// The reference policy pack, built in so the demo needs no files.
pub const REFERENCE_PACK: &str = include_str!("../../../packs/reference.toml");
