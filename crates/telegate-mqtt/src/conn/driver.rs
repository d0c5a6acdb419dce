//! A connection's task: it owns the socket, the read and write buffers and the timers, reads
//! the CONNECT, then feeds the [`Machine`] what it reads and what the signal carries, writes
//! what the machine answers and hands its publishes to the pipeline.

use super::machine::{Machine, Publish, Step};
use super::{Accepted, End, Peer, Wire, check_certificate};
use crate::Refusal;
use crate::codec::{self, Hello, ReadError};
use crate::config::Listener;
use crate::edge::Shared;
use bytes::BytesMut;
use std::sync::Arc;
use std::task::Poll;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc::error::TrySendError;
use tokio::time::{Instant, timeout, timeout_at};

/// A write buffer larger than this is given back once written; a smaller one is kept for the
/// next PUBACK.
const WRITE_KEEP: usize = 64;

/// The largest CONNECT the edge reads (or `max_packet_bytes`, if smaller). A vehicle's is a
/// few dozen bytes; a client that has not authenticated gets no room for more.
const MAX_CONNECT_BYTES: usize = 16 * 1024;

/// How long a connection the edge closes waits for the pipeline to finish the frames it was
/// given, so that their PUBACKs go out before the close.
const DRAIN_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

/// How long a connection closed by shutdown tries to tell its client so.
const CLOSE_AT_SHUTDOWN: std::time::Duration = std::time::Duration::from_secs(1);

struct Driver<S> {
    io: S,
    m: Machine,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// What the read buffer has charged to the edge's budget for partial packets.
    charged: usize,
    /// Whole packets wait in the read buffer: the machine stopped taking them (a client
    /// past its window) before the buffer was empty.
    parked: bool,
}

/// Serves a connection from its first byte (after TLS, for TLS) to its end.
pub(super) async fn run<S: Wire>(
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
        Ok(Ok(hello)) => hello,
        failed => {
            ctx.buffers.release(&mut charged);
            match failed {
                Err(_) => ctx.refused(Refusal::HandshakeTimeout),
                Ok(Err(End::Refused(why))) => ctx.refused(why),
                _ => {}
            }
            return;
        }
    };
    if rbuf.is_empty() {
        rbuf = BytesMut::new();
    }
    // The machine decides whether the certificate matters (after the version); the check
    // needs the stream, so it is made here.
    let certificate = match peer {
        Peer::Vehicle(ref id) => check_certificate(&ctx, &io, id.verified),
        Peer::Anonymous | Peer::NoVin => Ok(()),
    };
    let signal = new.signal;
    let mut conn = Driver {
        io,
        m: Machine::new(ctx, signal.clone(), hello, Instant::now().into_std()),
        rbuf,
        wbuf: BytesMut::new(),
        charged,
        parked: false,
    };
    let opened = tokio::select! {
        biased;
        why = signal.closed() => Err(End::Refused(why)),
        opened = conn.open(listener, peer, certificate) => opened,
    };
    drop(signal);
    // Authenticated (or refused): the connection leaves the budget of those that are not.
    drop(new.pending);
    let end = match opened {
        Ok(()) => {
            conn.m.ctx().stats.authenticated(1);
            let end = conn.serve().await;
            if drains(&end) {
                conn.drain().await;
            }
            conn.m.ctx().stats.authenticated(-1);
            end
        }
        Err(end) => end,
    };
    conn.m.close(&end, &mut conn.wbuf);
    match end {
        // Said in a second at most: shutdown waits for every connection's task.
        End::Refused(Refusal::ShuttingDown) => {
            let _ = tokio::time::timeout(CLOSE_AT_SHUTDOWN, conn.flush()).await;
        }
        End::Refused(_) => {
            let _ = conn.flush().await;
        }
        End::Closed => {}
    }
    conn.m.ctx().buffers.release(&mut conn.charged);
    conn.m.finish();
}

