//! One client connection: TLS handshake and CONNECT within the connect timeout, identity,
//! the topic rules, publishes handed to the pipeline with their PUBACKs sent in arrival order
//! once the pipeline completes them, requests to the vehicle, keep-alive and limits.

use crate::codec::{
    self, AckOutcome, ConnectCode, Encoder, Hello, Inbound, Offer, ReadError, Version,
};
use crate::config::Listener;
use crate::edge::Shared;
use crate::rules::{is_concrete, may_publish, may_subscribe, named_vin};
use crate::sessions::{Control, Owner, SharedSession, lock};
use crate::{Ack, Incoming, Refusal};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::collections::VecDeque;
use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use telegate_frame::Vin;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep_until, timeout, timeout_at};

/// Who the peer proved to be.
#[derive(Debug)]
pub(crate) enum Peer {
    /// No certificate (a plain listener, or TLS without client authentication).
    Anonymous,
    /// A certificate naming one VIN.
    Vehicle { vin: Vin, serial: Vec<u8> },
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

/// Accepts one TCP connection on a listener: the TLS handshake first where there is one.
pub(crate) async fn accept(tcp: TcpStream, listener: Listener, ctx: Arc<Shared>) {
    let deadline = Instant::now() + ctx.cfg.connect_timeout;
    let _ = tcp.set_nodelay(true);
    let acceptor = ctx
        .tls
        .as_ref()
        .filter(|_| listener == Listener::Tls)
        .map(|tls| tls.acceptor());
    let Some(acceptor) = acceptor else {
        return run(tcp, listener, Peer::Anonymous, deadline, ctx).await;
    };
    match timeout_at(deadline, acceptor.accept(tcp)).await {
        Err(_) => ctx.refused(Refusal::HandshakeTimeout),
        Ok(Err(e)) => {
            let revoked = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .is_some_and(|e| {
                    matches!(
                        e,
                        rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)
                    )
                });
            let why = match revoked {
                true => Refusal::CertificateRevoked,
                false => Refusal::HandshakeFailed,
            };
            tracing::debug!(reason = why.as_str(), error = %e, "TLS handshake refused");
            ctx.refused(why);
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
                    Some((vin, serial)) => Peer::Vehicle { vin, serial },
                    None => Peer::NoVin,
                },
            };
            run(stream, listener, peer, deadline, ctx).await;
        }
    }
}

/// A QoS 1 publish waiting for the pipeline, in arrival order.
struct PendingAck {
    pkid: u16,
    rx: oneshot::Receiver<AckOutcome>,
}

impl Future for PendingAck {
    type Output = (u16, AckOutcome);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let pkid = self.pkid;
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| (pkid, r.unwrap_or(AckOutcome::Failed)))
    }
}

fn settled(pkid: u16, outcome: AckOutcome) -> PendingAck {
    let (ack, rx) = Ack::new();
    ack.complete(outcome);
    PendingAck { pkid, rx }
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
    control_tx: mpsc::UnboundedSender<Control>,
    control: mpsc::UnboundedReceiver<Control>,
    pending: FuturesOrdered<PendingAck>,
    /// Publishes read but not yet in the pipeline's channel (it was full).
    outbox: VecDeque<Incoming>,
    limiter: DefaultDirectRateLimiter,
    /// Silence after which the client is gone: 1.5 keep-alive intervals.
    keep_alive: Duration,
    /// Requests the vehicle takes unacknowledged at once.
    window: usize,
    /// Whether a refusal that left the connection open was logged at WARN already.
    warned: bool,
}

async fn run<S>(io: S, listener: Listener, peer: Peer, deadline: Instant, ctx: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut io = io;
    let mut rbuf = BytesMut::new();
    let max = ctx.cfg.max_packet_bytes;
    let hello = match timeout_at(deadline, read_hello(&mut io, &mut rbuf, max)).await {
        Err(_) => return ctx.refused(Refusal::HandshakeTimeout),
        Ok(Err(End::Closed)) => return,
        Ok(Err(End::Refused(r))) => return ctx.refused(r),
        Ok(Ok(hello)) => hello,
    };
    let rate = NonZeroU32::new(ctx.cfg.publish_rate).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(ctx.cfg.publish_burst).unwrap_or(NonZeroU32::MIN);
    let (control_tx, control) = mpsc::unbounded_channel();
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
        control_tx,
        control,
        pending: FuturesOrdered::new(),
        outbox: VecDeque::new(),
        limiter: RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)),
        keep_alive: ctx.cfg.max_keep_alive,
        ctx,
    };
    let end = match conn.open(listener, peer).await {
        Ok(()) => conn.serve().await,
        Err(end) => end,
    };
    if let End::Refused(why) = end {
        conn.ctx.refused(why);
        conn.enc.disconnect(&mut conn.wbuf, why);
        let _ = conn.flush().await;
    }
    if let Some(vin) = conn.vin {
        conn.ctx.registry.release(&vin, conn.conn_id);
    }
}

