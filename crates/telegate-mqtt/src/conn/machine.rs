//! A connection's protocol without IO: the CONNECT answered, then packets in, answers and
//! actions out. The driver owns the socket, the buffers and the timers; it decodes each
//! packet and hands it here with the time it was read, writes out what this encodes into its
//! write buffer, hands the publishes waiting in the outbox to the pipeline, and closes the
//! connection when a call returns an [`End`].
//!
//! What this touches besides its own fields lives in memory: the edge's settings, counters and
//! vehicle gate, the registry of sessions (binding a vehicle orders the connection it takes
//! over closed), the vehicle's session and the connection's [`Signal`]. It reads no clock.

use super::rate::Rate;
use super::{End, Peer};
use crate::codec::{AckOutcome, ConnectCode, Encoder, Hello, Inbound, Offer, Version};
use crate::config::{DenyAction, Listener};
use crate::edge::Shared;
use crate::rules::{may_publish, named_vin};
use crate::sessions::{Owner, SharedSession, lock};
use crate::signal::Signal;
use crate::{Ack, Denied, Incoming, Refusal, VehicleMemo};
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use telegate_frame::Vin;

/// What became of a packet.
#[derive(Debug)]
pub(crate) enum Step {
    /// Handled: its answers are encoded, a publish is in the outbox.
    Done,
    /// A publish over the vehicle's rate: hand it back to [`Machine::throttled`] at `until`
    /// (or sooner on a signal, which may close the connection first).
    Throttled { publish: Publish, until: Instant },
}

/// A publish that passed the checks that come before the rate.
#[derive(Debug)]
pub(crate) struct Publish {
    qos: u8,
    pkid: u16,
    topic: Bytes,
    payload: Bytes,
    /// Refused by the topic rules, and acknowledged under [`DenyAction::Acknowledge`].
    denied: bool,
    traceparent: Option<String>,
    /// When it was read.
    received: Instant,
}

/// A QoS 1 publish waiting for the pipeline, in arrival order, with its outcome once known.
#[derive(Debug, Clone, Copy)]
struct Waiting {
    pkid: u16,
    outcome: Option<AckOutcome>,
    /// A refused publish: once its rejection is written, MQTT 5 hears "not authorized".
    denied: bool,
}

/// One connection's protocol state, from its CONNECT on.
pub(crate) struct Machine {
    ctx: Arc<Shared>,
    /// Close orders, queued requests and completed publishes reach the connection here.
    signal: Arc<Signal>,
    enc: Encoder,
    hello: Hello,
    conn_id: u64,
    /// The vehicle this connection speaks for, once known, and what the pipeline keeps of it.
    vin: Option<Vin>,
    memo: Option<Arc<VehicleMemo>>,
    session: Option<SharedSession>,
    /// QoS 1 publishes not yet acknowledged, oldest first; the newest has sequence number
    /// `next_seq - 1`.
    pending: VecDeque<Waiting>,
    next_seq: u64,
    /// Outcomes taken from the signal, kept to reuse its room.
    done: Vec<(u64, AckOutcome)>,
    /// Publishes read but not yet in the pipeline's channel.
    outbox: VecDeque<Incoming>,
    limiter: Rate,
    /// Silence after which the client is gone: 1.5 keep-alive intervals.
    keep_alive: Duration,
    /// When the last whole packet came (or the edge last stopped reading).
    last_heard: Instant,
    /// Requests the vehicle takes unacknowledged at once.
    window: usize,
}

impl Machine {
    /// A connection whose CONNECT asked for `hello`, read at `now`.
    pub(crate) fn new(ctx: Arc<Shared>, signal: Arc<Signal>, hello: Hello, now: Instant) -> Self {
        Self {
            enc: Encoder(hello.version),
            window: usize::from(hello.receive_maximum.unwrap_or(16).clamp(1, 16)),
            hello,
            conn_id: ctx.registry.next_conn_id(),
            vin: None,
            memo: None,
            session: None,
            signal,
            pending: VecDeque::new(),
            next_seq: 0,
            done: Vec::new(),
            outbox: VecDeque::new(),
            limiter: Rate::new(ctx.cfg.publish_rate, ctx.cfg.publish_burst, now),
            keep_alive: ctx.cfg.max_keep_alive,
            last_heard: now,
            ctx,
        }
    }

