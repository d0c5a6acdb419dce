//! `telegate policy check|explain|asyncapi`: what a pack does, what happens to a given frame
//! and why, and what it makes telegate produce as an AsyncAPI document. Exit status 1 when the
//! pack is invalid.

use anyhow::Context;
use std::path::{Path, PathBuf};
use telegate_policy::{Pack, StateFile};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Validate a pack and print its purposes, rules and topic retention.
    Check { pack: PathBuf },
    /// What happens to a frame, per service, and which rule decided.
    Explain {
        pack: PathBuf,
        /// A VehicleFrame in proto3-JSON, as a vehicle would publish it.
        #[arg(long)]
        frame: PathBuf,
        /// A state file (settings, consents, activations by VIN).
        #[arg(long)]
        state: Option<PathBuf>,
        /// Judge validation as at this time (UTC ms); default: the frame's capture time.
        #[arg(long)]
        now: Option<i64>,
    },
    /// An AsyncAPI 3.0 document (JSON) of what the pack makes telegate receive and produce:
    /// MQTT channels, Kafka topics with schema, key, headers and each purpose's terms.
    Asyncapi {
        pack: PathBuf,
        /// Topic names behind this namespace, as a deployment's `kafka.topic_namespace`.
        #[arg(long, default_value = "")]
        topic_namespace: String,
    },
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let out = match a.command {
        Command::Check { pack } => telegate_policy::check(&load(&pack)?),
        Command::Explain {
            pack,
            frame,
            state,
            now,
        } => {
            let pack = load(&pack)?;
            let frame = read(&frame)?;
            let state: Option<StateFile> = match state {
                Some(p) => Some(
                    serde_json::from_str(&read(&p)?)
                        .with_context(|| format!("state file {} is not valid", p.display()))?,
                ),
                None => None,
            };
            telegate_policy::explain(&pack, &frame, state.as_ref(), now)?
        }
        Command::Asyncapi {
            pack,
            topic_namespace,
        } => {
            let pack = load(&pack)?.with_topic_namespace(&topic_namespace);
            let mut doc = serde_json::to_string_pretty(&telegate_policy::asyncapi(&pack))?;
            doc.push('\n');
            doc
        }
    };
    crate::process::print_all(&out);
    Ok(())
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// The pack, or every error in it on stderr and exit status 1.
fn load(path: &Path) -> anyhow::Result<Pack> {
    match Pack::from_toml(&read(path)?) {
        Ok(p) => Ok(p),
        Err(errors) => {
            eprint!("{}: {errors}", path.display());
            std::process::exit(1);
        }
    }
}
