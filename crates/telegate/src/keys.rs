//! `telegate keys`: prints new key material as key-file TOML, to standard output only. The
//! operator puts it where keys live (a secret store, a file only the gateway reads); telegate
//! never writes a key file itself.

use clap::Subcommand;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(Subcommand, Debug)]
enum KeysCommand {
    /// A whole new key file: a pseudonym key, the state index key and a wrapping key.
    New {
        /// The pseudonym key's id [default: this month, e.g. 2026-11]
        #[arg(long)]
        id: Option<String>,
        /// The wrapping key's id [default: w- and this month]
        #[arg(long)]
        wrapping_id: Option<String>,
    },
    /// A [state] section (index key and a first wrapping key) for a key file that has only
    /// pseudonym keys.
    State {
        /// The wrapping key's id [default: w- and this month]
        #[arg(long)]
        wrapping_id: Option<String>,
    },
    /// A new active wrapping key to add to [state]; mark the current one active = false.
    Wrapping {
        /// Its id [default: w- and this month]
        #[arg(long)]
        id: Option<String>,
    },
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let month = this_month();
    let wrapping_default = format!("w-{month}");
    let text = match a.command {
        KeysCommand::New { id, wrapping_id } => format!(
            "{}\n{}",
            entry("keys", &id.unwrap_or(month)),
            state_section(&wrapping_id.unwrap_or(wrapping_default))
        ),
        KeysCommand::State { wrapping_id } => {
            state_section(&wrapping_id.unwrap_or(wrapping_default))
        }
        KeysCommand::Wrapping { id } => entry("state.wrapping", &id.unwrap_or(wrapping_default)),
    };
    crate::process::print_all(&text);
    Ok(())
}

fn state_section(wrapping_id: &str) -> String {
    format!(
        "[state]\n\
         # Names every vehicle on telegate.consent-state and the consent ledger. Never change\n\
         # it: records written under another index key cannot be found.\n\
         index_hex = \"{}\"\n\n{}",
        secret_hex(),
        entry("state.wrapping", wrapping_id)
    )
}

fn entry(table: &str, id: &str) -> String {
    format!(
        "[[{table}]]\nid = \"{id}\"\nsecret_hex = \"{}\"\nactive = true\n",
        secret_hex()
    )
}

fn secret_hex() -> String {
    rand::random::<[u8; 32]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `YYYY-MM` of now, UTC.
fn this_month() -> String {
    humantime::format_rfc3339(std::time::SystemTime::now()).to_string()[..7].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use telegate_policy::Keyring;

    #[test]
    fn what_it_prints_is_a_key_file_and_each_secret_is_new() {
        let whole = format!("{}\n{}", entry("keys", "k1"), state_section("w1"));
        let ring = Keyring::from_toml(&whole).expect("a whole key file");
        assert_eq!(ring.active_id().as_str(), "k1");
        assert_eq!(ring.state().active_wrapping_id().as_str(), "w1");
        assert_ne!(secret_hex(), secret_hex());
        assert_eq!(this_month().len(), 7);
        // A rotation: the old wrapping key stays listed, inactive; the new one is active.
        let (before, after) = whole.rsplit_once("active = true").expect("w1 is last");
        let rotated = format!(
            "{before}active = false{after}\n{}",
            entry("state.wrapping", "w2")
        );
        let ring = Keyring::from_toml(&rotated).expect("rotated");
        assert_eq!(ring.state().active_wrapping_id().as_str(), "w2");
    }
}