    pub(crate) fn version(&self) -> Version {
        self.hello.version
    }

    pub(crate) fn ctx(&self) -> &Shared {
        &self.ctx
    }

    pub(crate) fn signal(&self) -> &Arc<Signal> {
        &self.signal
    }

    /// Answers the CONNECT: version, identity, the connection limit, the vehicle's gate, its
    /// session. `certificate` is the presented certificate checked against the CRL in force
    /// and the clock now (`Ok` when none was presented). A refusal is answered in the CONNACK
    /// and ends as [`End::Closed`]: no DISCONNECT follows it.
    pub(crate) fn open(
        &mut self,
        listener: Listener,
        peer: Peer,
        certificate: Result<(), Refusal>,
        out: &mut BytesMut,
    ) -> Result<(), End> {
        let version_ok = match listener {
            Listener::PlainV4 => self.hello.version == Version::V4,
            Listener::PlainV5 => self.hello.version == Version::V5,
            Listener::Tls => true,
        };
        if !version_ok {
            return self.refuse_connect(
                ConnectCode::UnsupportedVersion,
                Refusal::ProtocolVersion,
                out,
            );
        }
        let bound = match peer {
            // Whether or not TLS resumed a session, the certificate is checked now, as a
            // full handshake would check it now.
            Peer::Vehicle(id) => match certificate {
                Ok(()) => Some(id),
                Err(why) => return self.refuse_connect(ConnectCode::NotAuthorized, why, out),
            },
            Peer::NoVin => {
                return self.refuse_connect(
                    ConnectCode::NotAuthorized,
                    Refusal::CertificateWithoutVin,
                    out,
                );
            }
            Peer::Anonymous if self.ctx.cfg.allow_anonymous => None,
            Peer::Anonymous => {
                return self.refuse_connect(ConnectCode::NotAuthorized, Refusal::Anonymous, out);
            }
        };
        let max_ka = u16::try_from(self.ctx.cfg.max_keep_alive.as_secs())
            .unwrap_or(u16::MAX)
            .max(1);
        let asked = self.hello.keep_alive;
        let keep_alive = if asked == 0 || asked > max_ka {
            max_ka
        } else {
            asked
        };
        if self.ctx.stats.authenticated_now() >= self.ctx.cfg.max_connections {
            return self.refuse_connect(ConnectCode::ServerBusy, Refusal::TooManyConnections, out);
        }
        let (expiry, capped) = self.expiry();
        let mut resumed = false;
        if let Some(id) = bound {
            if !(self.ctx.gate)(&id.vin) {
                return self.refuse_connect(
                    ConnectCode::NotAuthorized,
                    Refusal::VehicleBlocked,
                    out,
                );
            }
            resumed = self.bind(id.vin, Some((id.serial, id.not_after)), expiry);
        }
        let offer = Offer {
            receive_maximum: self.ctx.cfg.max_inflight,
            max_packet_bytes: self.ctx.cfg.max_packet_bytes,
            server_keep_alive: (keep_alive != asked).then_some(keep_alive),
            session_expiry: capped,
        };
        self.enc.connack(out, ConnectCode::Accepted, resumed, offer);
        self.keep_alive = Duration::from_millis(u64::from(keep_alive) * 1500);
        if resumed {
            self.resend(out);
        }
        Ok(())
    }

    fn refuse_connect(
        &mut self,
        code: ConnectCode,
        why: Refusal,
        out: &mut BytesMut,
    ) -> Result<(), End> {
        let offer = Offer {
            receive_maximum: self.ctx.cfg.max_inflight,
            max_packet_bytes: self.ctx.cfg.max_packet_bytes,
            server_keep_alive: None,
            session_expiry: None,
        };
        self.enc.connack(out, code, false, offer);
        self.ctx.refused(why);
        Err(End::Closed)
    }

