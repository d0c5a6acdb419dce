//! The far side of a bare MQTT broker: one subscriber to every vehicle topic, written like the
//! vehicles. Publishes are read in place, many per read, and their PUBACKs go out in one write
//! per read. It keeps its session across connections (a fixed client id, no clean session),
//! so a reconnect loses nothing the broker queued meanwhile; and it sends PINGREQs but never
//! drops a connection over a late PINGRESP, which a broker with a backlog sends late (a client
//! that did lost its subscription with its connection, and counted every frame after it as
//! lost).

use super::wire::{self, Incoming};
use crate::tracker::Tracker;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use telegate_frame::{VEHICLE_TOPIC_FILTER, VehicleTopic, decode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};

const KEEP_ALIVE_S: u16 = 60;

/// Bytes read at once at most.
const READ: usize = 64 * 1024;

/// PUBACKs not yet taken by the broker beyond which the subscriber stops reading until it
/// takes them.
const UNSENT: usize = 64 * 1024;

const RECONNECT_AFTER: Duration = Duration::from_millis(100);

/// Subscribes to every vehicle topic at `addr` with `qos` and returns once the broker has
/// granted the subscription (nothing published after this is missed); the task follows it
/// until `stop`.
pub(crate) async fn start(
    addr: SocketAddr,
    qos: u8,
    tracker: Arc<Tracker>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let client_id = format!("lg-observer-{:08x}", rand::random::<u32>());
    let (subscribed, granted) = oneshot::channel();
    let task = tokio::spawn(follow(addr, client_id, qos, tracker, stop, subscribed));
    match tokio::time::timeout(Duration::from_secs(10), granted).await {
        Ok(Ok(Ok(()))) => Ok(task),
        outcome => {
            task.abort();
            let why = match outcome {
                Ok(Ok(Err(why))) => why,
                _ => "no SUBACK within 10 s".to_owned(),
            };
            anyhow::bail!("observer could not subscribe at {addr}: {why}")
        }
    }
}

async fn open(addr: SocketAddr, client_id: &str, qos: u8) -> io::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let mut out = Vec::with_capacity(64);
    wire::connect(&mut out, client_id, KEEP_ALIVE_S, false);
    // Asked again on every connection: the session has it already, and asking is harmless.
    wire::subscribe(&mut out, 1, VEHICLE_TOPIC_FILTER, qos.min(1));
    stream.write_all(&out).await?;
    Ok(stream)
}

type Subscribed = Option<oneshot::Sender<Result<(), String>>>;

async fn follow(
    addr: SocketAddr,
    client_id: String,
    qos: u8,
    tracker: Arc<Tracker>,
    mut stop: watch::Receiver<bool>,
    subscribed: oneshot::Sender<Result<(), String>>,
) {
    let mut subscribed = Some(subscribed);
    let mut buf = Vec::with_capacity(READ);
    let mut acks = Vec::new();
    loop {
        match open(addr, &client_id, qos).await {
            Ok(stream) => {
                buf.clear();
                acks.clear();
                let (mut rd, mut wr) = stream.into_split();
                let mut ping =
                    tokio::time::interval(Duration::from_secs(u64::from(KEEP_ALIVE_S) / 2));
                ping.tick().await;
                loop {
                    tokio::select! {
                        _ = stop.changed() => return,
                        read = rd.read_buf(&mut buf), if acks.len() < UNSENT => {
                            if !matches!(read, Ok(n) if n > 0) {
                                break;
                            }
                            match settle(&buf, &tracker, &mut acks, &mut subscribed) {
                                Ok(used) => {
                                    buf.drain(..used);
                                    buf.reserve(READ.saturating_sub(buf.len()));
                                }
                                Err(why) => {
                                    if let Some(s) = subscribed.take() {
                                        let _ = s.send(Err(why));
                                        return;
                                    }
                                    break;
                                }
                            }
                        }
                        written = wr.write(&acks), if !acks.is_empty() => match written {
                            Ok(n) if n > 0 => {
                                acks.drain(..n);
                            }
                            _ => break,
                        },
                        _ = ping.tick() => acks.extend_from_slice(&wire::PINGREQ),
                    }
                }
                tracing::warn!(
                    "the load observer lost its connection to the target; resuming its session"
                );
            }
            Err(e) => {
                if let Some(s) = subscribed.take() {
                    let _ = s.send(Err(e.to_string()));
                    return;
                }
            }
        }
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(RECONNECT_AFTER) => {}
        }
    }
}

/// Handles the complete packets at the front of `bytes`: every publish is matched back by
/// (VIN, seq) and acknowledged. Returns the bytes they took, or why the connection is of no
/// use.
fn settle(
    bytes: &[u8],
    tracker: &Tracker,
    acks: &mut Vec<u8>,
    subscribed: &mut Subscribed,
) -> Result<usize, String> {
    let mut used = 0;
    loop {
        let (packet, n) = match wire::parse(&bytes[used..]) {
            Ok(Some(p)) => p,
            Ok(None) => return Ok(used),
            Err(wire::Malformed) => return Err("not MQTT".to_owned()),
        };
        used += n;
        match packet {
            Incoming::Publish {
                pkid,
                topic,
                payload,
            } => {
                let vin = std::str::from_utf8(topic)
                    .ok()
                    .and_then(|t| VehicleTopic::parse(t).map(|t| t.vin));
                if let (Some(vin), Ok((frame, _))) = (vin, decode(payload)) {
                    tracker.observed(vin, frame.seq);
                }
                if let Some(id) = pkid {
                    wire::puback(acks, id);
                }
            }
            Incoming::ConnAck { code: 0, .. } => {}
            Incoming::ConnAck { code, .. } => return Err(format!("CONNACK refused ({code})")),
            Incoming::SubAck { granted: 0x80, .. } => {
                return Err("the subscription was refused".to_owned());
            }
            Incoming::SubAck { .. } => {
                if let Some(s) = subscribed.take() {
                    let _ = s.send(Ok(()));
                }
            }
            Incoming::PubAck(_) | Incoming::PingResp | Incoming::Other(_) => {}
        }
    }
}
