//! What one lean vehicle keeps, with no IO: every frame from the moment it is made until its
//! PUBACK (QoS 1) or until it is written (QoS 0), in the order made; which of them are on the
//! wire under which packet id; and what is written next. A connection that ends puts every
//! frame it carried back in line, and the next connection writes them again, marked DUP.
//!
//! Frames are written in the order made, so the kept frames are always the ones on the wire
//! (oldest first) followed by the ones waiting: one ordered queue and a count.

use std::collections::VecDeque;
use std::time::Instant;

/// A frame as the vehicle keeps it: enough to encode it again, byte for byte, and to tell the
/// tracker about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Frame {
    pub(crate) seq: u64,
    pub(crate) captured_at_ms: i64,
    /// When it was made: PUBACK latency counts from here, as with every vehicle.
    pub(crate) made: Instant,
    /// Made after the warm-up.
    pub(crate) measured: bool,
}

#[derive(Debug)]
struct Kept {
    frame: Frame,
    /// The packet id while on the wire (meaningful for the first `on_wire` entries only).
    pkid: u16,
    written: bool,
}

/// A frame to write now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Write {
    pub(crate) frame: Frame,
    /// QoS 1's packet id; `None` at QoS 0.
    pub(crate) pkid: Option<u16>,
    /// Written before: DUP, and counted as resent.
    pub(crate) again: bool,
}

#[derive(Debug)]
pub(crate) struct Session {
    kept: VecDeque<Kept>,
    /// The first `on_wire` kept frames are written and await their PUBACK.
    on_wire: usize,
    last_pkid: u16,
    capacity: usize,
    window: usize,
    at_least_once: bool,
}

impl Session {
    /// `capacity` frames are kept before the vehicle makes no more; at most `window` of them
    /// await a PUBACK at once.
    pub(crate) fn new(capacity: usize, window: usize, at_least_once: bool) -> Self {
        Self {
            kept: VecDeque::new(),
            on_wire: 0,
            last_pkid: 0,
            capacity: capacity.max(1),
            window: window.clamp(1, usize::from(u16::MAX)),
            at_least_once,
        }
    }

    /// Frames kept: not yet acknowledged (QoS 1) or not yet written (QoS 0).
    pub(crate) fn kept(&self) -> usize {
        self.kept.len()
    }

    pub(crate) fn is_full(&self) -> bool {
        self.kept.len() >= self.capacity
    }

    /// Keeps a new frame; it is written after every older one.
    pub(crate) fn push(&mut self, frame: Frame) {
        self.kept.push_back(Kept {
            frame,
            pkid: 0,
            written: false,
        });
    }

    /// The next frame to write on a live connection, if the window has room: it is on the
    /// wire from now on (QoS 1) or forgotten (QoS 0, which nobody acknowledges).
    pub(crate) fn next_write(&mut self) -> Option<Write> {
        if !self.at_least_once {
            let k = self.kept.pop_front()?;
            return Some(Write {
                frame: k.frame,
                pkid: None,
                again: false,
            });
        }
        if self.on_wire >= self.window || self.on_wire >= self.kept.len() {
            return None;
        }
        let pkid = self.free_pkid();
        let k = &mut self.kept[self.on_wire];
        let again = k.written;
        k.written = true;
        k.pkid = pkid;
        self.on_wire += 1;
        Some(Write {
            frame: k.frame,
            pkid: Some(pkid),
            again,
        })
    }

    /// The next packet id after the last one given, never 0 and never one still awaiting its
    /// PUBACK.
    ///
    /// Ids are given in the order frames go on the wire, so the frames on the wire hold ids
    /// rising (modulo the wrap) from the oldest to the last given. Counting on from the last
    /// one, the first id still in use that can come up is the oldest frame's, then the next
    /// frame's: only a run of them at the front needs skipping, never a search.
    fn free_pkid(&mut self) -> u16 {
        let next = |id: u16| id.checked_add(1).unwrap_or(1);
        let mut id = next(self.last_pkid);
        for k in self.kept.range(..self.on_wire) {
            if k.pkid != id {
                break;
            }
            id = next(id);
        }
        self.last_pkid = id;
        id
    }

    /// A PUBACK: the frame it acknowledges, which leaves the vehicle; `None` for an id with
    /// nothing on the wire (settled already, or from a connection that ended).
    pub(crate) fn acked(&mut self, pkid: u16) -> Option<Frame> {
        let at = self
            .kept
            .range(..self.on_wire)
            .position(|k| k.pkid == pkid)?;
        self.on_wire -= 1;
        self.kept.remove(at).map(|k| k.frame)
    }

    /// The connection ended: what it carried without a PUBACK is written again, first, on
    /// the next one. Returns how many frames that is.
    pub(crate) fn lost(&mut self) -> usize {
        std::mem::take(&mut self.on_wire)
    }