    /// The session expiry this connection gets, and the value to announce if it was capped.
    fn expiry(&self) -> (Duration, Option<u32>) {
        let max = self.ctx.cfg.session_expiry;
        match (self.hello.version, self.hello.clean_start) {
            (Version::V4, true) => (Duration::ZERO, None),
            (Version::V4, false) => (max, None),
            (Version::V5, _) => {
                let asked = Duration::from_secs(u64::from(self.hello.session_expiry.unwrap_or(0)));
                match asked > max {
                    true => (max, Some(u32::try_from(max.as_secs()).unwrap_or(u32::MAX))),
                    false => (asked, None),
                }
            }
        }
    }

    /// Makes this connection the vehicle's one live connection (any other is ordered closed);
    /// true if its session resumed.
    fn bind(&mut self, vin: Vin, certificate: Option<(Vec<u8>, i64)>, expiry: Duration) -> bool {
        let (serial, not_after) = certificate.unzip();
        let owner = Owner {
            conn: self.conn_id,
            signal: self.signal.clone(),
            serial,
            not_after,
        };
        let (session, resumed) = self
            .ctx
            .registry
            .bind(vin, owner, self.hello.clean_start, expiry);
        self.vin = Some(vin);
        self.memo = Some(Arc::default());
        self.session = Some(session);
        resumed
    }

    /// Binds an anonymous connection to the vehicle its topic names, or checks it is that
    /// vehicle's. `None` when the topic names no vehicle.
    fn vehicle_for(&mut self, topic: &[u8], out: &mut BytesMut) -> Result<Option<Vin>, End> {
        if let Some(vin) = self.vin {
            return Ok(Some(vin));
        }
        let Some(vin) = named_vin(topic) else {
            return Ok(None);
        };
        if !(self.ctx.gate)(&vin) {
            return Err(End::Refused(Refusal::VehicleBlocked));
        }
        let (expiry, _) = self.expiry();
        if self.bind(vin, None, expiry) {
            self.resend(out);
        }
        Ok(Some(vin))
    }

    /// A whole packet, read at `now`.
    pub(crate) fn packet(
        &mut self,
        now: Instant,
        packet: Inbound,
        out: &mut BytesMut,
    ) -> Result<Step, End> {
        // Only a whole packet is heard: bytes of one dribbled in slowly do not keep a
        // connection alive past its keep-alive.
        self.last_heard = now;
        match packet {
            Inbound::Publish {
                qos,
                pkid,
                dup,
                retain,
                topic,
                payload,
                traceparent,
            } => {
                if dup {
                    self.ctx.stats.resent();
                }
                let publish = Publish {
                    qos,
                    pkid,
                    topic,
                    payload,
                    denied: false,
                    traceparent,
                    received: now,
                };
                self.publish(now, retain, publish, out)
            }
            Inbound::PubAck { pkid } => {
                if let Some(session) = &self.session {
                    lock(session).inflight.retain(|o| o.pkid != pkid);
                }
                self.deliver(out);
                Ok(Step::Done)
            }
            Inbound::Subscribe { pkid, filters } => {
                self.subscribe(pkid, filters, out)?;
                Ok(Step::Done)
            }
            Inbound::Unsubscribe { pkid, filters } => {
                self.unsubscribe(pkid, &filters, out);
                Ok(Step::Done)
            }
            Inbound::PingReq => {
                self.enc.pingresp(out);
                Ok(Step::Done)
            }
            Inbound::Disconnect => Err(End::Closed),
            Inbound::Unexpected => Err(Refusal::ProtocolError.into()),
        }
    }

