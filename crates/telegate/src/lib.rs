//! The `telegate` command line: one module per subcommand, each with its `Args` and its
//! `run`. `main` only parses and dispatches; the gateway itself is `telegate-gateway`, the
//! tools are their own crates.

pub mod admin;
pub mod connections;
pub mod console;
pub mod consume;
pub mod demo;
pub mod keys;
pub mod loadgen;
pub mod pki;
pub mod policy;
pub mod process;
pub mod serve;
pub mod simulate;
pub mod state;
pub mod tools;
