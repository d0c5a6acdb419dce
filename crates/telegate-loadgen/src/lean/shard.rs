//! A shard: one task driving many lean vehicles. It wakes when a frame is due (at most about
//! once a millisecond: tokio's timer resolution) or when one of its connections is readable
//! or writable again, and then does everything that is due at once: makes the frames, reads
//! the PUBACKs, and writes each vehicle's packets with one write.
//!
//! Each vehicle's connection is polled with a waker of its own, which puts the vehicle on the
//! shard's ready list and wakes the shard: a readable socket costs a read for that vehicle
//! only, and no vehicle has a task, a timer or a channel of its own. Connecting (TCP, TLS,
//! CONNECT and CONNACK) runs in a short task per attempt, which hands the connection back.

use super::conn::Conn;
use super::session::{Frame, Session, Write};
use super::wire::{self, Incoming};
use super::{Counts, Plan};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};
use telegate_frame::{FrameKind, encode, now_ms};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::Notify;

/// Bytes a connection's write buffer may hold before no more frames are put in it: beyond
/// this the socket is not keeping up, and frames wait in the outbox (where they count
/// towards a full one).
const BUFFERED: usize = 16 * 1024;

/// Keep-alive bookkeeping runs this often.
const HOUSEKEEPING: Duration = Duration::from_secs(1);

/// While draining, how often the shard looks whether every vehicle is done.
const DRAIN_CHECK: Duration = Duration::from_millis(100);

/// What wakers and connect tasks hand to their shard.
#[derive(Debug, Default)]
struct Inbox {
    state: Mutex<Handed>,
    notify: Notify,
}

#[derive(Debug, Default)]
struct Handed {
    /// Vehicles whose connection is readable or writable again.
    ready: Vec<usize>,
    /// Connection attempts that ended.
    connected: Vec<(usize, io::Result<Conn>)>,
}

impl Inbox {
    fn hand(&self, f: impl FnOnce(&mut Handed)) {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()));
        self.notify.notify_one();
    }

    fn take(&self, into: &mut Handed) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::swap(&mut *state, into);
    }
}

/// A vehicle's waker: puts it on its shard's ready list once until the shard has looked.
#[derive(Debug)]
struct LaneWake {
    lane: usize,
    queued: AtomicBool,
    inbox: Arc<Inbox>,
}

impl Wake for LaneWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            self.inbox.hand(|h| h.ready.push(self.lane));
        }
    }
}

#[derive(Debug)]
enum Link {
    /// A connection attempt is due (in the shard's retry queue).
    Down,
    Connecting,
    Up(Box<Up>),
}

#[derive(Debug)]
struct Up {
    conn: Conn,
    /// Packets not yet taken by the socket, from `written` on.
    out: Vec<u8>,
    written: usize,
    /// The start of a packet whose rest has not arrived.
    partial: Vec<u8>,
    last_write: Instant,
    /// A PINGREQ awaiting its PINGRESP, since then.
    ping: Option<Instant>,
}

/// One vehicle.
#[derive(Debug)]
struct Lane {
    /// Its index in the fleet: the tracker's and the TLS identity's.
    vehicle: usize,
    vin: String,
    client_id: String,
    session: Session,
    seq: u64,
    link: Link,
    wake: Arc<LaneWake>,
    waker: Waker,
    dirty: bool,
    /// When the vehicle last got a PUBACK: its drain ends `drain_idle` after this.
    last_ack: Instant,
}

#[derive(Debug)]
pub(super) struct Shard {
    plan: Arc<Plan>,
    lanes: Vec<Lane>,
    inbox: Arc<Inbox>,
    /// When each vehicle's next frame is due.
    due: BinaryHeap<Reverse<(Instant, usize)>>,
    /// When each vehicle that has no connection tries again.
    retry: BinaryHeap<Reverse<(Instant, usize)>>,
    dirty: Vec<usize>,
    handed: Handed,
    read_buf: Vec<u8>,
    counts: Counts,
}