    /// Frames on the wire awaiting their PUBACK.
    #[cfg(test)]
    fn on_wire(&self) -> usize {
        self.on_wire
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(seq: u64) -> Frame {
        Frame {
            seq,
            captured_at_ms: seq as i64,
            made: Instant::now(),
            measured: true,
        }
    }

    fn session(frames: u64, window: usize) -> Session {
        let mut s = Session::new(100, window, true);
        for seq in 1..=frames {
            s.push(frame(seq));
        }
        s
    }

    fn write_all(s: &mut Session) -> Vec<(u64, u16, bool)> {
        std::iter::from_fn(|| s.next_write())
            .map(|w| (w.frame.seq, w.pkid.expect("QoS 1"), w.again))
            .collect()
    }

    #[test]
    fn a_frame_leaves_with_its_own_puback_and_only_once() {
        let mut s = session(3, 10);
        assert_eq!(
            write_all(&mut s),
            [(1, 1, false), (2, 2, false), (3, 3, false)]
        );
        assert_eq!(s.acked(2).map(|f| f.seq), Some(2));
        assert_eq!(s.acked(2), None, "settled once");
        assert_eq!(s.acked(9), None, "never given");
        assert_eq!(s.acked(1).map(|f| f.seq), Some(1));
        assert_eq!(s.acked(3).map(|f| f.seq), Some(3));
        assert_eq!((s.kept(), s.on_wire()), (0, 0));
    }

    #[test]
    fn the_window_bounds_what_awaits_a_puback() {
        let mut s = session(5, 2);
        assert_eq!(write_all(&mut s).len(), 2);
        assert_eq!(s.next_write(), None);
        s.acked(1);
        assert_eq!(write_all(&mut s), [(3, 3, false)]);
        assert_eq!(s.on_wire(), 2);
    }

    #[test]
    fn after_a_lost_connection_every_unacknowledged_frame_goes_out_again_in_order_marked_dup() {
        let mut s = session(4, 3);
        write_all(&mut s);
        s.acked(2);
        assert_eq!(s.lost(), 2, "frames 1 and 3 were on the wire");
        s.push(frame(5));
        // Ids stay fresh across connections: no PUBACK of the old one can settle a new frame.
        assert_eq!(
            write_all(&mut s),
            [(1, 4, true), (3, 5, true), (4, 6, false)]
        );
        assert_eq!(s.acked(2), None, "an id of the connection that ended");
        for id in 4..=6 {
            s.acked(id);
        }
        assert_eq!(write_all(&mut s), [(5, 7, false)]);
        s.acked(7);
        assert_eq!(s.kept(), 0);
    }

    #[test]
    fn packet_ids_skip_zero_and_every_id_still_on_the_wire() {
        let mut s = Session::new(100_000, 3, true);
        s.push(frame(1));
        assert_eq!(write_all(&mut s), [(1, 1, false)]);
        // Frame 1's PUBACK never comes; a whole cycle of ids goes by around it.
        for seq in 2..=70_000 {
            s.push(frame(seq));
            let w = s.next_write().expect("room");
            let id = w.pkid.expect("QoS 1");
            assert!(id != 0 && id != 1, "frame {seq} got id {id}");
            assert_eq!(s.acked(id).map(|f| f.seq), Some(seq));
        }
        assert_eq!(s.acked(1).map(|f| f.seq), Some(1));
    }

    #[test]
    fn no_packet_id_is_given_twice_while_on_the_wire_whatever_is_acknowledged_when() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(15);
        let mut s = Session::new(usize::MAX, 7, true);
        let mut on_wire: Vec<u16> = Vec::new();
        let mut seq = 0;
        for step in 0..400_000 {
            match rng.random_range(0..100) {
                // Some PUBACKs never come for a long while: those frames stay at the front.
                0..=44 => {
                    seq += 1;
                    s.push(frame(seq));
                    if let Some(w) = s.next_write() {
                        let id = w.pkid.expect("QoS 1");
                        assert!(
                            id != 0 && !on_wire.contains(&id),
                            "step {step}: id {id} given while {on_wire:?} are on the wire"
                        );
                        on_wire.push(id);
                    }
                }
                45..=94 => {
                    // The two oldest are acknowledged rarely: ids wrap around them.
                    let at = if rng.random_range(0..100_000) == 0 {
                        (!on_wire.is_empty()).then(|| rng.random_range(0..on_wire.len()))
                    } else {
                        (on_wire.len() > 2).then(|| rng.random_range(2..on_wire.len()))
                    };
                    if let Some(at) = at {
                        let id = on_wire.remove(at);
                        assert!(s.acked(id).is_some(), "step {step}: id {id} on the wire");
                    }
                }
                95 if rng.random_range(0..1000) == 0 => {
                    s.lost();
                    on_wire.clear();
                }
                _ => {}
            }
            while let Some(w) = s.next_write() {
                let id = w.pkid.expect("QoS 1");
                assert!(!on_wire.contains(&id), "step {step}: id {id} reused");
                on_wire.push(id);
            }
        }
    }

    #[test]
    fn it_is_full_at_capacity_and_qos0_frames_are_forgotten_once_written() {
        let mut s = Session::new(2, 100, false);
        s.push(frame(1));
        assert!(!s.is_full());
        s.push(frame(2));
        assert!(s.is_full());
        let w = s.next_write().expect("a frame");
        assert_eq!((w.frame.seq, w.pkid, w.again), (1, None, false));
        assert!(!s.is_full());
        assert_eq!(s.lost(), 0, "nothing awaits a PUBACK at QoS 0");
        assert_eq!(s.next_write().map(|w| w.frame.seq), Some(2));
        assert_eq!(s.kept(), 0);
    }
}
