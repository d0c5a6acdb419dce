//! What each fuzz target checks, one public function per target, taking the fuzzer's bytes.
//! Each feeds the bytes to one of telegate's decoders of outside input the way the gateway
//! does, then checks what the gateway relies on: no panic, and the properties named in each
//! function (a decoded value reads back the same, a refusal has a reason, a frame that passed
//! validation can be admitted and re-encoded, …). A failed property panics, which libFuzzer
//! reports as a crash like any other.
//!
//! Plain functions, apart from libFuzzer, so that the seed generator (`src/bin/seeds.rs`) and
//! any test can call them too.

mod admin;
pub mod fixtures;
mod frame;
mod keys;
mod mqtt;
mod pack;
mod state;
mod topic;

pub use admin::admin_request;
pub use frame::{frame_json, frame_protobuf};
pub use keys::key_file;
pub use mqtt::{mqtt_codec, mqtt_rules};
pub use pack::pack;
pub use state::state_file;
pub use topic::topic;
