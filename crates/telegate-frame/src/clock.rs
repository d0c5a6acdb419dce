//! The contract's clock: UTC milliseconds since the Unix epoch, as `capturedAtMs` counts them.
//! The pure functions of this crate and the policy core never read it; they take `now` as an
//! argument, and the edges (gateway, consumers, simulator, load generator) call this.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in UTC milliseconds. A clock set before 1970 reads as 0.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}
