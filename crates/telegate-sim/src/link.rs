//! One vehicle's MQTT connection, MQTT 3.1.1 or 5, that keeps every QoS 1 frame until its
//! PUBACK ([`crate::outbox`]) and publishes again what a lost connection or a failure reason
//! left unacknowledged.
//!
//! rumqttc's event loop runs in a task of its own and reports what it did as [`Signal`]s over
//! a bounded channel. Frames reach the client one at a time through a request channel of
//! capacity zero, so that no publish waits inside the client where a reconnect without a
//! session could drop it unseen. When a connection ends, the task reports the events rumqttc
//! had not yet returned, takes back the publishes it had not written, and drops the one it
//! held for a packet id, before it says the connection is lost: every frame is accounted for
//! before the next CONNACK decides what is published again.

use crate::outbox::{Outbox, Outcome, Signal};
use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::{Outgoing, Transport};
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Which MQTT the vehicle speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MqttVersion {
    #[default]
    V311,
    V5,
}

#[derive(Clone)]
pub struct LinkConfig {
    pub host: String,
    pub port: u16,
    /// Not the VIN: broker logs name client ids.
    pub client_id: String,
    pub version: MqttVersion,
    /// TLS with the vehicle's own certificate; plain TCP without.
    pub transport: Option<Transport>,
    pub keep_alive: Duration,
    pub max_packet_bytes: usize,
    /// Publishes awaiting their PUBACK at once. At most the gateway's window (100): a 3.1.1
    /// vehicle beyond it would write into a connection nobody reads.
    pub inflight: u16,
    /// Frames kept until acknowledged; a vehicle with a full outbox makes no new ones.
    pub outbox: usize,
    /// QoS 1 frames are kept; QoS 0 frames are sent once and forgotten.
    pub at_least_once: bool,
    /// A session the gateway keeps across connections (3.1.1 without clean session, 5 with a
    /// session expiry); on a resumed session rumqttc writes its unacknowledged publishes
    /// again by itself.
    pub persistent: bool,
    /// Pause before the next connection attempt, drawn between half and all of this.
    pub reconnect_after: Duration,
}

impl fmt::Debug for LinkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("version", &self.version)
            .field("tls", &self.transport.is_some())
            .field("inflight", &self.inflight)
            .field("outbox", &self.outbox)
            .field("at_least_once", &self.at_least_once)
            .field("persistent", &self.persistent)
            .finish_non_exhaustive()
    }
}

impl LinkConfig {
    /// Plain MQTT 3.1.1 to `host:port`, QoS 1, a persistent session, an outbox of 1,000.
    pub fn new(host: impl Into<String>, port: u16, client_id: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            port,
            client_id: client_id.into(),
            version: MqttVersion::V311,
            transport: None,
            keep_alive: Duration::from_secs(30),
            max_packet_bytes: 256 * 1024,
            inflight: 100,
            outbox: 1_000,
            at_least_once: true,
            persistent: true,
            reconnect_after: Duration::from_secs(1),
        }
    }
}

/// What vehicles' links did, summed over a fleet, live.
#[derive(Debug, Default)]
pub struct DeliveryStats {
    /// Frames handed to the MQTT client for the first time.
    pub published: AtomicU64,
    /// PUBACKs with success: frames the platform has.
    pub acknowledged: AtomicU64,
    /// Frames published again: after a reconnect without a session or a failure reason by
    /// the vehicle, on a resumed session by its MQTT client.
    pub resent: AtomicU64,
    /// PUBACKs with a failure reason (MQTT 5).
    pub failure_codes: AtomicU64,
    /// Frames refused for good (not authorised, invalid) and dropped.
    pub given_up: AtomicU64,
    /// Times a vehicle made no frame because its outbox was full.
    pub held_back: AtomicU64,
    /// CONNACKs received, the first of each vehicle included.
    pub connects: AtomicU64,
    /// Frames kept and not yet acknowledged; after the links closed, what stayed with the
    /// vehicles.
    pub outstanding: AtomicU64,
}

/// A frame on its way: where, what, and the caller's own tag, given back with its PUBACK.
#[derive(Debug)]
pub struct Message<T> {
    pub topic: String,
    pub payload: Vec<u8>,
    pub tag: T,
}

/// What [`Link::next`] reports.
#[derive(Debug, PartialEq, Eq)]
pub enum Update<T> {
    /// The frame with this tag is acknowledged.
    Acked(T),
    /// The frame with this tag was refused for good, or could not be handed to the client.
    GivenUp(T),
    /// The MQTT client is gone; nothing more will be acknowledged.
    Closed,
}

