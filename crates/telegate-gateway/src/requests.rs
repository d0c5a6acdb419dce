//! Requests to vehicles (a breakdown snapshot, say) across gateway instances. Behind a load
//! balancer a vehicle is connected to one instance, and the admin call that asks it for
//! something may reach another. The instance that takes the call hands the request to its own
//! edge when the vehicle is connected there. Otherwise it writes the request to
//! `telegate.vehicle-requests`, keyed by the vehicle's state key (never the VIN), and every
//! instance follows that topic from its end: the one that holds the vehicle (its connection,
//! or a persistent session waiting for it) delivers it. Kafka carries it; there is no protocol
//! between instances of telegate's own.
//!
//! A state key names a vehicle only to whoever holds the index key, and no instance can turn
//! one back into a VIN: each keeps, for the vehicles that connected to it, state key → VIN
//! ([`Directory`]), noted by the edge's gate at every CONNECT and forgotten once the vehicle
//! has neither a connection nor a session here.

use crate::state::StateStore;
use anyhow::Context;
use dashmap::DashMap;
use metrics::Counter;
use std::sync::Arc;
use std::time::{Duration, Instant};
use strum::VariantArray;
use telegate_frame::Vin;
use telegate_frame::pb::PlatformRequest;
use telegate_kafka::{Entry, KafkaConfig, LogWriter, Run, Start, follow_from};
use telegate_mqtt::{Delivery, Edge, Presence, VehicleGate, request_topic};
use telegate_policy::{StateKey, StateKeys};

/// A request read later than this after it was issued (or this far ahead of the reader's
/// clock) is not delivered: whoever asked has given up on it.
pub const MAX_AGE: Duration = Duration::from_secs(60);
/// The largest request record taken from the topic.
pub const MAX_RECORD_BYTES: usize = 1024;
/// The kinds of request a vehicle understands (docs/contract.md).
pub const KINDS: [&str; 1] = ["breakdown-snapshot"];
/// How long the instance that holds a vehicle waits for the consent state the request rests
/// on (a snapshot request's call consent, written before the request) to reach it.
const STATE_WAIT: Duration = Duration::from_secs(2);
/// How often vehicles that left are forgotten.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// The gate is asked just before a connection is bound: an entry younger than this is kept
/// whatever the edge says.
const SWEEP_GRACE: Duration = Duration::from_secs(10);

/// What became of a request, counted in `telegate_vehicle_requests_total{result}` under its
/// kebab-case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[derive(strum::EnumCount, strum::VariantArray, strum::IntoStaticStr)]
#[strum(serialize_all = "kebab-case")]
pub enum Outcome {
    /// Taken by this instance, the vehicle connected here: handed to this edge, whose own
    /// count (`telegate_mqtt_requests_total`) says how it went.
    Local,
    /// Taken by this instance, the vehicle not connected here: written to the topic.
    Published,
    /// Taken by this instance, the vehicle not connected here, and Kafka did not take it.
    PublishFailed,
    /// Read from the topic and handed to the vehicle's connection here.
    Delivered,
    /// Read from the topic and kept in the vehicle's persistent session here.
    Queued,
    /// Read from the topic; the vehicle is here, subscribed to no request topic.
    NoSubscriber,
    /// Read from the topic; the vehicle's session here holds as many requests as it may.
    QueueFull,
    /// Read from the topic; the vehicle is not here (another instance's, or not connected).
    NotHere,
    /// Read from the topic more than [`MAX_AGE`] from when it was issued.
    Expired,
    /// A record on the topic that is not a request telegate writes.
    Malformed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Its place in [`VariantArray::VARIANTS`], the order of the counters.
    fn index(self) -> usize {
        self as usize
    }

    fn of(d: Delivery) -> Self {
        match d {
            Delivery::Sent => Outcome::Delivered,
            Delivery::Queued => Outcome::Queued,
            Delivery::NoSubscriber => Outcome::NoSubscriber,
            Delivery::QueueFull => Outcome::QueueFull,
        }
    }
}

