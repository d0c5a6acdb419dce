//! What a vehicle keeps until the platform has it: every QoS 1 frame, from the moment it is
//! made until its PUBACK. A frame goes out again when the connection that carried it ended
//! without a session to resume, or when its PUBACK carries a failure reason. No IO: the MQTT
//! client's reports come in as [`Signal`]s, and [`Outbox::hand`] says which frame the client
//! gets next.
//!
//! The client names a publish only by its packet id, once written. rumqttc reports fresh
//! publishes in the order they were handed to it, and repeats the id of a publish it writes
//! again on a resumed session; so a new id belongs to the oldest frame handed over and not yet
//! written, and a known id is a retransmission.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

pub type PacketId = u16;

/// What the MQTT client reports, in the order it happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// A CONNACK. Without a session, the client has dropped every publish not acknowledged.
    Connected { session_present: bool },
    /// A publish was written with this packet id.
    WentOut(PacketId),
    /// The client holds the oldest handed-over publish until this packet id, still in flight,
    /// is acknowledged.
    Held(PacketId),
    /// A PUBACK with success.
    Acked(PacketId),
    /// A PUBACK with a failure reason. `retry` unless publishing again cannot help (not
    /// authorised, invalid topic or payload).
    Failed { pkid: PacketId, retry: bool },
    /// The connection ended. The client dropped the publish it held, and gave back the
    /// `returned` oldest of those handed to it that it had not written.
    Lost { returned: usize },
}

/// What a signal did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome<T> {
    Nothing,
    /// Acknowledged: the frame leaves the outbox.
    Acked(T),
    /// Refused for good: the frame leaves the outbox.
    GivenUp(T),
    /// This many frames are to be published again.
    Requeued(usize),
    /// The client wrote a frame again by itself (a resumed session).
    Retransmitted,
    /// The signal names no frame the outbox holds (a PUBACK for a publish already settled).
    Stray,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// To be handed to the client.
    Waiting,
    /// Handed to the client, not yet written.
    Handed,
    /// Taken by the client, held until a packet id is free.
    Held,
    /// Written, awaiting its PUBACK.
    Sent(PacketId),
}

#[derive(Debug)]
struct Entry<T> {
    item: T,
    state: State,
    handed: u32,
}

/// A vehicle's frames not yet acknowledged, oldest first. It holds at most `capacity` frames
/// plus what one production step makes: producers ask [`Outbox::is_full`] before they make
/// frames.
#[derive(Debug)]
pub struct Outbox<T> {
    entries: BTreeMap<u64, Entry<T>>,
    next_id: u64,
    capacity: usize,
    waiting: BTreeSet<u64>,
    /// Handed over and not yet written, in the order handed.
    handed: VecDeque<u64>,
    in_flight: HashMap<PacketId, u64>,
}

