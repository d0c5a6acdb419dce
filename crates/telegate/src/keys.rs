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
    /// A new wrapping key to add to [state], not yet active: once every gateway lists it,
    /// make it the active one (docs/operations.md, "Wrapping key rotation").
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
            entry("keys", &id.unwrap_or(month), true),
            state_section(&wrapping_id.unwrap_or(wrapping_default))
        ),
        KeysCommand::State { wrapping_id } => {
            state_section(&wrapping_id.unwrap_or(wrapping_default))
        }
        KeysCommand::Wrapping { id } => format!(
            "# Listed by every gateway first; then active = true here and false on the old key.\n{}",
            entry("state.wrapping", &id.unwrap_or(wrapping_default), false)
        ),
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
        entry("state.wrapping", wrapping_id, true)
    )
}

fn entry(table: &str, id: &str, active: bool) -> String {
    format!(
        "[[{table}]]\nid = \"{id}\"\nsecret_hex = \"{}\"\nactive = {active}\n",
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
        let whole = format!("{}\n{}", entry("keys", "k1", true), state_section("w1"));
        let ring = Keyring::from_toml(&whole).expect("a whole key file");
        assert_eq!(ring.active_id().as_str(), "k1");
        assert_eq!(ring.state().active_wrapping_id().as_str(), "w1");
        assert_ne!(secret_hex(), secret_hex());
        assert_eq!(this_month().len(), 7);
        // A rotation: the new key listed, inactive; then active, the old one still listed.
        let listed = format!("{whole}\n{}", entry("state.wrapping", "w2", false));
        let ring = Keyring::from_toml(&listed).expect("listed");
        assert_eq!(ring.state().active_wrapping_id().as_str(), "w1");
        let (before, after) = listed.rsplit_once("active = false").expect("w2 is last");
        let (first, rest) = before.rsplit_once("active = true").expect("w1 before it");
        let rotated = format!("{first}active = false{rest}active = true{after}");
        let ring = Keyring::from_toml(&rotated).expect("rotated");
        assert_eq!(ring.state().active_wrapping_id().as_str(), "w2");
    }
}
