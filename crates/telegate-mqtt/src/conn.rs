//! One client connection: TLS handshake and CONNECT within the connect timeout, identity,
//! the topic rules, publishes handed to the pipeline with their PUBACKs sent in arrival order
//! once the pipeline completes them, requests to the vehicle, keep-alive and limits.

use crate::codec::{
    self, AckOutcome, ConnectCode, Encoder, Hello, Inbound, Offer, ReadError, Version,
};
use crate::config::Listener;
use crate::edge::Shared;
use crate::handshakes::Pending;
use crate::rules::{is_concrete, may_publish, may_subscribe, named_vin};
use crate::sessions::{Owner, SharedSession, lock};
use crate::signal::Signal;
use crate::{Ack, Incoming, Refusal};
use bytes::{Bytes, BytesMut};
use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use rustls_pki_types::CertificateDer;
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use telegate_frame::Vin;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_rustls::server::TlsStream;

/// What a plain socket reserves to read into once it is readable. Most packets fit; a
/// longer one takes more reads.
const READ_CHUNK: usize = 4096;

/// What a TLS connection keeps to read into while it waits: rustls holds what does not fit
/// and hands it over on the next read.
const TLS_READ_CHUNK: usize = 512;

/// A write buffer larger than this is given back once written; a smaller one is kept for the
/// next PUBACK.
const WRITE_KEEP: usize = 64;

/// The largest CONNECT the edge reads (or `max_packet_bytes`, if smaller). A vehicle's is a
/// few dozen bytes; a client that has not authenticated gets no room for more.
const MAX_CONNECT_BYTES: usize = 16 * 1024;

/// How a connection reads. A plain socket waits until it is readable and only then takes a
/// read buffer, so an idle plain connection holds none; TLS reads through rustls into a small
/// buffer kept while waiting.
pub(crate) trait Wire: AsyncRead + AsyncWrite + Unpin + Send {
    fn read_into<'a>(
        &'a mut self,
        buf: &'a mut BytesMut,
    ) -> impl Future<Output = io::Result<usize>> + Send + 'a;

    /// The certificate chain the client presented, end entity first (TLS only).
    fn peer_chain(&self) -> Option<&[CertificateDer<'static>]> {
        None
    }
}

impl Wire for TcpStream {
    async fn read_into(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        loop {
            self.readable().await?;
            buf.reserve(READ_CHUNK);
            // One attempt: tokio's read takes a short read as the socket drained and clears
            // its readiness, so the next wait does not cost a read that finds nothing.
            let polled = {
                let read = std::pin::pin!(self.read_buf(buf));
                futures::poll!(read)
            };
            if let Poll::Ready(read) = polled {
                return read;
            }
            // The readiness was stale, and is cleared now: wait without the buffer.
            if buf.is_empty() {
                *buf = BytesMut::new();
            }
        }
    }
}

impl Wire for Box<TlsStream<TcpStream>> {
    async fn read_into(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        buf.reserve(TLS_READ_CHUNK);
        self.read_buf(buf).await
    }

    fn peer_chain(&self) -> Option<&[CertificateDer<'static>]> {
        self.get_ref().1.peer_certificates()
    }
}

/// Who the peer proved to be.
#[derive(Debug)]
pub(crate) enum Peer {
    /// No certificate (a plain listener, or TLS without client authentication).
    Anonymous,
    /// A certificate naming one VIN.
    Vehicle(crate::tls::Identity),
    /// A certificate that names no vehicle.
    NoVin,
}

/// How a connection ended.
#[derive(Debug)]
enum End {
    /// The client closed it, or the network did.
    Closed,
    Refused(Refusal),
}

impl From<Refusal> for End {
    fn from(r: Refusal) -> Self {
        End::Refused(r)
    }
}

/// A connection just accepted: its signal (which also carries an eviction from the budget of
/// unauthenticated connections) and its place in that budget, held until CONNACK.
pub(crate) struct Accepted {
    pub signal: Arc<Signal>,
    pub pending: Pending,
}