async fn read_hello<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Hello, End> {
    loop {
        match codec::read_connect(buf, max) {
            Ok(hello) => return Ok(hello),
            Err(ReadError::Refused(r)) => return Err(End::Refused(r)),
            Err(ReadError::Incomplete) => match io.read_buf(buf).await {
                Ok(0) | Err(_) => return Err(End::Closed),
                Ok(_) => {}
            },
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
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
            Peer::Vehicle { vin, serial } => Some((vin, serial)),
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
        let (expiry, capped) = self.expiry();
        let mut resumed = false;
        if let Some((vin, serial)) = bound {
            if !(self.ctx.gate)(&vin) {
                return self
                    .refuse_connect(ConnectCode::NotAuthorized, Refusal::VehicleBlocked)
                    .await;
            }
            resumed = self.bind(vin, Some(serial), expiry);
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
    fn bind(&mut self, vin: Vin, serial: Option<Vec<u8>>, expiry: Duration) -> bool {
        let owner = Owner {
            conn: self.conn_id,
            control: self.control_tx.clone(),
            serial,
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
        // The loop's own handle on the pipeline's channel, apart from `self`.
        let tx = self.ctx.tx.clone();
        let mut last_heard = Instant::now();
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
                _ = stop.changed() => return End::Refused(Refusal::ShuttingDown),
                control = self.control.recv() => match control {
                    Some(Control::Close(why)) => return End::Refused(why),
                    Some(Control::Deliver) => self.deliver(),
                    None => {}
                },
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
                Some((pkid, outcome)) = self.pending.next(), if !self.pending.is_empty() => {
                    if let Err(end) = self.acknowledge(pkid, outcome) {
                        return end;
                    }
                }
                read = self.io.read_buf(&mut self.rbuf), if can_read => match read {
                    Ok(0) | Err(_) => return End::Closed,
                    Ok(_) => {
                        if let Err(end) = self.handle_buffered().await {
                            return end;
                        }
                        // Handling may have waited for the pipeline: count from now.
                        last_heard = Instant::now();
                    }
                },
                _ = sleep_until(last_heard + self.keep_alive), if can_read => {
                    return End::Refused(Refusal::KeepAliveTimeout);
                }
            }
        }
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

    /// Handles every whole packet read so far.
    async fn handle_buffered(&mut self) -> Result<(), End> {
        loop {
            let packet = match codec::read(
                self.hello.version,
                &mut self.rbuf,
                self.ctx.cfg.max_packet_bytes,
            ) {
                Ok(p) => p,
                Err(ReadError::Incomplete) => return Ok(()),
                Err(ReadError::Refused(r)) => return Err(r.into()),
            };
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
                    self.pending
                        .push_back(settled(pkid, AckOutcome::NotAuthorized));
                    Ok(())
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
            self.wait_for_rate().await?;
        }
        let ack = (qos == 1).then(|| {
            let (ack, rx) = Ack::new();
            self.pending.push_back(PendingAck { pkid, rx });
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
        while let Err(not_until) = self.limiter.check() {
            if *stop.borrow_and_update() {
                return Err(Refusal::ShuttingDown.into());
            }
            let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
            tokio::select! {
                biased;
                _ = stop.changed() => return Err(Refusal::ShuttingDown.into()),
                control = self.control.recv() => match control {
                    Some(Control::Close(why)) => return Err(why.into()),
                    Some(Control::Deliver) => self.deliver(),
                    None => {}
                },
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
        match timeout(self.ctx.cfg.write_timeout, write).await {
            Ok(Ok(())) => {
                self.wbuf.clear();
                Ok(())
            }
            Ok(Err(_)) => Err(End::Closed),
            Err(_) => Err(Refusal::WriteTimeout.into()),
        }
    }
}
