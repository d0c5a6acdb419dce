//! `telegate pki`: the fleet's certificates, offline. Prints each path it wrote, one a line;
//! a vehicle's file names contain its VIN, which is what the operator asked for.

use anyhow::Context;
use clap::Subcommand;
use std::path::PathBuf;
use telegate_frame::Vin;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: PkiCommand,
}

#[derive(Subcommand, Debug)]
enum PkiCommand {
    /// Create a fleet CA, the gateway's server certificate and an empty revocation list in
    /// DIR (refused if DIR already has a CA).
    Init {
        dir: PathBuf,
        /// A further name the gateway is reached by (besides localhost and 127.0.0.1); an IP
        /// address or a DNS name. Repeatable.
        #[arg(long = "host", value_name = "NAME")]
        hosts: Vec<String>,
    },
    /// Issue a vehicle's client certificate (CN = VIN); re-issuing renews it. Every serial
    /// issued is kept in DIR/vehicles/VIN.serials for `revoke --all`.
    Issue {
        dir: PathBuf,
        vin: String,
        /// How long the certificate is valid from now (e.g. `730days`, `10min`).
        #[arg(long, value_parser = humantime::parse_duration, default_value = "730days")]
        valid_for: std::time::Duration,
    },
    /// Revoke a vehicle's current certificate: add its serial to DIR/crl.pem.
    Revoke {
        dir: PathBuf,
        vin: String,
        /// Revoke every certificate ever issued to the vehicle from DIR, not only the
        /// current one (a renewal leaves the one it replaces valid until it expires).
        #[arg(long)]
        all: bool,
    },
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let written = match a.command {
        PkiCommand::Init { dir, hosts } => {
            telegate_pki::init(&dir, &hosts)?;
            [
                telegate_pki::CA_CERT,
                telegate_pki::CA_KEY,
                telegate_pki::SERVER_CERT,
                telegate_pki::SERVER_KEY,
                telegate_pki::CRL,
            ]
            .map(|name| dir.join(name))
            .to_vec()
        }
        PkiCommand::Issue {
            dir,
            vin,
            valid_for,
        } => {
            let files = telegate_pki::issue_valid_for(&dir, &parse_vin(&vin)?, valid_for)?;
            vec![files.cert, files.key, files.serials]
        }
        PkiCommand::Revoke { dir, vin, all } => {
            let vin = parse_vin(&vin)?;
            vec![match all {
                true => telegate_pki::revoke_all(&dir, &vin)?,
                false => telegate_pki::revoke(&dir, &vin)?,
            }]
        }
    };
    let lines: String = written
        .iter()
        .map(|p| format!("{}\n", p.display()))
        .collect();
    crate::process::print_all(&lines);
    Ok(())
}

fn parse_vin(s: &str) -> anyhow::Result<Vin> {
    // The error names the rule broken, never the input.
    Vin::parse(s).context("the VIN argument")
}