/// Serves one TCP connection of a plain listener. The connection's task is this future, so
/// it holds nothing of TLS.
pub(crate) async fn plain(tcp: TcpStream, listener: Listener, ctx: Arc<Shared>, new: Accepted) {
    let deadline = Instant::now() + ctx.cfg.connect_timeout;
    let _ = tcp.set_nodelay(true);
    run(tcp, listener, Peer::Anonymous, deadline, ctx, new).await
}

/// Serves one TCP connection of the TLS listener: the handshake first. The handshake's state
/// and then the TLS stream live on the heap, each for as long as it is needed, so the task
/// holds neither.
pub(crate) async fn tls(tcp: TcpStream, ctx: Arc<Shared>, new: Accepted) {
    let deadline = Instant::now() + ctx.cfg.connect_timeout;
    let _ = tcp.set_nodelay(true);
    let shaken = tokio::select! {
        biased;
        why = new.signal.closed() => return ctx.refused(why),
        shaken = Box::pin(handshake(tcp, &ctx, deadline)) => shaken,
    };
    if let Some((stream, peer)) = shaken {
        run(stream, Listener::Tls, peer, deadline, ctx, new).await;
    }
}

/// Why a client certificate was refused, as counted.
fn certificate_refusal(e: &rustls::Error) -> Refusal {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(C::Revoked) => Refusal::CertificateRevoked,
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            Refusal::CertificateExpired
        }
        _ => Refusal::HandshakeFailed,
    }
}

/// The TLS handshake and who the certificate names; `None` (counted) if it failed.
async fn handshake(
    tcp: TcpStream,
    ctx: &Shared,
    deadline: Instant,
) -> Option<(Box<TlsStream<TcpStream>>, Peer)> {
    let acceptor = ctx.tls.as_ref()?.acceptor();
    match timeout_at(deadline, acceptor.accept(tcp)).await {
        Err(_) => {
            ctx.refused(Refusal::HandshakeTimeout);
            None
        }
        Ok(Err(e)) => {
            let why = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .map_or(Refusal::HandshakeFailed, certificate_refusal);
            tracing::debug!(reason = why.as_str(), error = %e, "TLS handshake refused");
            ctx.refused(why);
            None
        }
        Ok(Ok(stream)) => {
            let peer = match stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
            {
                None => Peer::Anonymous,
                Some(der) => match crate::tls::identity(der) {
                    Some(id) => Peer::Vehicle(id),
                    None => Peer::NoVin,
                },
            };
            Some((Box::new(stream), peer))
        }
    }
}

/// A QoS 1 publish waiting for the pipeline, in arrival order, with its outcome once known.
#[derive(Debug, Clone, Copy)]
struct Waiting {
    pkid: u16,
    outcome: Option<AckOutcome>,
}

struct Conn<S> {
    io: S,
    ctx: Arc<Shared>,
    enc: Encoder,
    rbuf: BytesMut,
    wbuf: BytesMut,
    hello: Hello,
    conn_id: u64,
    /// The vehicle this connection speaks for, once known.
    vin: Option<Vin>,
    session: Option<SharedSession>,
    /// Close orders, queued requests and completed publishes reach the connection here.
    signal: Arc<Signal>,
    /// QoS 1 publishes not yet acknowledged, oldest first; the newest has sequence number
    /// `next_seq - 1`.
    pending: VecDeque<Waiting>,
    next_seq: u64,
    /// Outcomes taken from the signal, kept to reuse its room.
    done: Vec<(u64, AckOutcome)>,
    /// Publishes read but not yet in the pipeline's channel (it was full).
    outbox: VecDeque<Incoming>,
    limiter: DefaultDirectRateLimiter,
    /// Silence after which the client is gone: 1.5 keep-alive intervals.
    keep_alive: Duration,
    /// Requests the vehicle takes unacknowledged at once.
    window: usize,
    /// Whether a refusal that left the connection open was logged at WARN already.
    warned: bool,
    /// What the read buffer has charged to the edge's budget for partial packets.
    charged: usize,
}