/// A record's value: the request as the vehicle receives it (proto3-JSON).
pub fn encode(request: &PlatformRequest) -> Vec<u8> {
    serde_json::to_vec(request).unwrap_or_default()
}

/// A record of the topic as a request: the vehicle's state key and the request, checked.
/// Anything else is `None`; the request is re-encoded before it goes anywhere, so fields
/// telegate does not write never reach a vehicle.
pub fn decode(key: &[u8], value: Option<&[u8]>) -> Option<(StateKey, PlatformRequest)> {
    let key = StateKey::from_hex(std::str::from_utf8(key).ok()?)?;
    let value = value.filter(|v| v.len() <= MAX_RECORD_BYTES)?;
    let request: PlatformRequest = serde_json::from_slice(value).ok()?;
    let id_ok = |s: &str| (1..=64).contains(&s.len());
    let valid = KINDS.contains(&request.kind.as_str())
        && id_ok(&request.request_id)
        && id_ok(&request.call_id)
        && request.issued_at_ms > 0;
    valid.then_some((key, request))
}

/// Whether a request issued at `issued_at_ms` is too old (or too far ahead) at `now_ms`.
pub fn expired(issued_at_ms: i64, now_ms: i64) -> bool {
    now_ms.abs_diff(issued_at_ms) > MAX_AGE.as_millis() as u64
}

/// State key → VIN of the vehicles that connected to this instance.
pub struct Directory {
    keys: StateKeys,
    by_key: DashMap<StateKey, (Vin, Instant)>,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory")
            .field("vehicles", &self.by_key.len())
            .finish()
    }
}

impl Directory {
    /// `keys` must be the consent state's, so that a key on the topic is the state key.
    pub fn new(keys: StateKeys) -> Self {
        Self {
            keys,
            by_key: DashMap::new(),
        }
    }

    /// A vehicle is connecting here.
    pub fn note(&self, vin: &Vin) {
        self.by_key
            .insert(self.keys.key_of(vin), (*vin, Instant::now()));
    }

    pub fn find(&self, key: &StateKey) -> Option<Vin> {
        self.by_key.get(key).map(|e| e.0)
    }

    /// Forgets the vehicles `here` says are gone (those noted within `grace` stay); returns
    /// how many remain.
    pub fn sweep(&self, here: impl Fn(&Vin) -> bool, grace: Duration) -> usize {
        self.by_key
            .retain(|_, (vin, noted)| noted.elapsed() < grace || here(vin));
        self.by_key.len()
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// `gate`, noting every vehicle it lets connect.
    pub fn watching(self: &Arc<Self>, gate: VehicleGate) -> VehicleGate {
        let directory = self.clone();
        Arc::new(move |vin: &Vin| {
            let admitted = gate(vin);
            if admitted {
                directory.note(vin);
            }
            admitted
        })
    }
}

/// Requests to vehicles, wherever they are connected.
pub struct Requests {
    edge: Arc<Edge>,
    state: Arc<StateStore>,
    directory: Arc<Directory>,
    writer: LogWriter,
    topic: String,
    counts: Vec<Counter>,
}

impl std::fmt::Debug for Requests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Requests")
            .field("topic", &self.topic)
            .field("directory", &self.directory)
            .finish_non_exhaustive()
    }
}

impl Requests {
    pub fn new(
        cfg: &KafkaConfig,
        topic: String,
        edge: Arc<Edge>,
        state: Arc<StateStore>,
        directory: Arc<Directory>,
    ) -> anyhow::Result<Arc<Self>> {
        let counts: Vec<Counter> = Outcome::VARIANTS
            .iter()
            .map(|o| metrics::counter!("telegate_vehicle_requests_total", "result" => o.as_str()))
            .collect();
        // Every series at zero, so dashboards see them before the first request.
        for c in &counts {
            c.increment(0);
        }
        Ok(Arc::new(Self {
            edge,
            state,
            directory,
            writer: LogWriter::new(cfg).context("vehicle request writer")?,
            topic,
            counts,
        }))
    }