impl Shard {
    /// A shard for the fleet's vehicles `vehicles` (indices into the plan's VINs).
    pub(super) fn new(plan: Arc<Plan>, vehicles: impl Iterator<Item = usize>) -> Self {
        let inbox = Arc::new(Inbox::default());
        let mut due = BinaryHeap::new();
        let mut retry = BinaryHeap::new();
        let fleet = plan.vins.len().max(1);
        let mut lanes = Vec::new();
        for vehicle in vehicles {
            let lane = lanes.len();
            let wake = Arc::new(LaneWake {
                lane,
                queued: AtomicBool::new(false),
                inbox: inbox.clone(),
            });
            // Vehicles start one after another over the ramp-up, each with a frame at once.
            let first = plan.start + plan.load.ramp_up.mul_f64(vehicle as f64 / fleet as f64);
            due.push(Reverse((first, lane)));
            retry.push(Reverse((first, lane)));
            lanes.push(Lane {
                vehicle,
                vin: plan.vins[vehicle].clone(),
                client_id: format!("lg-{vehicle}"),
                session: Session::new(plan.limits.outbox, plan.limits.window, plan.load.qos != 0),
                seq: 0,
                link: Link::Down,
                waker: Waker::from(wake.clone()),
                wake,
                dirty: false,
                last_ack: plan.end,
            });
        }
        Self {
            plan,
            lanes,
            inbox,
            due,
            retry,
            dirty: Vec::new(),
            handed: Handed::default(),
            read_buf: vec![0; 16 * 1024],
            counts: Counts::default(),
        }
    }

    /// Runs the shard's vehicles to the end of the load and their drain; returns the frames
    /// they made.
    pub(super) async fn run(mut self) -> u64 {
        let plan = self.plan.clone();
        let mut sleep = pin!(tokio::time::sleep_until(plan.start.into()));
        let mut housekeeping = plan.start + HOUSEKEEPING;
        loop {
            let now = Instant::now();
            self.take_inbox();
            let producing = now < plan.end;
            if producing {
                self.make_due(now);
            } else {
                self.due.clear();
            }
            self.connect_due(now);
            if now >= housekeeping {
                self.keep_alive(now);
                housekeeping = now + HOUSEKEEPING;
            }
            self.flush_dirty();
            self.counts.hand_to(&plan.stats);
            if !producing && self.drained(now) {
                break;
            }
            let next = [
                self.due.peek().map(|Reverse((t, _))| *t),
                self.retry.peek().map(|Reverse((t, _))| *t),
                Some(housekeeping),
                Some(if producing {
                    plan.end
                } else {
                    now + DRAIN_CHECK
                }),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(now + DRAIN_CHECK);
            sleep.as_mut().reset(next.into());
            let mut notified = pin!(self.inbox.notify.notified());
            let woken =
                std::future::poll_fn(|cx| Poll::Ready(notified.as_mut().poll(cx).is_ready())).await;
            if woken {
                // Busy: let the runtime (the IO driver, the observer) run first; more
                // vehicles are ready by then, and are served in one pass.
                tokio::task::yield_now().await;
            } else {
                tokio::select! {
                    () = notified => {}
                    () = &mut sleep => {}
                }
            }
        }
        self.close().await;
        self.counts.hand_to(&plan.stats);
        self.lanes.iter().map(|l| l.seq).sum()
    }

    fn take_inbox(&mut self) {
        self.inbox.take(&mut self.handed);
        let now = Instant::now();
        for (lane, result) in std::mem::take(&mut self.handed.connected) {
            match result {
                Ok(conn) => {
                    self.counts.connects += 1;
                    self.lanes[lane].link = Link::Up(Box::new(Up {
                        conn,
                        out: Vec::new(),
                        written: 0,
                        partial: Vec::new(),
                        last_write: now,
                        ping: None,
                    }));
                    // Registers the connection's waker, and writes what waited.
                    self.service(lane);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "a load vehicle could not connect; retrying");
                    self.lanes[lane].link = Link::Down;
                    self.retry.push(Reverse((now + self.plan.pause(), lane)));
                }
            }
        }
        let mut ready = std::mem::take(&mut self.handed.ready);
        for &lane in &ready {
            self.service(lane);
        }
        ready.clear();
        self.handed.ready = ready;
    }