type Sending = Pin<Box<dyn Future<Output = bool> + Send>>;

#[derive(Clone)]
enum Client {
    V4(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

impl Client {
    fn publish(&self, topic: String, payload: Vec<u8>, at_least_once: bool) -> Sending {
        let client = self.clone();
        Box::pin(async move {
            match client {
                Client::V4(c) => {
                    let qos = if at_least_once {
                        rumqttc::QoS::AtLeastOnce
                    } else {
                        rumqttc::QoS::AtMostOnce
                    };
                    c.publish(topic, qos, false, payload).await.is_ok()
                }
                Client::V5(c) => {
                    let qos = if at_least_once {
                        rumqttc::v5::mqttbytes::QoS::AtLeastOnce
                    } else {
                        rumqttc::v5::mqttbytes::QoS::AtMostOnce
                    };
                    c.publish(topic, qos, false, payload).await.is_ok()
                }
            }
        })
    }

    async fn disconnect(&self) {
        let sent = match self {
            Client::V4(c) => c.disconnect().await.is_ok(),
            Client::V5(c) => c.disconnect().await.is_ok(),
        };
        if !sent {
            tracing::debug!("the MQTT client was gone before its DISCONNECT");
        }
    }
}

/// A vehicle's connection and the frames it keeps. Needs a tokio runtime.
pub struct Link<T> {
    client: Client,
    at_least_once: bool,
    outbox: Outbox<Message<T>>,
    signals: mpsc::Receiver<Signal>,
    sending: Option<Sending>,
    events: JoinHandle<()>,
    stats: Arc<DeliveryStats>,
}

impl<T> fmt::Debug for Link<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link")
            .field("kept", &self.outbox.len())
            .field("sending", &self.sending.is_some())
            .finish_non_exhaustive()
    }
}

impl<T> Drop for Link<T> {
    fn drop(&mut self) {
        self.events.abort();
    }
}

enum Step {
    Signal(Option<Signal>),
    Sent(bool),
}

impl<T> Link<T> {
    /// Starts connecting (and reconnecting, for as long as the link lives).
    pub fn open(cfg: &LinkConfig, stats: Arc<DeliveryStats>) -> Self {
        let (tx, signals) = mpsc::channel(64);
        let pause = cfg.reconnect_after;
        let (client, events) = match cfg.version {
            MqttVersion::V311 => {
                let mut o = rumqttc::MqttOptions::new(&cfg.client_id, &cfg.host, cfg.port);
                o.set_keep_alive(cfg.keep_alive)
                    .set_max_packet_size(cfg.max_packet_bytes, cfg.max_packet_bytes)
                    .set_inflight(cfg.inflight.max(1))
                    .set_clean_session(!cfg.persistent);
                if let Some(t) = &cfg.transport {
                    o.set_transport(t.clone());
                }
                let (client, events) = rumqttc::AsyncClient::new(o, 0);
                (Client::V4(client), tokio::spawn(run_v4(events, tx, pause)))
            }
            MqttVersion::V5 => {
                let mut o = rumqttc::v5::MqttOptions::new(&cfg.client_id, &cfg.host, cfg.port);
                let max = u32::try_from(cfg.max_packet_bytes).unwrap_or(u32::MAX);
                o.set_keep_alive(cfg.keep_alive)
                    .set_max_packet_size(Some(max))
                    .set_outgoing_inflight_upper_limit(cfg.inflight.max(1))
                    .set_clean_start(!cfg.persistent);
                if cfg.persistent {
                    o.set_session_expiry_interval(Some(3_600));
                }
                if let Some(t) = &cfg.transport {
                    o.set_transport(t.clone());
                }
                let (client, events) = rumqttc::v5::AsyncClient::new(o, 0);
                (Client::V5(client), tokio::spawn(run_v5(events, tx, pause)))
            }
        };
        Self {
            client,
            at_least_once: cfg.at_least_once,
            outbox: Outbox::new(cfg.outbox),
            signals,
            sending: None,
            events,
            stats,
        }
    }

    /// Keeps a frame until it is acknowledged; it goes out after every older one.
    pub fn push(&mut self, topic: String, payload: Vec<u8>, tag: T) {
        self.outbox.push(Message {
            topic,
            payload,
            tag,
        });
        self.stats.outstanding.fetch_add(1, Relaxed);
    }

