//! Sessions, keyed by the vehicle (never by client id): at most one live connection per VIN,
//! the newest taking over; a persistent session (subscriptions and the requests not yet
//! acknowledged) outlives its connection until it expires.

use crate::Refusal;
use crate::signal::Signal;
use bytes::Bytes;
use dashmap::DashMap;
use rumqttc::mqttbytes::matches;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use telegate_frame::Vin;

/// A request to a vehicle, with its packet id once sent.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub pkid: u16,
    pub topic: String,
    pub payload: Bytes,
}

/// What a session keeps.
#[derive(Debug, Default)]
pub(crate) struct Session {
    /// Filter and granted QoS.
    pub subscriptions: Vec<(String, u8)>,
    /// Sent, not yet acknowledged by the vehicle; resent (DUP) on a resumed session.
    pub inflight: VecDeque<Outgoing>,
    /// Not yet sent.
    pub queued: VecDeque<Outgoing>,
    last_pkid: u16,
    /// How long the session outlives its connection; zero for a clean session.
    pub expiry: Duration,
}

impl Session {
    pub(crate) fn subscribed(&self, topic: &str) -> bool {
        self.granted_qos(topic).is_some()
    }

    /// The highest QoS granted to a subscription matching `topic`.
    pub(crate) fn granted_qos(&self, topic: &str) -> Option<u8> {
        self.subscriptions
            .iter()
            .filter(|(f, _)| matches(topic, f))
            .map(|(_, q)| *q)
            .max()
    }

    /// The next free packet id for a request.
    pub(crate) fn next_pkid(&mut self) -> u16 {
        loop {
            self.last_pkid = self.last_pkid.wrapping_add(1).max(1);
            if !self.inflight.iter().any(|o| o.pkid == self.last_pkid) {
                return self.last_pkid;
            }
        }
    }
}

pub(crate) type SharedSession = Arc<Mutex<Session>>;

pub(crate) fn lock(s: &SharedSession) -> MutexGuard<'_, Session> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// The live connection that owns a vehicle's session.
#[derive(Debug)]
pub(crate) struct Owner {
    pub conn: u64,
    /// How the connection is told to close, or to send queued requests.
    pub signal: Arc<Signal>,
    /// The serial of the certificate it presented, for revocation while connected.
    pub serial: Option<Vec<u8>>,
    /// When that certificate expires (Unix seconds), for expiry while connected.
    pub not_after: Option<i64>,
}

#[derive(Debug)]
struct Entry {
    owner: Option<Owner>,
    session: SharedSession,
    /// When a persistent session without a connection ends.
    expires: Option<Instant>,
}

/// What [`Registry::send`] did with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Handed to the vehicle's live connection.
    Sent,
    /// Kept in the vehicle's persistent session until it reconnects.
    Queued,
    /// The vehicle has no session subscribed to the topic: not delivered.
    NoSubscriber,
    /// The session's queue is full: not delivered.
    QueueFull,
}

/// Whether an edge holds a vehicle (`Edge::presence`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// A live connection.
    Connected,
    /// A persistent session, its connection gone: requests wait in it.
    Away,
    /// Neither.
    Absent,
}

#[derive(Debug, Default)]
pub(crate) struct Registry {
    entries: DashMap<Vin, Entry>,
    next_conn: AtomicU64,
}

impl Registry {
    pub(crate) fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Makes `owner` the vehicle's live connection, closing any other. Returns the session
    /// and whether it was resumed (`clean` discards what there was).
    pub(crate) fn bind(
        &self,
        vin: Vin,
        owner: Owner,
        clean: bool,
        expiry: Duration,
    ) -> (SharedSession, bool) {
        let mut entry = self.entries.entry(vin).or_insert_with(|| Entry {
            owner: None,
            session: SharedSession::default(),
            expires: Some(Instant::now()),
        });
        if let Some(old) = entry.owner.replace(owner) {
            old.signal.close(Refusal::SessionTakenOver);
        }
        let alive = entry.expires.is_none_or(|t| t > Instant::now());
        // A fresh entry is born expired, so it is never "resumed".
        let resumed = !clean && alive;
        if !resumed {
            entry.session = SharedSession::default();
        }
        entry.expires = None;
        lock(&entry.session).expiry = expiry;
        (entry.session.clone(), resumed)
    }