    /// Reads what the vehicle's connection has: PUBACKs settle frames, an end or garbage
    /// loses the connection. Then its writes are due.
    fn service(&mut self, lane: usize) {
        self.lanes[lane].wake.queued.store(false, Ordering::Release);
        self.dirty(lane);
        let l = &mut self.lanes[lane];
        let Link::Up(up) = &mut l.link else {
            return;
        };
        let mut vehicle = Settle {
            vehicle: l.vehicle,
            session: &mut l.session,
            last_ack: &mut l.last_ack,
            ping: &mut up.ping,
            plan: &self.plan,
            counts: &mut self.counts,
        };
        let mut cx = Context::from_waker(&l.waker);
        let lost = loop {
            let mut buf = ReadBuf::new(&mut self.read_buf);
            match Pin::new(&mut up.conn).poll_read(&mut cx, &mut buf) {
                Poll::Pending => break false,
                Poll::Ready(Err(_)) => break true,
                Poll::Ready(Ok(())) if buf.filled().is_empty() => break true,
                Poll::Ready(Ok(())) => {
                    let now = Instant::now();
                    let read = buf.filled();
                    let settled = if up.partial.is_empty() {
                        vehicle
                            .settle(read, now)
                            .map(|used| up.partial.extend_from_slice(&read[used..]))
                    } else {
                        up.partial.extend_from_slice(read);
                        vehicle.settle(&up.partial, now).map(|used| {
                            up.partial.drain(..used);
                        })
                    };
                    if settled.is_err() {
                        break true;
                    }
                }
            }
        };
        if lost {
            self.lose(lane, Instant::now());
        }
    }

    fn dirty(&mut self, lane: usize) {
        let l = &mut self.lanes[lane];
        if !l.dirty {
            l.dirty = true;
            self.dirty.push(lane);
        }
    }

    /// Makes the frames that are due, or counts the ticks a full outbox skips.
    fn make_due(&mut self, now: Instant) {
        let plan = self.plan.clone();
        while let Some(&Reverse((due, lane))) = self.due.peek() {
            if due > now {
                break;
            }
            self.due.pop();
            let l = &mut self.lanes[lane];
            if l.session.is_full() {
                self.counts.held_back += 1;
            } else {
                l.seq += 1;
                let made = Instant::now();
                let measured = made.duration_since(plan.start) >= plan.load.warm_up;
                plan.tracker.published(l.vehicle, l.seq, measured);
                l.session.push(Frame {
                    seq: l.seq,
                    captured_at_ms: now_ms(),
                    made,
                    measured,
                });
                self.counts.outstanding += 1;
                self.dirty(lane);
            }
            // As tokio's interval with `Delay`: a tick more than 5 ms late moves the schedule.
            let next = if now > due + Duration::from_millis(5) {
                now + plan.period
            } else {
                due + plan.period
            };
            if next < plan.end {
                self.due.push(Reverse((next, lane)));
            }
        }
    }

    /// Starts the connection attempts that are due.
    fn connect_due(&mut self, now: Instant) {
        while let Some(&Reverse((at, lane))) = self.retry.peek() {
            if at > now {
                break;
            }
            self.retry.pop();
            let l = &mut self.lanes[lane];
            if !matches!(l.link, Link::Down) {
                continue;
            }
            l.link = Link::Connecting;
            let plan = self.plan.clone();
            let inbox = self.inbox.clone();
            let (vehicle, client_id) = (l.vehicle, l.client_id.clone());
            tokio::spawn(async move {
                let tls = plan.tls.as_ref().and_then(|t| t.config(vehicle));
                let attempt = Conn::open(plan.addr, tls, &client_id, super::KEEP_ALIVE_S);
                let result = tokio::time::timeout(super::CONNECT_TIMEOUT, attempt)
                    .await
                    .unwrap_or_else(|_| Err(io::Error::other("connect timed out")));
                inbox.hand(|h| h.connected.push((lane, result)));
            });
        }
    }

    /// PINGREQ on a connection idle for half the keep-alive; a PINGRESP missing for a whole
    /// keep-alive loses the connection.
    fn keep_alive(&mut self, now: Instant) {
        let keep_alive = Duration::from_secs(super::KEEP_ALIVE_S.into());
        for lane in 0..self.lanes.len() {
            let Link::Up(up) = &mut self.lanes[lane].link else {
                continue;
            };
            match up.ping {
                Some(since) if now.duration_since(since) > keep_alive => {
                    self.lose(lane, now);
                }
                None if now.duration_since(up.last_write) >= keep_alive / 2 => {
                    up.out.extend_from_slice(&wire::PINGREQ);
                    up.ping = Some(now);
                    self.dirty(lane);
                }
                _ => {}
            }
        }
    }