async fn run<S: Wire>(
    mut io: S,
    listener: Listener,
    peer: Peer,
    deadline: Instant,
    ctx: Arc<Shared>,
    new: Accepted,
) {
    let mut rbuf = BytesMut::new();
    let max = ctx.cfg.max_packet_bytes.min(MAX_CONNECT_BYTES);
    let mut charged = 0;
    let read = tokio::select! {
        biased;
        why = new.signal.closed() => Ok(Err(End::Refused(why))),
        read = timeout_at(deadline, read_hello(&mut io, &mut rbuf, max, &ctx, &mut charged)) => read,
    };
    let hello = match read {
        Err(_) => Err(Refusal::HandshakeTimeout),
        Ok(Err(End::Closed)) => return ctx.buffers.release(&mut charged),
        Ok(Err(End::Refused(r))) => Err(r),
        Ok(Ok(hello)) => Ok(hello),
    };
    let hello = match hello {
        Ok(hello) => hello,
        Err(why) => {
            ctx.buffers.release(&mut charged);
            return ctx.refused(why);
        }
    };
    let rate = NonZeroU32::new(ctx.cfg.publish_rate).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(ctx.cfg.publish_burst).unwrap_or(NonZeroU32::MIN);
    if rbuf.is_empty() {
        rbuf = BytesMut::new();
    }
    let mut conn = Conn {
        io,
        enc: Encoder(hello.version),
        rbuf,
        wbuf: BytesMut::new(),
        window: usize::from(hello.receive_maximum.unwrap_or(16).clamp(1, 16)),
        warned: false,
        hello,
        conn_id: ctx.registry.next_conn_id(),
        vin: None,
        session: None,
        signal: new.signal,
        pending: VecDeque::new(),
        next_seq: 0,
        done: Vec::new(),
        outbox: VecDeque::new(),
        limiter: RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)),
        keep_alive: ctx.cfg.max_keep_alive,
        charged,
        ctx,
    };
    let signal = conn.signal.clone();
    let opened = tokio::select! {
        biased;
        why = signal.closed() => Err(End::Refused(why)),
        opened = conn.open(listener, peer) => opened,
    };
    // Authenticated (or refused): the connection leaves the budget of those that are not.
    drop(new.pending);
    let end = match opened {
        Ok(()) => {
            conn.ctx.stats.authenticated(1);
            let end = conn.serve().await;
            conn.ctx.stats.authenticated(-1);
            end
        }
        Err(end) => end,
    };
    if let End::Refused(why) = end {
        conn.ctx.refused(why);
        conn.enc.disconnect(&mut conn.wbuf, why);
        let _ = conn.flush().await;
    }
    conn.signal.end();
    conn.ctx.buffers.release(&mut conn.charged);
    if let Some(vin) = conn.vin {
        conn.ctx.registry.release(&vin, conn.conn_id);
    }
}

async fn read_hello<S: Wire>(
    io: &mut S,
    buf: &mut BytesMut,
    max: usize,
    ctx: &Shared,
    charged: &mut usize,
) -> Result<Hello, End> {
    loop {
        match codec::read_connect(buf, max) {
            Ok(hello) => return Ok(hello),
            Err(ReadError::Refused(r)) => return Err(End::Refused(r)),
            Err(ReadError::Incomplete) => match io.read_into(buf).await {
                Ok(0) | Err(_) => return Err(End::Closed),
                Ok(_) => ctx.buffers.charge(charged, buf.capacity())?,
            },
        }
    }
}