/// Whether a connection that ends so waits for its frames' PUBACKs first: not when the
/// client is gone or does not read, nor at shutdown (which has its own order).
fn drains(end: &End) -> bool {
    match end {
        End::Closed => false,
        End::Refused(why) => !matches!(why, Refusal::WriteTimeout | Refusal::ShuttingDown),
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

impl<S: Wire> Driver<S> {
    /// Answers the CONNECT and writes the answer.
    async fn open(
        &mut self,
        listener: Listener,
        peer: Peer,
        certificate: Result<(), Refusal>,
    ) -> Result<(), End> {
        match self.m.open(listener, peer, certificate, &mut self.wbuf) {
            Ok(()) => self.flush().await,
            Err(end) => {
                let _ = self.flush().await;
                Err(end)
            }
        }
    }

    async fn serve(&mut self) -> End {
        // The loop's own handles, apart from `self`.
        let stop = self.m.ctx().stop.clone();
        let tx = self.m.ctx().tx.clone();
        let signal = self.m.signal().clone();
        // One timer for the connection's life, moved on only when it fires: a packet does
        // not touch the timer wheel.
        let due = self.m.keep_alive_from(Instant::now().into_std());
        let silence = tokio::time::sleep_until(Instant::from_std(due));
        tokio::pin!(silence);
        // The wait on the stop, too, lasts across packets: a packet does not register and
        // remove a waiter.
        let stopped = stop.cancelled();
        tokio::pin!(stopped);
        loop {
            // A client that does not read holds the write until the write timeout; shutdown
            // does not wait for it.
            let flushed = tokio::select! {
                biased;
                () = &mut stopped => return End::Refused(Refusal::ShuttingDown),
                flushed = self.flush() => flushed,
            };
            if let Err(end) = flushed {
                return end;
            }
            if self.parked && self.m.may_read() {
                self.parked = false;
                if let Err(end) = self.received().await {
                    return end;
                }
                continue;
            }
            let can_read = self.m.may_read();
            if !can_read {
                self.m.keep_alive_from(Instant::now().into_std());
            }
            tokio::select! {
                biased;
                () = &mut stopped => return End::Refused(Refusal::ShuttingDown),
                () = signal.notified() => {
                    if let Err(end) = self.m.signalled(&mut self.wbuf) {
                        return end;
                    }
                }
                permit = tx.reserve(), if self.m.has_outbox() => match permit {
                    Ok(permit) => {
                        if let Some(m) = self.m.next_publish() {
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
                        if let Err(end) = self.received().await {
                            return end;
                        }
                    }
                },
                () = &mut silence, if can_read => {
                    match self.m.silence(Instant::now().into_std()) {
                        Err(end) => return end,
                        Ok(due) => silence.as_mut().reset(Instant::from_std(due)),
                    }
                }
            }
        }
    }

    /// Bytes came: the buffer is charged to the budget while it holds a partial packet,
    /// and every whole packet is handled.
    async fn received(&mut self) -> Result<(), End> {
        let budget = &self.m.ctx().buffers;
        budget.charge(&mut self.charged, self.rbuf.capacity())?;
        self.handle_buffered().await?;
        if self.rbuf.is_empty() {
            // The frames read hold their part of it; nothing else needs it.
            self.rbuf = BytesMut::new();
        }
        let budget = &self.m.ctx().buffers;
        budget.charge(&mut self.charged, self.rbuf.capacity())?;
        Ok(())
    }

    /// Hands the machine every whole packet read so far. The clock is read once for all of
    /// them (and again after a wait), not for bytes that make no whole packet yet.
    async fn handle_buffered(&mut self) -> Result<(), End> {
        let mut now = None;
        let max = self.m.ctx().cfg.max_packet_bytes;
        loop {
            if !self.m.may_read() {
                // What is left waits until PUBACKs make room.
                self.parked = !self.rbuf.is_empty();
                return Ok(());
            }
            let packet = match codec::read(self.m.version(), &mut self.rbuf, max) {
                Ok(p) => p,
                Err(ReadError::Incomplete) => return Ok(()),
                Err(ReadError::Refused(r)) => return Err(r.into()),
            };
            let at = *now.get_or_insert_with(|| Instant::now().into_std());
            let step = self.m.packet(at, packet, &mut self.wbuf)?;
            if let Step::Throttled { publish, until } = step {
                // On the heap: only a throttled publish needs the wait's state.
                Box::pin(self.throttle(publish, until)).await?;
                now = None;
            }
            self.forward()?;
        }
    }

    /// Waits until the publish rate takes a throttled publish. A close (blocked, revoked,
    /// taken over) or shutdown ends the wait: the publishes already read could otherwise hold
    /// the connection open for minutes.
    async fn throttle(
        &mut self,
        mut publish: Publish,
        mut until: std::time::Instant,
    ) -> Result<(), End> {
        let stop = self.m.ctx().stop.clone();
        let signal = self.m.signal().clone();
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => return Err(Refusal::ShuttingDown.into()),
                () = signal.notified() => self.m.signalled(&mut self.wbuf)?,
                () = tokio::time::sleep_until(Instant::from_std(until)) => {}
            }
            match self.m.throttled(Instant::now().into_std(), publish) {
                Step::Done => return Ok(()),
                Step::Throttled {
                    publish: p,
                    until: u,
                } => (publish, until) = (p, u),
            }
        }
    }

    /// The edge closes the connection: PUBACKs for the frames Kafka holds go out first, as
    /// the pipeline completes them, for up to [`DRAIN_LIMIT`] (less if the gateway stops).
    async fn drain(&mut self) {
        self.m.closing();
        let stop = self.m.ctx().stop.clone();
        let signal = self.m.signal().clone();
        let deadline = Instant::now() + DRAIN_LIMIT;
        loop {
            let settled = self.m.settled(&mut self.wbuf);
            if self.flush().await.is_err() || settled {
                return;
            }
            tokio::select! {
                biased;
                () = stop.cancelled() => return,
                () = signal.notified() => {}
                () = tokio::time::sleep_until(deadline) => return,
            }
        }
    }

    /// Moves what the pipeline's channel takes now from the outbox into it. What stays waits
    /// for room (the serve loop), while the connection goes on answering keep-alives.
    fn forward(&mut self) -> Result<(), End> {
        while let Some(m) = self.m.next_publish() {
            match self.m.ctx().tx.try_send(m) {
                Ok(()) => {}
                Err(TrySendError::Full(m)) => {
                    self.m.hold(m);
                    break;
                }
                Err(TrySendError::Closed(_)) => return Err(Refusal::ShuttingDown.into()),
            }
        }
        Ok(())
    }

    /// Writes what is buffered; a client that does not read is closed.
    async fn flush(&mut self) -> Result<(), End> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let write_timeout = self.m.ctx().cfg.write_timeout;
        let write = async {
            self.io.write_all(&self.wbuf).await?;
            self.io.flush().await
        };
        tokio::pin!(write);
        // Nearly every write completes at once: the timer is set only for one that waits.
        let written = match futures::poll!(write.as_mut()) {
            Poll::Ready(r) => Ok(r),
            Poll::Pending => timeout(write_timeout, write).await,
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
