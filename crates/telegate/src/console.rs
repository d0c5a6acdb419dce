//! `telegate console operator NAME`: a new operator for the privacy office's console. The
//! token goes to standard error, once, for the person it is for; the `[[console.operators]]`
//! entry with its SHA-256 goes to standard output, for the gateway's configuration. The
//! gateway never sees or stores the token itself.

use clap::Subcommand;
use telegate_gateway::config::{Operator, Role};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: ConsoleCommand,
}

#[derive(Subcommand, Debug)]
enum ConsoleCommand {
    /// A token for a new operator and the configuration entry that lets them sign in.
    Operator {
        /// The operator's name, as the consent ledger records it (e.g. dpo-anna).
        name: String,
        /// viewer: look up, explain, flows; officer: also export, erase, objections,
        /// consents, activations.
        #[arg(long, value_parser = ["viewer", "officer"], default_value = "viewer")]
        role: String,
    },
}

#[derive(serde::Serialize)]
struct Entry {
    console: Operators,
}

#[derive(serde::Serialize)]
struct Operators {
    operators: Vec<Operator>,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let ConsoleCommand::Operator { name, role } = a.command;
    let role = if role == "officer" {
        Role::Officer
    } else {
        Role::Viewer
    };
    let token = hex::encode(rand::random::<[u8; 32]>());
    let entry = Entry {
        console: Operators {
            operators: vec![Operator::with_token(&name, role, &token)],
        },
    };
    eprintln!("token (give it to the operator; it is not shown again): {token}");
    crate::process::print_all(&toml::to_string(&entry)?);
    Ok(())
}