impl<S: Wire> Conn<S> {
    /// Answers the CONNECT: identity, version, the vehicle's gate, its session.
    async fn open(&mut self, listener: Listener, peer: Peer) -> Result<(), End> {
        let version_ok = match listener {
            Listener::PlainV4 => self.hello.version == Version::V4,
            Listener::PlainV5 => self.hello.version == Version::V5,
            Listener::Tls => true,
        };
        if !version_ok {
            return self
                .refuse_connect(ConnectCode::UnsupportedVersion, Refusal::ProtocolVersion)
                .await;
        }
        let bound = match peer {
            Peer::Vehicle(id) => {
                // Whether or not TLS resumed a session, the certificate is checked now, as a
                // full handshake would check it now.
                if let Err(why) = self.check_certificate() {
                    return self.refuse_connect(ConnectCode::NotAuthorized, why).await;
                }
                Some(id)
            }
            Peer::NoVin => {
                return self
                    .refuse_connect(ConnectCode::NotAuthorized, Refusal::CertificateWithoutVin)
                    .await;
            }
            Peer::Anonymous if self.ctx.cfg.allow_anonymous => None,
            Peer::Anonymous => {
                return self
                    .refuse_connect(ConnectCode::NotAuthorized, Refusal::Anonymous)
                    .await;
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
            return self
                .refuse_connect(ConnectCode::ServerBusy, Refusal::TooManyConnections)
                .await;
        }
        let (expiry, capped) = self.expiry();
        let mut resumed = false;
        if let Some(id) = bound {
            if !(self.ctx.gate)(&id.vin) {
                return self
                    .refuse_connect(ConnectCode::NotAuthorized, Refusal::VehicleBlocked)
                    .await;
            }
            resumed = self.bind(id.vin, Some((id.serial, id.not_after)), expiry);
        }
        let offer = Offer {
            receive_maximum: self.ctx.cfg.max_inflight,
            max_packet_bytes: self.ctx.cfg.max_packet_bytes,
            server_keep_alive: (keep_alive != asked).then_some(keep_alive),
            session_expiry: capped,
        };
        self.enc
            .connack(&mut self.wbuf, ConnectCode::Accepted, resumed, offer);
        self.keep_alive = Duration::from_millis(u64::from(keep_alive) * 1500);
        if resumed {
            self.resend();
        }
        self.flush().await
    }

    /// The presented certificate against the CRL in force and the clock now.
    fn check_certificate(&self) -> Result<(), Refusal> {
        match (&self.ctx.tls, self.io.peer_chain()) {
            (Some(tls), Some(chain)) => tls.check(chain).map_err(|e| certificate_refusal(&e)),
            _ => Ok(()),
        }
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

    async fn refuse_connect(&mut self, code: ConnectCode, why: Refusal) -> Result<(), End> {
        let offer = Offer {
            receive_maximum: self.ctx.cfg.max_inflight,
            max_packet_bytes: self.ctx.cfg.max_packet_bytes,
            server_keep_alive: None,
            session_expiry: None,
        };
        self.enc.connack(&mut self.wbuf, code, false, offer);
        let _ = self.flush().await;
        tracing::warn!(reason = why.as_str(), "MQTT connection refused");
        self.ctx.refused(why);
        // The CONNACK said why: no DISCONNECT follows it.
        Err(End::Closed)
    }

    /// Makes this connection the vehicle's one live connection; true if its session resumed.
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
        self.session = Some(session);
        resumed
    }

    /// Binds an anonymous connection to the vehicle its topic names, or checks it is that
    /// vehicle's. `None` when the topic names no vehicle.
    fn vehicle_for(&mut self, topic: &[u8]) -> Result<Option<Vin>, End> {
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
            self.resend();
        }
        Ok(Some(vin))
    }

