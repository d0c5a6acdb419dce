//! `telegate connections`: idle vehicle connections against a gateway, to measure its
//! memory per connection.

use anyhow::Context;
use std::net::{IpAddr, SocketAddr};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// MQTT address of the gateway to connect to.
    #[arg(long)]
    mqtt: SocketAddr,
    /// Its pid, to read its resident memory.
    #[arg(long)]
    pid: i32,
    #[arg(long, default_value_t = 50_000)]
    connections: usize,
    /// Source addresses to spread connections over (each gives about 28,000 ports).
    #[arg(long, default_value = "127.0.0.2,127.0.0.3,127.0.0.4")]
    source_ips: String,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let ips: Vec<IpAddr> = a
        .source_ips
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()
        .context("--source-ips")?;
    let limit = crate::process::raise_fd_limit((a.connections as u64 + 1024).max(1 << 16));
    let r = telegate_loadgen::connections::hold(a.mqtt, a.pid, a.connections, &ips, limit).await?;
    crate::process::print_all(&format!("{}\n", serde_json::to_string_pretty(&r)?));
    Ok(())
}
