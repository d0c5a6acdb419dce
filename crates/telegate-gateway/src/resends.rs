//! Frames sent again. A vehicle whose PUBACK did not arrive (a dropped connection, a close, a
//! client library that resends everything on reconnect) publishes the frame again, with or
//! without the DUP flag. A frame is known by its vehicle and `seq`, which is strictly
//! increasing per vehicle (docs/contract.md): for each vehicle that sent QoS 1 frames lately,
//! the seqs Kafka holds (the last [`REMEMBERED`] below the highest) and those being written now
//! are kept here. A frame sent again is acknowledged as the first one is, once that one is, and
//! is not written twice.
//!
//! Kept in memory: after a restart, a frame the gateway wrote but did not acknowledge before
//! it stopped is written again when the vehicle resends it (docs/contract.md, delivery).

use dashmap::DashMap;
use std::sync::Arc;
use telegate_frame::Vin;
use telegate_kafka::Receipt;
use telegate_mqtt::{Ack, AckOutcome};

/// Seqs below a vehicle's highest whose records Kafka holds that are remembered: a frame sent
/// again from further back than this is written again.
pub(crate) const REMEMBERED: u64 = 256;

const WORDS: usize = (REMEMBERED / 64) as usize;

/// What is known of the frames each vehicle sent lately.
#[derive(Debug)]
pub(crate) struct Resends {
    vehicles: DashMap<Vin, Window>,
    /// A vehicle without a frame for this long (and none being written) is forgotten.
    idle_ms: i64,
}

/// One vehicle's recent frames.
#[derive(Debug, Default)]
struct Window {
    /// The highest seq Kafka holds for the vehicle; bit `i` of `held` says whether it holds
    /// seq `top - i`.
    top: u64,
    held: [u64; WORDS],
    /// Frames given to Kafka and not yet confirmed: seq, and the acknowledgements of the
    /// copies that came meanwhile.
    writing: Vec<(u64, Vec<Ack>)>,
    last_ms: i64,
}

impl Window {
    fn holds(&self, seq: u64) -> bool {
        match self.top.checked_sub(seq) {
            Some(back) if back < REMEMBERED => {
                let back = back as usize;
                self.held[back / 64] & (1 << (back % 64)) != 0
            }
            _ => false,
        }
    }

    fn mark_held(&mut self, seq: u64) {
        if seq > self.top {
            let shift = seq - self.top;
            if shift >= REMEMBERED {
                self.held = [0; WORDS];
            } else {
                // Shift the whole bitmap up by `shift` bits, newest at bit 0.
                let (words, bits) = ((shift / 64) as usize, (shift % 64) as u32);
                for i in (0..WORDS).rev() {
                    let from = i.checked_sub(words);
                    let hi = from.map_or(0, |f| self.held[f]);
                    let lo = from
                        .and_then(|f| f.checked_sub(1))
                        .map_or(0, |f| self.held[f]);
                    self.held[i] = match bits {
                        0 => hi,
                        b => (hi << b) | (lo >> (64 - b)),
                    };
                }
            }
            self.top = seq;
        }
        if let Some(back) = self.top.checked_sub(seq).filter(|b| *b < REMEMBERED) {
            let back = back as usize;
            self.held[back / 64] |= 1 << (back % 64);
        }
    }
}

/// What to do with a QoS 1 frame.
pub(crate) enum Claim {
    /// The first copy: write it; the receipt completes its acknowledgement, and those of
    /// copies that come while it is written.
    New(Receipt),
    /// Kafka holds it, or it is being written: the acknowledgement is taken care of.
    Copy,
}

impl Resends {
    pub(crate) fn new(idle: std::time::Duration) -> Self {
        Self {
            vehicles: DashMap::new(),
            idle_ms: i64::try_from(idle.as_millis()).unwrap_or(i64::MAX),
        }
    }

    /// Frame `seq` of `vin`, acknowledged through `ack`, arrived at `now_ms`.
    pub(crate) fn claim(self: &Arc<Self>, vin: Vin, seq: u64, ack: Ack, now_ms: i64) -> Claim {
        let mut w = self.vehicles.entry(vin).or_default();
        w.last_ms = now_ms;
        if w.holds(seq) {
            drop(w);
            ack.complete(AckOutcome::Accepted);
            return Claim::Copy;
        }
        if let Some((_, copies)) = w.writing.iter_mut().find(|(s, _)| *s == seq) {
            copies.push(ack);
            return Claim::Copy;
        }
        w.writing.push((seq, Vec::new()));
        drop(w);
        let this = self.clone();
        Claim::New(Receipt::new(move |ok| {
            let outcome = AckOutcome::of_delivery(ok);
            for copy in this.written(vin, seq, ok) {
                copy.complete(outcome);
            }
            ack.complete(outcome);
        }))
    }

    /// The first copy of a frame was written (or failed: then a later copy is written again).
    /// Returns the acknowledgements of the copies that waited for it.
    fn written(&self, vin: Vin, seq: u64, ok: bool) -> Vec<Ack> {
        let Some(mut w) = self.vehicles.get_mut(&vin) else {
            return Vec::new();
        };
        let copies = match w.writing.iter().position(|(s, _)| *s == seq) {
            Some(i) => w.writing.swap_remove(i).1,
            None => Vec::new(),
        };
        if ok {
            w.mark_held(seq);
        }
        copies
    }