    async fn serve(&mut self) -> End {
        let mut stop = self.ctx.stop.clone();
        // The loop's own handles, apart from `self`.
        let tx = self.ctx.tx.clone();
        let signal = self.signal.clone();
        let mut last_heard = Instant::now();
        // One timer for the connection's life, moved on only when it fires: a packet does
        // not touch the timer wheel.
        let silence = tokio::time::sleep_until(last_heard + self.keep_alive);
        tokio::pin!(silence);
        // The wait on the stop, too, lasts across packets: a packet does not register and
        // remove a waiter.
        let stopped = stop.changed();
        tokio::pin!(stopped);
        loop {
            if let Err(end) = self.flush().await {
                return end;
            }
            // An MQTT 5 client was told the receive maximum and is closed if it exceeds it,
            // so reading goes on (PINGREQs are answered while its window is full). A 3.1.1
            // client was told nothing: past the limit it is simply not read.
            // Publishes the pipeline has no room for wait in the outbox; past a window's worth
            // the connection is not read (back-pressure). A client within its window (at most
            // `max_inflight` unacknowledged) is always read, so its keep-alives are answered.
            let max = usize::from(self.ctx.cfg.max_inflight);
            let can_read = self.outbox.len() <= max
                && (self.hello.version == Version::V5 || self.pending.len() <= max);
            if !can_read {
                // Silence the edge imposes is not the client's.
                last_heard = Instant::now();
            }
            tokio::select! {
                biased;
                _ = &mut stopped => return End::Refused(Refusal::ShuttingDown),
                () = signal.notified() => {
                    if let Err(end) = self.signalled() {
                        return end;
                    }
                }
                permit = tx.reserve(), if !self.outbox.is_empty() => match permit {
                    Ok(permit) => {
                        if let Some(m) = self.outbox.pop_front() {
                            permit.send(m);
                        }
                        if let Err(end) = self.forward() {
                            return end;
                        }
                    }
                    Err(_) => return End::Refused(Refusal::ShuttingDown),
                },
                read = self.io.read_into(&mut self.rbuf), if can_read => match read {
                    Ok(0) | Err(_) => return End::Closed,
                    Ok(_) => {
                        if let Err(why) = self.ctx.buffers.charge(&mut self.charged, self.rbuf.capacity()) {
                            return why.into();
                        }
                        match self.handle_buffered().await {
                            Err(end) => return end,
                            // Only a whole packet is heard: bytes of one dribbled in slowly do
                            // not keep a connection alive past its keep-alive. Handling may
                            // have waited for the pipeline: count from now.
                            Ok(handled) if handled > 0 => last_heard = Instant::now(),
                            Ok(_) => {}
                        }
                        if self.rbuf.is_empty() {
                            // The frames read hold their part of it; nothing else needs it.
                            self.rbuf = BytesMut::new();
                        }
                        if let Err(why) = self.ctx.buffers.charge(&mut self.charged, self.rbuf.capacity()) {
                            return why.into();
                        }
                    }
                },
                () = &mut silence, if can_read => {
                    let due = last_heard + self.keep_alive;
                    if Instant::now() >= due {
                        return End::Refused(Refusal::KeepAliveTimeout);
                    }
                    silence.as_mut().reset(due);
                }
            }
        }
    }

    /// Acts on what the signal carries: a close order, queued requests, completed publishes.
    fn signalled(&mut self) -> Result<(), End> {
        if let Some(why) = self.signal.close_order() {
            return Err(why.into());
        }
        if self.signal.take_deliver() {
            self.deliver();
        }
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
        self.acknowledge_ready()
    }

    /// PUBACKs for the oldest publishes whose outcome is known, in arrival order.
    fn acknowledge_ready(&mut self) -> Result<(), End> {
        while let Some(Waiting {
            pkid,
            outcome: Some(outcome),
        }) = self.pending.front().copied()
        {
            self.pending.pop_front();
            self.acknowledge(pkid, outcome)?;
        }
        Ok(())
    }

    fn acknowledge(&mut self, pkid: u16, outcome: AckOutcome) -> Result<(), End> {
        match (self.hello.version, outcome) {
            (_, AckOutcome::Accepted) | (Version::V5, _) => {
                self.enc.puback(&mut self.wbuf, pkid, outcome);
                Ok(())
            }
            // MQTT 3.1.1 has no negative PUBACK: closing makes the vehicle send it again.
            (Version::V4, AckOutcome::NotAuthorized) => Err(Refusal::PublishNotPermitted.into()),
            (Version::V4, AckOutcome::Failed) => Err(End::Closed),
        }
    }

