//! Memory for partial packets, all connections together. Each connection may hold a packet
//! up to `max_packet_bytes` while the rest of it arrives; without a total, many connections
//! each holding most of a large packet could take all of the gateway's memory. A read buffer
//! of up to [`FREE`] bytes, which every busy connection uses, is not counted.

use crate::Refusal;
use std::sync::atomic::{AtomicUsize, Ordering};

/// What a connection's read buffer may hold before it counts against the budget.
pub(crate) const FREE: usize = 16 * 1024;

#[derive(Debug)]
pub(crate) struct BufferBudget {
    used: AtomicUsize,
    max: usize,
}

impl BufferBudget {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            used: AtomicUsize::new(0),
            max,
        }
    }

    /// Brings what a connection has charged (`held`) to what its buffer now takes
    /// (`capacity`). Refused when the total would pass the budget; the connection is then
    /// closed, and [`BufferBudget::release`] gives back what it held.
    pub(crate) fn charge(&self, held: &mut usize, capacity: usize) -> Result<(), Refusal> {
        let want = if capacity > FREE { capacity } else { 0 };
        if want == *held {
            // The common case, a small buffer: the shared counter is not touched, so
            // connections on many cores do not contend for it.
            return Ok(());
        }
        if want > *held {
            let more = want - *held;
            let before = self.used.fetch_add(more, Ordering::Relaxed);
            if before + more > self.max {
                self.used.fetch_sub(more, Ordering::Relaxed);
                return Err(Refusal::BufferBudget);
            }
        } else {
            self.used.fetch_sub(*held - want, Ordering::Relaxed);
        }
        *held = want;
        Ok(())
    }

    pub(crate) fn release(&self, held: &mut usize) {
        self.used.fetch_sub(std::mem::take(held), Ordering::Relaxed);
    }

    /// Bytes charged now.
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_buffers_are_free_and_large_ones_count_until_released() {
        let b = BufferBudget::new(100_000);
        let (mut one, mut two) = (0, 0);
        b.charge(&mut one, FREE).expect("free");
        assert_eq!(b.used(), 0);
        b.charge(&mut one, 60_000).expect("room");
        assert_eq!(b.charge(&mut two, 50_000), Err(Refusal::BufferBudget));
        assert_eq!(
            (b.used(), two),
            (60_000, 0),
            "a refused charge takes nothing"
        );
        b.charge(&mut one, 1_000).expect("shrinks");
        assert_eq!(b.used(), 0);
        b.charge(&mut two, 50_000).expect("room again");
        b.release(&mut two);
        assert_eq!((b.used(), two), (0, 0));
    }
}
