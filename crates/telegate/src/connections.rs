//! `telegate connections`: idle vehicle connections against a gateway, plain or over mutual
//! TLS, to measure its memory per connection and its connect rate.

use anyhow::Context;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use telegate_loadgen::connections::HoldConfig;
use telegate_loadgen::tls::{FleetTls, Pki};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// MQTT address of the gateway to connect to (with --pki, its TLS listener).
    #[arg(long)]
    mqtt: SocketAddr,
    /// Its pid, to read its resident memory and CPU time.
    #[arg(long)]
    pid: i32,
    /// Connections to open and hold.
    #[arg(long, default_value_t = 50_000)]
    connections: usize,
    /// Source addresses to spread connections over (each gives about 28,000 ports).
    #[arg(long, default_value = "127.0.0.2,127.0.0.3,127.0.0.4")]
    source_ips: String,
    /// Connects under way at once.
    #[arg(long, default_value_t = 256)]
    in_flight: usize,
    /// Connect over mutual TLS: connection i is vehicle i of this fleet directory (`telegate
    /// pki init`), with its own certificate. Missing certificates are issued into DIR before
    /// the connects are timed; the gateway must trust DIR/ca.crt.
    #[arg(long, value_name = "DIR")]
    pki: Option<PathBuf>,
    /// After measuring, close every connection and open them all again, N times (with --pki
    /// the vehicles offer the TLS sessions they were given: resumption).
    #[arg(long, value_name = "N", default_value_t = 0)]
    reconnect: usize,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let sources: Vec<IpAddr> = a
        .source_ips
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()
        .context("--source-ips")?;
    let limit = crate::process::raise_fd_limit((a.connections as u64 + 1024).max(1 << 16));
    let tls = match a.pki {
        Some(dir) => {
            let vins = telegate_loadgen::vins(a.connections);
            let tls = FleetTls::prepare(&Pki::Dir(dir), &vins)?;
            eprintln!("{}", tls.summary());
            Some(Arc::new(tls))
        }
        None => None,
    };
    let r = telegate_loadgen::connections::hold(&HoldConfig {
        target: a.mqtt,
        pid: a.pid,
        connections: a.connections,
        sources,
        open_file_limit: limit,
        in_flight: a.in_flight,
        tls,
        reconnect_rounds: a.reconnect,
    })
    .await?;
    crate::process::print_all(&format!("{}\n", serde_json::to_string_pretty(&r)?));
    Ok(())
}