    /// The connection `conn` of `vin` ended: its session stays until it expires, or goes.
    pub(crate) fn release(&self, vin: &Vin, conn: u64) {
        let remove = match self.entries.get_mut(vin) {
            Some(mut entry) if entry.owner.as_ref().is_some_and(|o| o.conn == conn) => {
                entry.owner = None;
                let expiry = lock(&entry.session).expiry;
                entry.expires = Some(Instant::now() + expiry);
                expiry.is_zero()
            }
            _ => false,
        };
        if remove {
            self.entries
                .remove_if(vin, |_, e| e.owner.is_none() && e.expires.is_some());
        }
    }

    /// Queues a request for the vehicle's session and wakes its connection.
    pub(crate) fn send(
        &self,
        vin: &Vin,
        topic: String,
        payload: Bytes,
        max_queued: usize,
    ) -> Delivery {
        let Some(entry) = self.entries.get(vin) else {
            return Delivery::NoSubscriber;
        };
        if entry.expires.is_some_and(|t| t <= Instant::now()) {
            return Delivery::NoSubscriber;
        }
        {
            let mut session = lock(&entry.session);
            if !session.subscribed(&topic) {
                return Delivery::NoSubscriber;
            }
            if session.queued.len() >= max_queued {
                return Delivery::QueueFull;
            }
            session.queued.push_back(Outgoing {
                pkid: 0,
                topic,
                payload,
            });
        }
        match &entry.owner {
            Some(owner) if owner.signal.deliver() => Delivery::Sent,
            _ => Delivery::Queued,
        }
    }

    /// Whether the vehicle is connected here, or has a persistent session waiting here.
    pub(crate) fn presence(&self, vin: &Vin) -> Presence {
        match self.entries.get(vin) {
            Some(e) if e.owner.is_some() => Presence::Connected,
            Some(e) if e.expires.is_some_and(|t| t > Instant::now()) => Presence::Away,
            _ => Presence::Absent,
        }
    }

    /// Closes the vehicle's live connection, if any.
    pub(crate) fn close(&self, vin: &Vin, why: Refusal) -> bool {
        self.entries
            .get(vin)
            .and_then(|e| e.owner.as_ref().map(|o| o.signal.close(why)))
            .unwrap_or(false)
    }

    /// Closes every live connection whose certificate serial is in `revoked`; returns how many.
    pub(crate) fn close_revoked(&self, revoked: &crate::tls::Revoked) -> usize {
        self.entries
            .iter()
            .filter_map(|e| {
                e.owner
                    .as_ref()
                    .map(|o| (o.serial.clone(), o.signal.clone()))
            })
            .filter(|(serial, _)| serial.as_ref().is_some_and(|s| revoked.contains(s)))
            .filter(|(_, signal)| signal.close(Refusal::CertificateRevoked))
            .count()
    }

    /// Closes every live connection whose certificate expired before `now_s` (Unix seconds);
    /// returns how many.
    pub(crate) fn close_expired(&self, now_s: i64) -> usize {
        self.entries
            .iter()
            .filter_map(|e| {
                e.owner
                    .as_ref()
                    .filter(|o| o.not_after.is_some_and(|t| t < now_s))
                    .map(|o| o.signal.clone())
            })
            .filter(|signal| signal.close(Refusal::CertificateExpired))
            .count()
    }