    fn publish(
        &mut self,
        now: Instant,
        retain: bool,
        mut p: Publish,
        out: &mut BytesMut,
    ) -> Result<Step, End> {
        if p.qos > 1 {
            return Err(Refusal::QosNotSupported.into());
        }
        // MQTT 5 was told no retained messages exist here; 3.1.1 cannot be told, and the
        // flag is ignored (nothing is retained).
        if retain && self.hello.version == Version::V5 {
            return Err(Refusal::RetainNotSupported.into());
        }
        let permitted = match self.vehicle_for(&p.topic, out)? {
            Some(vin) => may_publish(&vin, &p.topic),
            // A topic that names no vehicle: the pipeline rejects it, counted.
            None => true,
        };
        if !permitted {
            // Either way the refusal is counted once: by `close`, or here.
            match self.ctx.cfg.deny_action {
                DenyAction::Disconnect => return Err(Refusal::PublishNotPermitted.into()),
                DenyAction::Acknowledge => {
                    self.ctx.refused(Refusal::PublishNotPermitted);
                    p.denied = true;
                }
            }
        }
        if p.qos == 1 && self.pending.len() >= usize::from(self.ctx.cfg.max_inflight) {
            // Tolerated: [`Machine::may_read`] stops reading until PUBACKs make room.
            self.ctx.stats.overran();
        }
        let step = self.admit(now, p);
        if let Step::Throttled { .. } = step {
            self.ctx.stats.throttled();
        }
        Ok(step)
    }

    /// A throttled publish again, at `now`: it goes to the outbox if the rate allows it now.
    /// A publish that waited is charged like any other, or every throttled one would pass
    /// free.
    pub(crate) fn throttled(&mut self, now: Instant, publish: Publish) -> Step {
        // The wait was the edge's doing: the client's silence counts from its end.
        self.last_heard = now;
        self.admit(now, publish)
    }

    fn admit(&mut self, now: Instant, publish: Publish) -> Step {
        if let Err(until) = self.limiter.take(now) {
            return Step::Throttled { publish, until };
        }
        let Publish {
            qos,
            pkid,
            topic,
            payload,
            denied,
            traceparent,
            received,
        } = publish;
        let ack = (qos == 1).then(|| {
            let ack = Ack::on_connection(self.signal.clone(), self.next_seq);
            self.pending.push_back(Waiting {
                pkid,
                outcome: None,
                denied,
            });
            self.next_seq += 1;
            ack
        });
        self.ctx.stats.count_received(qos);
        self.outbox.push_back(Incoming {
            topic,
            payload,
            ack,
            denied: denied.then_some(Denied { by: self.vin }),
            memo: self.memo.clone(),
            received,
            traceparent,
        });
        Step::Done
    }

    /// The oldest publish not yet handed to the pipeline.
    pub(crate) fn next_publish(&mut self) -> Option<Incoming> {
        self.outbox.pop_front()
    }

    /// Puts back a publish [`Machine::next_publish`] gave out that the pipeline had no room
    /// for: it stays first.
    pub(crate) fn hold(&mut self, m: Incoming) {
        self.outbox.push_front(m);
    }

    pub(crate) fn has_outbox(&self) -> bool {
        !self.outbox.is_empty()
    }

    /// Whether the driver should read (and handle what it has read). A client past its
    /// window (more than `max_inflight` unacknowledged: MQTT 5 was told the receive maximum,
    /// some libraries send beyond it anyway; 3.1.1 cannot be told) is not read until PUBACKs
    /// make room: back-pressure, not a disconnect. Publishes the pipeline has no room for
    /// wait in the outbox; past a window's worth the connection is not read either. A client
    /// within its window is always read, so its keep-alives are answered.
    pub(crate) fn may_read(&self) -> bool {
        let max = usize::from(self.ctx.cfg.max_inflight);
        self.outbox.len() <= max && self.pending.len() <= max
    }

    /// Counts the client's silence from `now`: the connection starts serving, or the edge
    /// does not read it (silence the edge imposes is not the client's). Returns when the
    /// keep-alive runs out if nothing more is heard.
    pub(crate) fn keep_alive_from(&mut self, now: Instant) -> Instant {
        self.last_heard = now;
        now + self.keep_alive
    }

    /// The keep-alive timer fired at `now`: the client is gone, or the time to look again.
    pub(crate) fn silence(&self, now: Instant) -> Result<Instant, End> {
        let due = self.last_heard + self.keep_alive;
        match now >= due {
            true => Err(Refusal::KeepAliveTimeout.into()),
            false => Ok(due),
        }
    }