    fn count(&self, outcome: Outcome) -> Outcome {
        self.counts[outcome.index()].increment(1);
        outcome
    }

    /// Sends `request` to the vehicle: through this edge when it is connected here, else
    /// through the topic (returning once Kafka has it) to the instance that holds it.
    pub async fn send(&self, vin: &Vin, request: &PlatformRequest) -> Outcome {
        let payload = encode(request);
        if self.edge.presence(vin) == Presence::Connected {
            self.edge.send(vin, request_topic(vin), payload.into());
            return self.count(Outcome::Local);
        }
        let key = self.state.key_of(vin).to_hex();
        match self
            .writer
            .put(&self.topic, Some(key.as_bytes()), Some(&payload))
            .await
        {
            Ok(()) => self.count(Outcome::Published),
            Err(e) => {
                tracing::error!(error = %e, "a request to a vehicle was not written: not delivered");
                self.count(Outcome::PublishFailed)
            }
        }
    }

    /// Follows the topic from its end until told to stop, delivering the requests for the
    /// vehicles held here, and forgets vehicles that left now and then; its tasks run on
    /// `run.tasks`.
    pub fn follow(self: &Arc<Self>, cfg: &KafkaConfig, run: Run<'_>) -> anyhow::Result<()> {
        let (mut entries, _) = follow_from(cfg, &self.topic, Start::End, 256, run)
            .with_context(|| format!("following {}", self.topic))?;
        let this = self.clone();
        run.tasks.spawn(async move {
            let mut sweep = tokio::time::interval(SWEEP_EVERY);
            sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    entry = entries.recv() => match entry {
                        Some(e) => {
                            let outcome = this.deliver(&e).await;
                            this.count(outcome);
                        }
                        // The follower stopped.
                        None => return,
                    },
                    _ = sweep.tick() => {
                        let edge = &this.edge;
                        this.directory
                            .sweep(|vin| edge.presence(vin) != Presence::Absent, SWEEP_GRACE);
                    }
                }
            }
        });
        Ok(())
    }

    /// One record of the topic: delivered here if the vehicle is here.
    async fn deliver(&self, e: &Entry) -> Outcome {
        let Some((key, request)) = decode(&e.key, e.value.as_deref()) else {
            return Outcome::Malformed;
        };
        if expired(request.issued_at_ms, telegate_frame::now_ms()) {
            return Outcome::Expired;
        }
        let Some(vin) = self.directory.find(&key) else {
            return Outcome::NotHere;
        };
        if self.edge.presence(&vin) == Presence::Absent {
            return Outcome::NotHere;
        }
        self.await_state(&vin, &request).await;
        let payload = encode(&request);
        Outcome::of(self.edge.send(&vin, request_topic(&vin), payload.into()))
    }

    /// The vehicle answers a snapshot request with a breakdown frame that this instance
    /// judges by the call's consent. That consent was written before the request, but comes
    /// through the state topic, which is read apart from this one: wait for it (a little).
    async fn await_state(&self, vin: &Vin, request: &PlatformRequest) {
        let known = || {
            self.state.with(vin, |r| {
                r.is_some_and(|r| r.call_consents.contains_key(&request.call_id))
            })
        };
        let deadline = tokio::time::Instant::now() + STATE_WAIT;
        while !known() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(kind: &str, at: i64) -> PlatformRequest {
        PlatformRequest {
            request_id: "req-1".into(),
            kind: kind.into(),
            call_id: "call-7".into(),
            issued_at_ms: at,
        }
    }

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    /// The labels of `telegate_vehicle_requests_total{result}`: pinned, in declaration order
    /// (the order is the index of the counters).
    #[test]
    fn outcome_labels_are_pinned() {
        let pinned = [
            (Outcome::Local, "local"),
            (Outcome::Published, "published"),
            (Outcome::PublishFailed, "publish-failed"),
            (Outcome::Delivered, "delivered"),
            (Outcome::Queued, "queued"),
            (Outcome::NoSubscriber, "no-subscriber"),
            (Outcome::QueueFull, "queue-full"),
            (Outcome::NotHere, "not-here"),
            (Outcome::Expired, "expired"),
            (Outcome::Malformed, "malformed"),
        ];
        assert_eq!(pinned.len(), <Outcome as strum::EnumCount>::COUNT);
        for (i, (o, label)) in pinned.into_iter().enumerate() {
            assert_eq!(o.as_str(), label);
            assert_eq!(o.index(), i);
            assert_eq!(Outcome::VARIANTS[i], o);
        }
    }

    #[test]
    fn a_request_goes_through_the_topic_unchanged() {
        let r = request("breakdown-snapshot", 1_790_000_000_000);
        let (key, back) = decode(KEY, Some(&encode(&r))).expect("a request");
        assert_eq!(key.to_hex().as_bytes(), KEY);
        assert_eq!(back, r);
    }

    #[test]
    fn anything_but_a_request_telegate_writes_is_malformed() {
        let good = encode(&request("breakdown-snapshot", 1));
        assert!(
            decode(b"WP0ZZZ99ZTS392124", Some(&good)).is_none(),
            "a VIN key"
        );
        assert!(decode(b"0123", Some(&good)).is_none());
        assert!(decode(KEY, None).is_none(), "a tombstone");
        assert!(decode(KEY, Some(b"{")).is_none());
        assert!(decode(KEY, Some(&encode(&request("unlock-doors", 1)))).is_none());
        assert!(decode(KEY, Some(&encode(&request("breakdown-snapshot", 0)))).is_none());
        let mut long = request("breakdown-snapshot", 1);
        long.call_id = "x".repeat(65);
        assert!(decode(KEY, Some(&encode(&long))).is_none());
        let mut padded = encode(&request("breakdown-snapshot", 1));
        padded.extend(std::iter::repeat_n(b' ', MAX_RECORD_BYTES));
        assert!(decode(KEY, Some(&padded)).is_none(), "oversize");
        // Fields telegate does not write are dropped, not forwarded.
        let extra =
            br#"{"requestId":"r","kind":"breakdown-snapshot","callId":"c","issuedAtMs":"5","x":1}"#;
        let (_, r) = decode(KEY, Some(extra)).expect("unknown fields are ignored");
        assert!(
            !String::from_utf8(encode(&r))
                .expect("utf-8")
                .contains("\"x\"")
        );
    }

    #[test]
    fn a_request_older_or_further_ahead_than_a_minute_is_expired() {
        let now = 1_790_000_000_000;
        assert!(!expired(now - 59_000, now));
        assert!(expired(now - 61_000, now));
        assert!(!expired(now + 30_000, now), "clocks a little apart");
        assert!(expired(now + 61_000, now));
    }

    #[test]
    fn the_directory_names_the_vehicles_that_connected_and_forgets_those_gone() {
        let keys = telegate_policy::Keyring::ephemeral([7; 32]).state().clone();
        let dir = Arc::new(Directory::new(keys.clone()));
        let here = Vin::parse("WP0ZZZ99ZTS392124").expect("vin");
        let gone = Vin::parse("KNAZZZ99ZTS392124").expect("vin");
        let blocked = Vin::parse("WP0ZZZ99ZTS392125").expect("vin");
        let gate = dir.watching(Arc::new(move |v: &Vin| *v != blocked));
        assert!(gate(&here) && gate(&gone) && !gate(&blocked));
        assert_eq!(dir.find(&keys.key_of(&here)), Some(here));
        assert_eq!(dir.find(&keys.key_of(&blocked)), None, "refused: not here");
        // Just noted: kept whatever the edge says, until the grace has passed.
        assert_eq!(dir.sweep(|v| *v == here, SWEEP_GRACE), 2);
        assert_eq!(dir.sweep(|v| *v == here, Duration::ZERO), 1);
        assert_eq!(dir.find(&keys.key_of(&gone)), None);
    }
}