impl<T> Outbox<T> {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: BTreeMap::new(),
            next_id: 0,
            capacity: capacity.max(1),
            waiting: BTreeSet::new(),
            handed: VecDeque::new(),
            in_flight: HashMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.entries.len() >= self.capacity
    }

    /// Keeps a new frame; it is handed over after every older waiting one.
    pub fn push(&mut self, item: T) {
        let id = self.next_id;
        self.next_id += 1;
        self.entries.insert(
            id,
            Entry {
                item,
                state: State::Waiting,
                handed: 0,
            },
        );
        self.waiting.insert(id);
    }

    /// The frame to hand to the client now, the oldest waiting, and whether it is handed over
    /// for the first time.
    pub fn hand(&mut self) -> Option<(&T, bool)> {
        let id = self.waiting.pop_first()?;
        let entry = self.entries.get_mut(&id)?;
        entry.state = State::Handed;
        entry.handed += 1;
        self.handed.push_back(id);
        Some((&entry.item, entry.handed == 1))
    }

    /// Drops the frame handed over last: for QoS 0, which nobody acknowledges.
    pub fn forget_last_handed(&mut self) -> Option<T> {
        let id = self.handed.pop_back()?;
        self.entries.remove(&id).map(|e| e.item)
    }

    pub fn on(&mut self, signal: Signal) -> Outcome<T> {
        match signal {
            Signal::Connected {
                session_present: true,
            } => Outcome::Nothing,
            Signal::Connected {
                session_present: false,
            } => {
                let lost: Vec<u64> = self.in_flight.drain().map(|(_, id)| id).collect();
                for &id in &lost {
                    self.wait(id);
                }
                requeued(lost.len())
            }
            Signal::WentOut(pkid) => {
                if self.in_flight.contains_key(&pkid) {
                    return Outcome::Retransmitted;
                }
                let Some(id) = self.handed.pop_front() else {
                    return Outcome::Stray;
                };
                if let Some(entry) = self.entries.get_mut(&id) {
                    entry.state = State::Sent(pkid);
                }
                self.in_flight.insert(pkid, id);
                Outcome::Nothing
            }
            Signal::Held(_) => {
                if let Some(entry) = self.handed.front().and_then(|id| self.entries.get_mut(id)) {
                    entry.state = State::Held;
                }
                Outcome::Nothing
            }
            Signal::Acked(pkid) => match self.in_flight.remove(&pkid) {
                Some(id) => self
                    .entries
                    .remove(&id)
                    .map_or(Outcome::Stray, |e| Outcome::Acked(e.item)),
                None => Outcome::Stray,
            },
            Signal::Failed { pkid, retry } => match self.in_flight.remove(&pkid) {
                Some(id) if retry => {
                    self.wait(id);
                    Outcome::Requeued(1)
                }
                Some(id) => self
                    .entries
                    .remove(&id)
                    .map_or(Outcome::Stray, |e| Outcome::GivenUp(e.item)),
                None => Outcome::Stray,
            },
            Signal::Lost { returned } => {
                let mut back = Vec::new();
                let held = self
                    .handed
                    .front()
                    .and_then(|id| self.entries.get(id))
                    .is_some_and(|e| e.state == State::Held);
                if held {
                    back.extend(self.handed.pop_front());
                }
                for _ in 0..returned {
                    back.extend(self.handed.pop_front());
                }
                for &id in &back {
                    self.wait(id);
                }
                requeued(back.len())
            }
        }
    }

    fn wait(&mut self, id: u64) {
        if let Some(entry) = self.entries.get_mut(&id) {
            entry.state = State::Waiting;
            self.waiting.insert(id);
        }
    }
}

