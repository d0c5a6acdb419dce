//! `telegate state`: the consent-state topic as the operator's keys see it, and the rewrite
//! that brings every record under the active wrapping key (docs/operations.md, "Keys and key
//! rotation"). Takes the gateway's own configuration (file, variables, the flags below).

use anyhow::Context;
use clap::Subcommand;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Duration;
use telegate_gateway::Config;
use telegate_gateway::state::census::{Census, rewrap};
use telegate_policy::consent_topics;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: StateCommand,
}

#[derive(Subcommand, Debug)]
enum StateCommand {
    /// Count the topic's records: by wrapping key, in format 1, unreadable with these keys.
    Census(Target),
    /// Write every record that is not current (format 1, or wrapped under a key that is not
    /// the active one) again under the active wrapping key, then count again. Safe while
    /// gateways run; exits non-zero unless every record is then current.
    Rewrap(Target),
}

#[derive(clap::Args, Serialize, Debug)]
struct Target {
    /// The gateway's TOML config file; flags and TELEGATE_* variables override it.
    #[arg(long, env = "TELEGATE_CONFIG")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Kafka bootstrap servers [default: 127.0.0.1:9092]
    #[arg(long = "kafka-bootstrap", env = "TELEGATE_KAFKA_BOOTSTRAP")]
    #[serde(skip)]
    bootstrap: Option<String>,
    /// The key file (else TELEGATE_KEYS); required.
    #[arg(long, env = "TELEGATE_KEY_FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    key_file: Option<PathBuf>,
    /// How long reading the topic to its end, and writing, may take.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    #[serde(skip)]
    within: Duration,
}

#[derive(Serialize)]
struct Overrides<'a> {
    #[serde(flatten)]
    target: &'a Target,
    #[serde(skip_serializing_if = "Option::is_none")]
    kafka: Option<KafkaOverride<'a>>,
}

#[derive(Serialize)]
struct KafkaOverride<'a> {
    bootstrap: &'a str,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    crate::process::init_tracing();
    let (target, rewrite) = match &a.command {
        StateCommand::Census(t) => (t, false),
        StateCommand::Rewrap(t) => (t, true),
    };
    let overrides = Overrides {
        target,
        kafka: target
            .bootstrap
            .as_deref()
            .map(|bootstrap| KafkaOverride { bootstrap }),
    };
    let config = Config::load(target.config.as_deref(), &overrides)?;
    let keys = config.operator_keys()?.context(
        "no key file: the state topic can only be read with the keys it was written with \
         (--key-file or TELEGATE_KEYS)",
    )?;
    let [topic, _] = consent_topics(&config.kafka.topic_namespace, config.ledger_retention);
    let state_keys = keys.state();
    let active = state_keys.active_wrapping_id().as_str();
    let current = if rewrite {
        let done = rewrap(&config.kafka, &topic.name, state_keys, target.within).await?;
        println!("{}: before: {}", topic.name, done.before);
        println!(
            "{}: rewritten under {active:?}: {} ({} format-1 keys tombstoned)",
            topic.name, done.rewritten, done.migrated
        );
        println!("{}: after: {}", topic.name, done.after);
        done.after
    } else {
        let census = Census::take(&config.kafka, &topic.name, state_keys, target.within).await?;
        println!("{}: {census}", topic.name);
        census
    };
    if current.all_under(active) {
        println!(
            "every record is current and wrapped under {active:?}: no other wrapping key is needed to read {}",
            topic.name
        );
        Ok(())
    } else {
        anyhow::bail!(
            "not every record is current and under {active:?}{}",
            if rewrite {
                ""
            } else {
                ": `telegate state rewrap` rewrites them"
            }
        )
    }
}