    /// Forgets the vehicles idle since before `now_ms` less the idle time.
    pub(crate) fn sweep(&self, now_ms: i64) {
        let horizon = now_ms.saturating_sub(self.idle_ms);
        self.vehicles
            .retain(|_, w| !w.writing.is_empty() || w.last_ms >= horizon);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_window_remembers_the_last_seqs_below_the_highest() {
        let mut w = Window::default();
        for seq in [1, 2, 3, 70, 200] {
            w.mark_held(seq);
        }
        for seq in [1, 2, 3, 70, 200] {
            assert!(w.holds(seq), "{seq}");
        }
        for seq in [0, 4, 69, 71, 199, 201] {
            assert!(!w.holds(seq), "{seq}");
        }
        // Out of order: a lower seq arriving later is remembered too.
        w.mark_held(150);
        assert!(w.holds(150));
        // 300 pushes 1..=44 out of the window; 70 stays.
        w.mark_held(300);
        assert!(!w.holds(3));
        assert!(w.holds(70) && w.holds(200) && w.holds(300));
        // A jump beyond the window forgets everything before it.
        w.mark_held(10_000);
        assert!(!w.holds(300));
        assert!(w.holds(10_000));
        // Too far back to remember: not held, and not marked.
        w.mark_held(10_000 - REMEMBERED);
        assert!(!w.holds(10_000 - REMEMBERED));
        w.mark_held(10_000 - REMEMBERED + 1);
        assert!(w.holds(10_000 - REMEMBERED + 1));
    }

    /// Every shift of the bitmap keeps exactly the seqs still within reach.
    #[test]
    fn the_window_shifts_by_any_amount() {
        for step in 1..=REMEMBERED + 1 {
            let mut w = Window::default();
            let seqs: Vec<u64> = (1..=5).map(|i| i * step).collect();
            for &s in &seqs {
                w.mark_held(s);
            }
            for &s in &seqs {
                assert_eq!(w.holds(s), w.top - s < REMEMBERED, "step {step}, seq {s}");
            }
            for s in 1..w.top {
                if !seqs.contains(&s) {
                    assert!(!w.holds(s), "step {step}, seq {s}");
                }
            }
        }
    }

    fn outcome() -> (Ack, tokio::sync::oneshot::Receiver<AckOutcome>) {
        Ack::channel()
    }

    #[test]
    fn a_copy_waits_for_the_first_and_a_copy_of_a_written_frame_is_acknowledged_at_once() {
        let r = Arc::new(Resends::new(Duration::from_secs(600)));
        let vin = Vin::parse("WP0ZZZ99ZTS392124").expect("VIN");
        let (first, mut first_rx) = outcome();
        let Claim::New(receipt) = r.claim(vin, 7, first, 0) else {
            panic!("the first copy is written");
        };
        let (copy, mut copy_rx) = outcome();
        assert!(matches!(r.claim(vin, 7, copy, 1), Claim::Copy));
        assert!(copy_rx.try_recv().is_err(), "the copy waits for the first");
        drop(receipt);
        assert_eq!(first_rx.try_recv(), Ok(AckOutcome::Accepted));
        assert_eq!(copy_rx.try_recv(), Ok(AckOutcome::Accepted));

        let (later, mut later_rx) = outcome();
        assert!(matches!(r.claim(vin, 7, later, 2), Claim::Copy));
        assert_eq!(later_rx.try_recv(), Ok(AckOutcome::Accepted));
    }

    #[test]
    fn a_failed_frame_is_written_again_when_it_comes_again() {
        let r = Arc::new(Resends::new(Duration::from_secs(600)));
        let vin = Vin::parse("WP0ZZZ99ZTS392124").expect("VIN");
        let (first, mut first_rx) = outcome();
        let Claim::New(receipt) = r.claim(vin, 7, first, 0) else {
            panic!("written");
        };
        let (copy, mut copy_rx) = outcome();
        assert!(matches!(r.claim(vin, 7, copy, 0), Claim::Copy));
        receipt.fail();
        drop(receipt);
        assert_eq!(first_rx.try_recv(), Ok(AckOutcome::Failed));
        assert_eq!(copy_rx.try_recv(), Ok(AckOutcome::Failed));
        let (again, _rx) = outcome();
        assert!(matches!(r.claim(vin, 7, again, 1), Claim::New(_)));
    }

    #[test]
    fn idle_vehicles_are_forgotten_but_not_while_a_frame_is_written() {
        let r = Arc::new(Resends::new(Duration::from_millis(100)));
        let (a, b) = (
            Vin::parse("WP0ZZZ99ZTS392124").expect("VIN"),
            Vin::parse("KNAZZZ99ZTS392124").expect("VIN"),
        );
        let (ack, _a_rx) = outcome();
        let Claim::New(written) = r.claim(a, 1, ack, 0) else {
            panic!("written");
        };
        drop(written);
        let (ack, _b_rx) = outcome();
        let _writing = r.claim(b, 1, ack, 0);
        r.sweep(1_000);
        assert_eq!(r.vehicles.len(), 1, "b's frame is still being written");
    }
}