    /// Handles every whole packet read so far; returns how many there were.
    async fn handle_buffered(&mut self) -> Result<usize, End> {
        let mut handled = 0;
        loop {
            let packet = match codec::read(
                self.hello.version,
                &mut self.rbuf,
                self.ctx.cfg.max_packet_bytes,
            ) {
                Ok(p) => p,
                Err(ReadError::Incomplete) => return Ok(handled),
                Err(ReadError::Refused(r)) => return Err(r.into()),
            };
            handled += 1;
            match packet {
                Inbound::Publish {
                    qos,
                    pkid,
                    dup,
                    retain,
                    topic,
                    payload,
                } => {
                    if dup {
                        self.ctx.stats.resent();
                    }
                    self.publish(qos, pkid, retain, topic, payload).await?;
                }
                Inbound::PubAck { pkid } => {
                    if let Some(session) = &self.session {
                        lock(session).inflight.retain(|o| o.pkid != pkid);
                    }
                    self.deliver();
                }
                Inbound::Subscribe { pkid, filters } => self.subscribe(pkid, filters)?,
                Inbound::Unsubscribe { pkid, filters } => {
                    let existed: Vec<bool> = match &self.session {
                        Some(session) => {
                            let mut s = lock(session);
                            filters
                                .iter()
                                .map(|f| {
                                    let before = s.subscriptions.len();
                                    s.subscriptions.retain(|(g, _)| g != f);
                                    s.subscriptions.len() < before
                                })
                                .collect()
                        }
                        None => vec![false; filters.len()],
                    };
                    self.enc.unsuback(&mut self.wbuf, pkid, &existed);
                }
                Inbound::PingReq => self.enc.pingresp(&mut self.wbuf),
                Inbound::Disconnect => return Err(End::Closed),
                Inbound::Unexpected => return Err(Refusal::ProtocolError.into()),
            }
        }
    }

    async fn publish(
        &mut self,
        qos: u8,
        pkid: u16,
        retain: bool,
        topic: Bytes,
        payload: Bytes,
    ) -> Result<(), End> {
        if qos > 1 {
            return Err(Refusal::QosNotSupported.into());
        }
        // MQTT 5 was told no retained messages exist here; 3.1.1 cannot be told, and the
        // flag is ignored (nothing is retained).
        if retain && self.hello.version == Version::V5 {
            return Err(Refusal::RetainNotSupported.into());
        }
        let permitted = match self.vehicle_for(&topic)? {
            Some(vin) => may_publish(&vin, &topic),
            // A topic that names no vehicle: the pipeline rejects it, counted.
            None => true,
        };
        if !permitted {
            self.refused_in_place(
                Refusal::PublishNotPermitted,
                "publish outside the vehicle's own topics refused",
            );
            return match (self.hello.version, qos) {
                (Version::V5, 1) => {
                    self.pending.push_back(Waiting {
                        pkid,
                        outcome: Some(AckOutcome::NotAuthorized),
                    });
                    self.next_seq += 1;
                    self.acknowledge_ready()
                }
                (Version::V5, _) => Ok(()),
                (Version::V4, _) => Err(End::Closed),
            };
        }
        if qos == 1
            && self.pending.len() >= usize::from(self.ctx.cfg.max_inflight)
            && self.hello.version == Version::V5
        {
            return Err(Refusal::ReceiveMaximumExceeded.into());
        }
        if self.limiter.check().is_err() {
            self.ctx.stats.throttled();
            // On the heap: only a throttled publish needs the wait's state.
            Box::pin(self.wait_for_rate()).await?;
        }
        let ack = (qos == 1).then(|| {
            let ack = Ack::on_connection(self.signal.clone(), self.next_seq);
            self.pending.push_back(Waiting {
                pkid,
                outcome: None,
            });
            self.next_seq += 1;
            ack
        });
        self.ctx.stats.count_received(qos);
        self.outbox.push_back(Incoming {
            topic,
            payload,
            ack,
        });
        self.forward()
    }

    /// Waits until the publish rate allows one more publish, and takes it: a publish that
    /// waited is charged like any other, or every throttled one would pass free. A close
    /// (blocked, revoked, taken over) or shutdown ends the wait: the publishes already read
    /// could otherwise hold the connection open for minutes.
    async fn wait_for_rate(&mut self) -> Result<(), End> {
        let mut stop = self.ctx.stop.clone();
        let signal = self.signal.clone();
        while let Err(not_until) = self.limiter.check() {
            if *stop.borrow_and_update() {
                return Err(Refusal::ShuttingDown.into());
            }
            let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
            tokio::select! {
                biased;
                _ = stop.changed() => return Err(Refusal::ShuttingDown.into()),
                () = signal.notified() => self.signalled()?,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        Ok(())
    }

    /// Moves what the pipeline's channel takes now from the outbox into it. What stays waits
    /// for room (the serve loop), while the connection goes on answering keep-alives.
    fn forward(&mut self) -> Result<(), End> {
        while let Some(m) = self.outbox.pop_front() {
            match self.ctx.tx.try_send(m) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(m)) => {
                    self.outbox.push_front(m);
                    break;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    return Err(Refusal::ShuttingDown.into());
                }
            }
        }
        Ok(())
    }