    fn flush_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for &lane in &dirty {
            self.lanes[lane].dirty = false;
            if self.flush(lane).is_err() {
                self.lose(lane, Instant::now());
            }
        }
        dirty.clear();
        self.dirty = dirty;
    }

    /// Puts the frames the window allows into the vehicle's buffer and writes it.
    fn flush(&mut self, lane: usize) -> io::Result<()> {
        let plan = &self.plan;
        let l = &mut self.lanes[lane];
        let Link::Up(up) = &mut l.link else {
            return Ok(());
        };
        while up.out.len() - up.written < BUFFERED {
            let Some(w) = l.session.next_write() else {
                break;
            };
            put(&mut up.out, &l.vin, &w, plan);
            if w.again {
                self.counts.resent += 1;
            } else {
                self.counts.published += 1;
            }
            if w.pkid.is_none() {
                self.counts.outstanding -= 1;
            }
        }
        let mut cx = Context::from_waker(&l.waker);
        while up.written < up.out.len() {
            match Pin::new(&mut up.conn).poll_write(&mut cx, &up.out[up.written..]) {
                Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => {
                    up.written += n;
                    up.last_write = Instant::now();
                }
                Poll::Ready(Err(e)) => return Err(e),
                // The socket is full: the vehicle's waker calls when it has room.
                Poll::Pending => return Ok(()),
            }
        }
        up.out.clear();
        up.written = 0;
        match Pin::new(&mut up.conn).poll_flush(&mut cx) {
            Poll::Ready(Err(e)) => Err(e),
            _ => Ok(()),
        }
    }

    /// The vehicle's connection ended: what it carried without a PUBACK goes out again on
    /// the next one, after a pause.
    fn lose(&mut self, lane: usize, now: Instant) {
        let l = &mut self.lanes[lane];
        if !matches!(l.link, Link::Up(_)) {
            return;
        }
        tracing::debug!("a load vehicle lost its connection; reconnecting");
        l.link = Link::Down;
        l.session.lost();
        self.retry.push(Reverse((now + self.plan.pause(), lane)));
    }

    /// Every vehicle has nothing left, or has waited `drain_idle` since its last PUBACK (or
    /// the end of the load).
    fn drained(&self, now: Instant) -> bool {
        self.lanes.iter().all(|l| {
            l.session.kept() == 0 || now.duration_since(l.last_ack) >= self.plan.limits.drain_idle
        })
    }

    /// DISCONNECT on every live connection; frames still kept stay counted as outstanding.
    async fn close(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        for l in &mut self.lanes {
            if let Link::Up(up) = &mut l.link {
                let bye = async {
                    up.conn.write_all(&wire::DISCONNECT).await?;
                    up.conn.shutdown().await
                };
                if tokio::time::timeout_at(deadline, bye).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// A vehicle as its PUBACKs see it.
struct Settle<'a> {
    vehicle: usize,
    session: &'a mut Session,
    last_ack: &'a mut Instant,
    ping: &'a mut Option<Instant>,
    plan: &'a Plan,
    counts: &'a mut Counts,
}

impl Settle<'_> {
    /// Settles the complete packets at the front of `bytes`; returns how many bytes they
    /// took.
    fn settle(&mut self, bytes: &[u8], now: Instant) -> Result<usize, wire::Malformed> {
        let mut used = 0;
        while let Some((packet, n)) = wire::parse(&bytes[used..])? {
            used += n;
            match packet {
                Incoming::PubAck(pkid) => {
                    if let Some(f) = self.session.acked(pkid) {
                        let latency = now.saturating_duration_since(f.made);
                        self.plan
                            .tracker
                            .acked(self.vehicle, f.seq, latency, f.measured);
                        self.counts.acknowledged += 1;
                        self.counts.outstanding -= 1;
                        *self.last_ack = (*self.last_ack).max(now);
                    }
                }
                Incoming::PingResp => *self.ping = None,
                Incoming::ConnAck { .. }
                | Incoming::Publish { .. }
                | Incoming::SubAck { .. }
                | Incoming::Other(_) => {}
            }
        }
        Ok(used)
    }
}

/// Encodes the frame, as the vehicle made it, into a PUBLISH at the end of `out`.
fn put(out: &mut Vec<u8>, vin: &str, w: &Write, plan: &Plan) {
    let f = crate::generate::frame(vin, w.frame.seq, plan.load.mix, w.frame.captured_at_ms);
    let kind = f
        .body
        .as_ref()
        .map_or(FrameKind::Status, FrameKind::of_body);
    let payload = encode(&f, plan.load.format);
    let topic = ["/tenants/", vin, "/v1/", kind.as_str()];
    wire::publish(out, &topic, w.pkid, w.again, &payload);
}
