//! A connection's publish rate: a token bucket (governor) on the time the driver passes in,
//! so that the protocol reads no clock of its own.

use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The limiter's clock: the time last passed in, in nanoseconds since the connection began.
/// The limiter reads its clock through `&self`, hence the atomic; only the connection's task
/// sets and reads it.
#[derive(Debug)]
struct Given {
    born: Instant,
    nanos: AtomicU64,
}

impl governor::clock::Clock for Given {
    type Instant = Duration;

    fn now(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::Relaxed))
    }
}

/// `rate` publishes per second, `burst` at once (zero counts as one).
pub(super) struct Rate(RateLimiter<NotKeyed, InMemoryState, Given, NoOpMiddleware<Duration>>);

impl Rate {
    pub(super) fn new(rate: u32, burst: u32, now: Instant) -> Self {
        let rate = NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        let clock = Given {
            born: now,
            nanos: AtomicU64::new(0),
        };
        Self(RateLimiter::direct_with_clock(
            Quota::per_second(rate).allow_burst(burst),
            clock,
        ))
    }

    /// Takes one publish's token at `now`, or says when one will be there.
    pub(super) fn take(&self, now: Instant) -> Result<(), Instant> {
        let clock = self.0.clock();
        let since = now.saturating_duration_since(clock.born).as_nanos();
        clock
            .nanos
            .store(u64::try_from(since).unwrap_or(u64::MAX), Ordering::Relaxed);
        self.0
            .check()
            .map_err(|not_until| clock.born + not_until.earliest_possible())
    }
}
