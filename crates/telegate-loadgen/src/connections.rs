//! Connection scale: hold many idle vehicle connections against a gateway and read its
//! resident memory before and after. Each connection is a bare MQTT 3.1.1 CONNECT whose
//! CONNACK is awaited, then left idle: the gateway's cost per parked vehicle, not a client's.

use crate::ProcSample;
use anyhow::Context;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;

#[derive(Debug, serde::Serialize)]
pub struct ConnectionScale {
    pub requested: usize,
    pub held: usize,
    pub failed: usize,
    pub open_file_limit: u64,
    pub connect_seconds: f64,
    pub connects_per_second: f64,
    pub gateway_rss_before_bytes: u64,
    pub gateway_rss_after_bytes: u64,
    pub bytes_per_connection: f64,
}

fn connect_packet(client_id: &str, keep_alive_s: u16) -> Vec<u8> {
    let mut var = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02];
    var.extend_from_slice(&keep_alive_s.to_be_bytes());
    var.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    var.extend_from_slice(client_id.as_bytes());
    let mut packet = vec![0x10];
    let mut len = var.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        packet.push(byte);
        if len == 0 {
            break;
        }
    }
    packet.extend(var);
    packet
}

async fn connect(target: SocketAddr, source: IpAddr, id: usize) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let mut stream = socket.connect(target).await?;
    stream
        .write_all(&connect_packet(&format!("idle-{id}"), 900))
        .await?;
    let mut ack = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(30), stream.read_exact(&mut ack)).await??;
    anyhow::ensure!(ack == [0x20, 0x02, 0x00, 0x00], "CONNACK refused: {ack:?}");
    Ok(stream)
}

/// Opens `n` connections spread over `sources`, holds them while memory settles, reports.
pub async fn hold(
    target: SocketAddr,
    pid: i32,
    n: usize,
    sources: &[IpAddr],
    fd_limit: u64,
) -> anyhow::Result<ConnectionScale> {
    anyhow::ensure!(!sources.is_empty(), "at least one source address");
    let before = ProcSample::read(pid).context("reading the gateway's memory (is --pid right?)")?;
    let gate = Arc::new(Semaphore::new(256));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let permit = gate.clone().acquire_owned().await?;
        let source = sources[i % sources.len()];
        tasks.spawn(async move {
            let r = connect(target, source, i).await;
            drop(permit);
            r
        });
    }
    let mut held = Vec::with_capacity(n);
    let mut failed = 0;
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Ok(s)) => held.push(s),
            _ => failed += 1,
        }
    }
    let connect_seconds = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = ProcSample::read(pid).context("reading the gateway's memory")?;
    let count = held.len();
    drop(held);
    Ok(ConnectionScale {
        requested: n,
        held: count,
        failed,
        open_file_limit: fd_limit,
        connect_seconds,
        connects_per_second: count as f64 / connect_seconds.max(1e-9),
        gateway_rss_before_bytes: before.rss_bytes,
        gateway_rss_after_bytes: after.rss_bytes,
        bytes_per_connection: after.rss_bytes.saturating_sub(before.rss_bytes) as f64
            / count.max(1) as f64,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn connect_packets_are_well_formed() {
        let p = super::connect_packet("idle-1", 900);
        assert_eq!(p[0], 0x10);
        assert_eq!(p[1] as usize, p.len() - 2);
        assert_eq!(&p[2..8], &[0, 4, b'M', b'Q', b'T', b'T']);
    }
}