    /// Acts on what the signal carries: a close order, queued requests, completed publishes.
    pub(crate) fn signalled(&mut self, out: &mut BytesMut) -> Result<(), End> {
        if let Some(why) = self.signal.close_order() {
            return Err(why.into());
        }
        if self.signal.take_deliver() {
            self.deliver(out);
        }
        self.take_outcomes();
        self.acknowledge_ready(out)
    }

    /// Notes the outcomes the pipeline has completed since the last call.
    fn take_outcomes(&mut self) {
        self.signal.take_done(&mut self.done);
        let front = self.next_seq - self.pending.len() as u64;
        for &(seq, outcome) in &self.done {
            // An outcome for a publish before the oldest waiting one cannot come (each is
            // completed once); the check keeps a bug from acknowledging the wrong packet.
            if let Some(w) = seq
                .checked_sub(front)
                .and_then(|i| self.pending.get_mut(usize::try_from(i).ok()?))
            {
                w.outcome = Some(outcome);
            }
        }
    }

    /// The connection is closing: publishes not yet handed to the pipeline are dropped
    /// (unacknowledged, the client sends them again), and what the pipeline has is waited
    /// for ([`Machine::settled`]) so that frames Kafka holds are acknowledged before the
    /// close.
    pub(crate) fn closing(&mut self) {
        // Their acks complete as failures when dropped.
        self.outbox.clear();
    }

    /// While closing: takes the completed outcomes and writes the PUBACKs of the oldest
    /// publishes Kafka holds, in order, up to the first that failed or is not complete.
    /// True once nothing handed to the pipeline is still waiting.
    pub(crate) fn settled(&mut self, out: &mut BytesMut) -> bool {
        self.take_outcomes();
        while let Some(&w) = self.pending.front() {
            match w.outcome {
                Some(AckOutcome::Accepted) => {
                    self.pending.pop_front();
                    self.enc
                        .puback(out, w.pkid, self.answer(w, AckOutcome::Accepted));
                }
                Some(_) => break,
                None => return false,
            }
        }
        self.pending.iter().all(|w| w.outcome.is_some())
    }

    /// The PUBACK's reason for a publish whose outcome is `outcome`.
    fn answer(&self, w: Waiting, outcome: AckOutcome) -> AckOutcome {
        match (w.denied, outcome, self.hello.version) {
            // The rejection is written: MQTT 5 hears why; 3.1.1 has no negative PUBACK.
            (true, AckOutcome::Accepted, Version::V5) => AckOutcome::NotAuthorized,
            _ => outcome,
        }
    }

    /// PUBACKs for the oldest publishes whose outcome is known, in arrival order.
    fn acknowledge_ready(&mut self, out: &mut BytesMut) -> Result<(), End> {
        while let Some(
            w @ Waiting {
                outcome: Some(outcome),
                ..
            },
        ) = self.pending.front().copied()
        {
            match (self.hello.version, outcome) {
                (_, AckOutcome::Accepted) | (Version::V5, _) => {
                    self.pending.pop_front();
                    self.enc.puback(out, w.pkid, self.answer(w, outcome));
                }
                // MQTT 3.1.1 has no negative PUBACK: closing makes the vehicle send it again
                // (the PUBACKs before it are written first).
                (Version::V4, _) => return Err(End::Closed),
            }
        }
        Ok(())
    }

    /// The connection ends: a refusal is counted and, for MQTT 5, said in a DISCONNECT.
    pub(crate) fn close(&self, end: &End, out: &mut BytesMut) {
        if let End::Refused(why) = *end {
            self.ctx.refused(why);
            self.enc.disconnect(out, why);
        }
    }

    /// The connection has ended: orders to it go nowhere, and the vehicle's session stays
    /// until it expires (or goes, if it was clean).
    pub(crate) fn finish(self) {
        self.signal.end();
        if let Some(vin) = self.vin {
            self.ctx.registry.release(&vin, self.conn_id);
        }
    }
}

mod requests;
#[cfg(test)]
mod tests;