    /// Drops sessions that expired without a connection; returns how many remain.
    pub(crate) fn sweep(&self) -> usize {
        let now = Instant::now();
        self.entries
            .retain(|_, e| e.owner.is_some() || e.expires.is_none_or(|t| t > now));
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vin() -> Vin {
        Vin::parse("WP0ZZZ99ZTS392124").expect("valid")
    }

    fn owner(reg: &Registry) -> (Owner, Arc<Signal>) {
        let signal = Arc::new(Signal::default());
        (
            Owner {
                conn: reg.next_conn_id(),
                signal: signal.clone(),
                serial: Some(vec![1, 2]),
                not_after: Some(1_000),
            },
            signal,
        )
    }

    #[test]
    fn the_newest_connection_takes_over_and_resumes_a_persistent_session() {
        let reg = Registry::default();
        let day = Duration::from_secs(86_400);
        let (first, first_rx) = owner(&reg);
        let first_id = first.conn;
        let (session, resumed) = reg.bind(vin(), first, false, day);
        assert!(!resumed);
        lock(&session)
            .subscriptions
            .push(("/tenants/WP0ZZZ99ZTS392124/v1/request".into(), 1));

        let (second, _rx) = owner(&reg);
        let (again, resumed) = reg.bind(vin(), second, false, day);
        assert!(resumed, "same vehicle, not clean: the session goes on");
        assert!(Arc::ptr_eq(&session, &again));
        assert_eq!(first_rx.close_order(), Some(Refusal::SessionTakenOver));
        // The old connection's end does not end the new one's session.
        reg.release(&vin(), first_id);
        assert_eq!(
            reg.send(
                &vin(),
                "/tenants/WP0ZZZ99ZTS392124/v1/request".into(),
                Bytes::new(),
                4
            ),
            Delivery::Sent
        );
    }

    #[test]
    fn requests_wait_in_a_persistent_session_and_not_in_a_clean_one() {
        let reg = Registry::default();
        let topic = || "/tenants/WP0ZZZ99ZTS392124/v1/request".to_owned();
        let (o, _rx) = owner(&reg);
        let id = o.conn;
        let (s, _) = reg.bind(vin(), o, false, Duration::from_secs(60));
        lock(&s).subscriptions.push((topic(), 1));
        reg.release(&vin(), id);
        assert_eq!(reg.send(&vin(), topic(), Bytes::new(), 1), Delivery::Queued);
        assert_eq!(
            reg.send(&vin(), topic(), Bytes::new(), 1),
            Delivery::QueueFull
        );

        let (o, _rx) = owner(&reg);
        let id = o.conn;
        let (s, resumed) = reg.bind(vin(), o, true, Duration::ZERO);
        assert!(!resumed, "a clean start discards the session");
        assert!(lock(&s).queued.is_empty());
        lock(&s).subscriptions.push((topic(), 1));
        reg.release(&vin(), id);
        assert_eq!(
            reg.send(&vin(), topic(), Bytes::new(), 1),
            Delivery::NoSubscriber
        );
        assert_eq!(reg.sweep(), 0);
    }

    #[test]
    fn presence_follows_the_connection_and_the_session() {
        let reg = Registry::default();
        assert_eq!(reg.presence(&vin()), Presence::Absent);
        let (o, _rx) = owner(&reg);
        let id = o.conn;
        reg.bind(vin(), o, false, Duration::from_secs(60));
        assert_eq!(reg.presence(&vin()), Presence::Connected);
        reg.release(&vin(), id);
        assert_eq!(reg.presence(&vin()), Presence::Away);
        let (o, _rx) = owner(&reg);
        let id = o.conn;
        reg.bind(vin(), o, true, Duration::ZERO);
        reg.release(&vin(), id);
        assert_eq!(
            reg.presence(&vin()),
            Presence::Absent,
            "a clean session ends"
        );
    }

    #[test]
    fn revocation_closes_only_the_revoked_certificate() {
        let reg = Registry::default();
        let (o, rx) = owner(&reg);
        reg.bind(vin(), o, true, Duration::ZERO);
        assert_eq!(reg.close_revoked(&[vec![9]].into_iter().collect()), 0);
        assert_eq!(rx.close_order(), None);
        assert_eq!(reg.close_revoked(&[vec![1, 2]].into_iter().collect()), 1);
        assert_eq!(rx.close_order(), Some(Refusal::CertificateRevoked));
    }

    #[test]
    fn expiry_closes_a_connection_once_its_certificate_ends() {
        let reg = Registry::default();
        let (o, rx) = owner(&reg);
        reg.bind(vin(), o, true, Duration::ZERO);
        assert_eq!(reg.close_expired(1_000), 0, "valid through its last second");
        assert_eq!(rx.close_order(), None);
        assert_eq!(reg.close_expired(1_001), 1);
        assert_eq!(rx.close_order(), Some(Refusal::CertificateExpired));
    }
}