    fn subscribe(&mut self, pkid: u16, filters: Vec<(String, u8)>) -> Result<(), End> {
        let mut granted = Vec::with_capacity(filters.len());
        let mut refused = 0;
        for (filter, qos) in filters {
            let vin = match self.vin {
                Some(vin) => Some(vin),
                None if is_concrete(&filter) => self.vehicle_for(filter.as_bytes())?,
                None => None,
            };
            match (vin, &self.session) {
                (Some(vin), Some(session)) if may_subscribe(&vin, &filter) => {
                    let qos = qos.min(1);
                    let mut s = lock(session);
                    s.subscriptions.retain(|(f, _)| *f != filter);
                    s.subscriptions.push((filter, qos));
                    granted.push(Some(qos));
                }
                _ => {
                    refused += 1;
                    granted.push(None);
                }
            }
        }
        for _ in 0..refused {
            self.refused_in_place(
                Refusal::SubscribeNotPermitted,
                "subscription outside the vehicle's own topics refused",
            );
        }
        self.enc.suback(&mut self.wbuf, pkid, &granted);
        self.deliver();
        Ok(())
    }

    /// Counts a refusal that leaves the connection open. Only a connection's first is logged
    /// at WARN: a vehicle repeating it as fast as it can must not fill the log, and the
    /// counter has every one.
    fn refused_in_place(&mut self, why: Refusal, what: &'static str) {
        self.ctx.refused(why);
        if std::mem::replace(&mut self.warned, true) {
            tracing::debug!(reason = why.as_str(), "{what}");
        } else {
            tracing::warn!(
                reason = why.as_str(),
                "{what} (more refusals of this connection are logged at debug level)"
            );
        }
    }

    /// Sends queued requests while the vehicle's window has room.
    fn deliver(&mut self) {
        let Some(session) = &self.session else {
            return;
        };
        let mut s = lock(session);
        while s.inflight.len() < self.window {
            let Some(mut out) = s.queued.pop_front() else {
                break;
            };
            match s.granted_qos(&out.topic) {
                Some(1) => {
                    out.pkid = s.next_pkid();
                    self.enc
                        .publish(&mut self.wbuf, 1, out.pkid, &out.topic, &out.payload, false);
                    s.inflight.push_back(out);
                }
                Some(_) => self
                    .enc
                    .publish(&mut self.wbuf, 0, 0, &out.topic, &out.payload, false),
                // Unsubscribed since it was queued.
                None => self.ctx.stats.request(crate::Delivery::NoSubscriber),
            }
        }
    }

    /// A resumed session: requests sent before and not acknowledged go again, then the queue.
    fn resend(&mut self) {
        if let Some(session) = &self.session {
            let s = lock(session);
            for out in &s.inflight {
                self.enc
                    .publish(&mut self.wbuf, 1, out.pkid, &out.topic, &out.payload, true);
            }
        }
        self.deliver();
    }

    /// Writes what is buffered; a client that does not read is closed.
    async fn flush(&mut self) -> Result<(), End> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let write = async {
            self.io.write_all(&self.wbuf).await?;
            self.io.flush().await
        };
        tokio::pin!(write);
        // Nearly every write completes at once: the timer is set only for one that waits.
        let written = match futures::poll!(write.as_mut()) {
            Poll::Ready(r) => Ok(r),
            Poll::Pending => timeout(self.ctx.cfg.write_timeout, write).await,
        };
        match written {
            Ok(Ok(())) => {
                if self.wbuf.capacity() > WRITE_KEEP {
                    self.wbuf = BytesMut::new();
                } else {
                    self.wbuf.clear();
                }
                Ok(())
            }
            Ok(Err(_)) => Err(End::Closed),
            Err(_) => Err(Refusal::WriteTimeout.into()),
        }
    }
}