fn requeued<T>(n: usize) -> Outcome<T> {
    if n == 0 {
        Outcome::Nothing
    } else {
        Outcome::Requeued(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands over everything waiting; returns the frames in the order handed.
    fn hand_all(o: &mut Outbox<u32>) -> Vec<u32> {
        let mut out = Vec::new();
        while let Some((f, _)) = o.hand() {
            out.push(*f);
        }
        out
    }

    fn outbox(frames: u32) -> Outbox<u32> {
        let mut o = Outbox::new(100);
        for f in 1..=frames {
            o.push(f);
        }
        o
    }

    #[test]
    fn a_frame_leaves_only_with_its_puback() {
        let mut o = outbox(3);
        assert_eq!(hand_all(&mut o), [1, 2, 3]);
        for pkid in 1..=3 {
            assert_eq!(o.on(Signal::WentOut(pkid)), Outcome::Nothing);
        }
        assert_eq!(o.on(Signal::Acked(2)), Outcome::Acked(2));
        assert_eq!(o.on(Signal::Acked(2)), Outcome::Stray, "settled once");
        assert_eq!(o.len(), 2);
        assert_eq!(o.on(Signal::Acked(1)), Outcome::Acked(1));
        assert_eq!(o.on(Signal::Acked(3)), Outcome::Acked(3));
        assert!(o.is_empty());
    }

    #[test]
    fn without_a_session_every_written_frame_goes_out_again_in_order() {
        let mut o = outbox(4);
        assert_eq!(hand_all(&mut o), [1, 2, 3, 4]);
        for pkid in [7, 8, 9] {
            o.on(Signal::WentOut(pkid));
        }
        o.on(Signal::Acked(7));
        o.on(Signal::Lost { returned: 0 });
        // Frame 4 was still handed over, not written: it goes out on the new connection.
        assert_eq!(
            o.on(Signal::Connected {
                session_present: false
            }),
            Outcome::Requeued(2)
        );
        assert_eq!(o.on(Signal::WentOut(1)), Outcome::Nothing, "frame 4");
        let (first, fresh) = o.hand().expect("frame 2 again");
        assert_eq!((*first, fresh), (2, false));
        assert_eq!(hand_all(&mut o), [3]);
        o.on(Signal::WentOut(2));
        o.on(Signal::WentOut(3));
        assert_eq!(o.on(Signal::Acked(1)), Outcome::Acked(4));
        assert_eq!(o.on(Signal::Acked(2)), Outcome::Acked(2));
        assert_eq!(o.on(Signal::Acked(3)), Outcome::Acked(3));
        assert!(o.is_empty());
    }

    #[test]
    fn on_a_resumed_session_the_client_resends_and_nothing_is_doubled() {
        let mut o = outbox(2);
        hand_all(&mut o);
        o.on(Signal::WentOut(1));
        o.on(Signal::WentOut(2));
        o.on(Signal::Lost { returned: 0 });
        assert_eq!(
            o.on(Signal::Connected {
                session_present: true
            }),
            Outcome::Nothing
        );
        assert!(o.hand().is_none(), "the client has them");
        assert_eq!(o.on(Signal::WentOut(2)), Outcome::Retransmitted);
        assert_eq!(o.on(Signal::WentOut(1)), Outcome::Retransmitted);
        assert_eq!(o.on(Signal::Acked(2)), Outcome::Acked(2));
        assert_eq!(o.on(Signal::Acked(1)), Outcome::Acked(1));
    }

    #[test]
    fn a_failure_reason_means_publish_it_again_unless_it_cannot_help() {
        let mut o = outbox(2);
        hand_all(&mut o);
        o.on(Signal::WentOut(1));
        o.on(Signal::WentOut(2));
        assert_eq!(
            o.on(Signal::Failed {
                pkid: 1,
                retry: true
            }),
            Outcome::Requeued(1)
        );
        assert_eq!(
            o.on(Signal::Failed {
                pkid: 2,
                retry: false
            }),
            Outcome::GivenUp(2)
        );
        assert_eq!(hand_all(&mut o), [1]);
        o.on(Signal::WentOut(3));
        assert_eq!(o.on(Signal::Acked(3)), Outcome::Acked(1));
    }

    #[test]
    fn what_the_client_gave_back_or_held_when_the_connection_ended_goes_out_again() {
        let mut o = outbox(4);
        hand_all(&mut o);
        o.on(Signal::WentOut(1));
        // Frame 2 came back with id 1 still in flight; 3 and 4 sat in the request channel.
        o.on(Signal::Held(1));
        assert_eq!(o.on(Signal::Lost { returned: 2 }), Outcome::Requeued(3));
        assert_eq!(hand_all(&mut o), [2, 3, 4]);
        o.on(Signal::Connected {
            session_present: true,
        });
        assert_eq!(o.on(Signal::WentOut(1)), Outcome::Retransmitted);
        for pkid in 2..=4 {
            o.on(Signal::WentOut(pkid));
        }
        let acked: Vec<_> = (1..=4).map(|p| o.on(Signal::Acked(p))).collect();
        assert_eq!(
            acked,
            [1, 2, 3, 4].map(Outcome::Acked),
            "each frame once, by its own packet id"
        );
    }

    #[test]
    fn a_held_frame_takes_the_id_once_it_is_free() {
        let mut o = outbox(2);
        hand_all(&mut o);
        o.on(Signal::WentOut(5));
        o.on(Signal::Held(5));
        assert_eq!(o.on(Signal::Acked(5)), Outcome::Acked(1));
        assert_eq!(o.on(Signal::WentOut(5)), Outcome::Nothing);
        assert_eq!(o.on(Signal::Acked(5)), Outcome::Acked(2));
    }

    #[test]
    fn it_is_full_at_its_capacity_and_qos0_frames_are_not_kept() {
        let mut o = Outbox::new(2);
        o.push(1);
        assert!(!o.is_full());
        o.push(2);
        assert!(o.is_full());
        o.hand();
        assert_eq!(o.forget_last_handed(), Some(1));
        assert!(!o.is_full());
    }
}