    /// Whether the vehicle should make no new frames for now.
    pub fn is_full(&self) -> bool {
        self.outbox.is_full()
    }

    /// Frames kept, not yet acknowledged.
    pub fn kept(&self) -> usize {
        self.outbox.len()
    }

    /// Hands frames to the client and follows what it reports, until a frame is settled.
    /// Cancel-safe: a publish under way is kept, not dropped, when the caller's `select!`
    /// takes another branch.
    pub async fn next(&mut self) -> Update<T> {
        loop {
            self.hand_next();
            let step = tokio::select! {
                biased;
                s = self.signals.recv() => Step::Signal(s),
                ok = sent(&mut self.sending), if self.sending.is_some() => Step::Sent(ok),
            };
            match step {
                Step::Signal(None) => return Update::Closed,
                Step::Signal(Some(signal)) => {
                    if let Some(update) = self.apply(signal) {
                        return update;
                    }
                }
                Step::Sent(true) => self.sending = None,
                Step::Sent(false) => {
                    // The request never reached the client: it is the frame handed last.
                    self.sending = None;
                    if self.at_least_once
                        && let Some(m) = self.outbox.forget_last_handed()
                    {
                        self.stats.given_up.fetch_add(1, Relaxed);
                        self.stats.outstanding.fetch_sub(1, Relaxed);
                        return Update::GivenUp(m.tag);
                    }
                    if self.events.is_finished() {
                        return Update::Closed;
                    }
                }
            }
        }
    }

    /// Follows the link until every frame is settled, or nothing was settled for `idle`;
    /// each update goes to `on`. Returns the frames still kept.
    pub async fn drain(&mut self, idle: Duration, mut on: impl FnMut(Update<T>)) -> usize {
        while !self.outbox.is_empty() {
            match tokio::time::timeout(idle, self.next()).await {
                Ok(Update::Closed) | Err(_) => break,
                Ok(update) => on(update),
            }
        }
        self.outbox.len()
    }

    /// Disconnects. Frames still kept stay counted in [`DeliveryStats::outstanding`].
    pub async fn close(self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.client.disconnect()).await;
        // Let the DISCONNECT go out before the event loop is dropped (with the link).
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    fn hand_next(&mut self) {
        if self.sending.is_some() {
            return;
        }
        let Some((m, first)) = self.outbox.hand() else {
            return;
        };
        let counter = if first {
            &self.stats.published
        } else {
            &self.stats.resent
        };
        counter.fetch_add(1, Relaxed);
        self.sending = Some(self.client.publish(
            m.topic.clone(),
            m.payload.clone(),
            self.at_least_once,
        ));
        if !self.at_least_once && self.outbox.forget_last_handed().is_some() {
            self.stats.outstanding.fetch_sub(1, Relaxed);
        }
    }

    fn apply(&mut self, signal: Signal) -> Option<Update<T>> {
        match signal {
            Signal::Connected { .. } => {
                self.stats.connects.fetch_add(1, Relaxed);
            }
            Signal::Failed { .. } => {
                self.stats.failure_codes.fetch_add(1, Relaxed);
            }
            _ => {}
        }
        match self.outbox.on(signal) {
            Outcome::Acked(m) => {
                self.stats.acknowledged.fetch_add(1, Relaxed);
                self.stats.outstanding.fetch_sub(1, Relaxed);
                Some(Update::Acked(m.tag))
            }
            Outcome::GivenUp(m) => {
                self.stats.given_up.fetch_add(1, Relaxed);
                self.stats.outstanding.fetch_sub(1, Relaxed);
                Some(Update::GivenUp(m.tag))
            }
            Outcome::Retransmitted => {
                self.stats.resent.fetch_add(1, Relaxed);
                None
            }
            // Counted when handed over again.
            Outcome::Requeued(_) | Outcome::Nothing | Outcome::Stray => None,
        }
    }
}

async fn sent(sending: &mut Option<Sending>) -> bool {
    match sending {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

fn jittered(pause: Duration) -> Duration {
    pause.mul_f64(rand::random_range(0.5..=1.0))
}

async fn run_v4(mut events: rumqttc::EventLoop, tx: mpsc::Sender<Signal>, pause: Duration) {
    loop {
        let signals: Vec<Signal> = match events.poll().await {
            Ok(event) => signal_v4(&event).into_iter().collect(),
            Err(e) => {
                tracing::debug!(error = %e, "simulated vehicle lost its connection; retrying");
                let mut out: Vec<Signal> = events
                    .state
                    .events
                    .drain(..)
                    .filter_map(|e| signal_v4(&e))
                    .collect();
                events.state.collision = None;
                let returned = take_unwritten(
                    &mut events.pending,
                    |r| matches!(r, rumqttc::Request::Publish(p) if p.pkid == 0 && p.qos != rumqttc::QoS::AtMostOnce),
                );
                out.push(Signal::Lost { returned });
                out
            }
        };
        if !pass_on(&tx, signals, pause).await {
            return;
        }
    }
}

async fn run_v5(mut events: rumqttc::v5::EventLoop, tx: mpsc::Sender<Signal>, pause: Duration) {
    loop {
        let signals: Vec<Signal> = match events.poll().await {
            Ok(event) => signal_v5(&event).into_iter().collect(),
            Err(e) => {
                tracing::debug!(error = %e, "simulated vehicle lost its connection; retrying");
                let mut out: Vec<Signal> = events
                    .state
                    .events
                    .drain(..)
                    .filter_map(|e| signal_v5(&e))
                    .collect();
                events.state.collision = None;
                let returned = take_unwritten(
                    &mut events.pending,
                    |r| matches!(r, rumqttc::v5::Request::Publish(p) if p.pkid == 0 && p.qos != rumqttc::v5::mqttbytes::QoS::AtMostOnce),
                );
                out.push(Signal::Lost { returned });
                out
            }
        };
        if !pass_on(&tx, signals, pause).await {
            return;
        }
    }
}

/// Hands one poll's signals to the vehicle; after a lost connection, waits a jittered pause
/// before the next attempt. False once the vehicle is gone.
async fn pass_on(tx: &mpsc::Sender<Signal>, signals: Vec<Signal>, pause: Duration) -> bool {
    let lost = signals
        .last()
        .is_some_and(|s| matches!(s, Signal::Lost { .. }));
    for s in signals {
        if tx.send(s).await.is_err() {
            return false;
        }
    }
    if lost {
        tokio::time::sleep(jittered(pause)).await;
    }
    true
}

/// Removes the publishes rumqttc took from its request channel but never wrote (no packet id
/// yet): they would be dropped with the session. Returns how many.
fn take_unwritten<R>(pending: &mut VecDeque<R>, unwritten: impl Fn(&R) -> bool) -> usize {
    let before = pending.len();
    pending.retain(|r| !unwritten(r));
    before - pending.len()
}

fn signal_v4(event: &rumqttc::Event) -> Option<Signal> {
    use rumqttc::{Event, Packet};
    match event {
        Event::Incoming(Packet::ConnAck(c)) => Some(Signal::Connected {
            session_present: c.session_present,
        }),
        Event::Incoming(Packet::PubAck(a)) => Some(Signal::Acked(a.pkid)),
        Event::Outgoing(o) => signal_outgoing(o),
        _ => None,
    }
}

fn signal_v5(event: &rumqttc::v5::Event) -> Option<Signal> {
    use p5::{ConnectReturnCode, Packet, PubAckReason};
    use rumqttc::v5::Event;
    match event {
        Event::Incoming(Packet::ConnAck(c)) if c.code == ConnectReturnCode::Success => {
            Some(Signal::Connected {
                session_present: c.session_present,
            })
        }
        Event::Incoming(Packet::PubAck(a)) => Some(match a.reason {
            PubAckReason::Success | PubAckReason::NoMatchingSubscribers => Signal::Acked(a.pkid),
            // Publishing again cannot change these.
            PubAckReason::NotAuthorized
            | PubAckReason::TopicNameInvalid
            | PubAckReason::PayloadFormatInvalid => Signal::Failed {
                pkid: a.pkid,
                retry: false,
            },
            _ => Signal::Failed {
                pkid: a.pkid,
                retry: true,
            },
        }),
        Event::Outgoing(o) => signal_outgoing(o),
        _ => None,
    }
}

fn signal_outgoing(o: &Outgoing) -> Option<Signal> {
    match *o {
        // Packet id 0 is QoS 0: nothing to follow.
        Outgoing::Publish(0) => None,
        Outgoing::Publish(pkid) => Some(Signal::WentOut(pkid)),
        Outgoing::AwaitAck(pkid) => Some(Signal::Held(pkid)),
        _ => None,
    }
}
