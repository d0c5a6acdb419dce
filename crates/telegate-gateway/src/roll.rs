//! Keeps every partition of `telegate.consent-state` closing its segments on time, so that an
//! erased vehicle's earlier record, and the wrapped key material in it, leaves the log within
//! the documented bound even on a partition no vehicle writes to.
//!
//! Kafka closes a segment only when a record is appended after `segment.ms`, and its log
//! cleaner never touches the open segment: until the segment holding an erasure's tombstone is
//! closed, the erased record stays. A partition that no vehicle writes to would keep it for
//! good. Every `state_roll_interval` the gateway appends a roll marker (a tombstone under a
//! reserved key, [`telegate_kafka::roll_marker`]) to each partition, so a segment closes at
//! most one interval after `segment.ms`. Readers skip the markers ([`telegate_kafka::follow`],
//! [`telegate_kafka::scan`]). Several gateways do this at once, which is harmless: a segment
//! closes a little sooner, and compaction keeps one marker per partition.

use std::time::Duration;
use telegate_kafka::LogWriter;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

/// Rolls every partition of `topic` at once, then every `every`, until `stop` is cancelled. A failed round is counted and logged, and the next one comes at the
/// next interval.
pub(crate) async fn keep_rolling(
    writer: LogWriter,
    topic: String,
    every: Duration,
    stop: CancellationToken,
) {
    let failed = metrics::counter!("telegate_state_roll_errors_total");
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        // Not abandoned on stop: a blocking metadata request cannot be, and it gives up
        // within seconds.
        let rolled = match writer.partitions(&topic).await {
            Ok(partitions) => tokio::select! {
                () = stop.cancelled() => return,
                r = writer.roll(&topic, &partitions) => r,
            },
            Err(e) => Err(e),
        };
        if let Err(e) = rolled {
            failed.increment(1);
            tracing::warn!(
                %topic,
                error = %e,
                "consent-state partitions not rolled; erased records on quiet partitions wait for the next round"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::state::record::{self, Read};
    use telegate_kafka::{is_roll_marker, roll_marker};
    use telegate_policy::Keyring;

    /// Readers skip markers; one that did not would still not take a marker for a vehicle's
    /// erasure, current or of format 1.
    #[test]
    fn a_roll_marker_names_no_vehicle() {
        let ring = Keyring::ephemeral([1; 32]);
        let keys = [0, 5, 127].map(roll_marker);
        for key in &keys {
            assert!(is_roll_marker(key));
            assert!(matches!(
                record::decode(ring.state(), key, None),
                Read::Malformed(_)
            ));
        }
        assert_ne!(keys[0], keys[1], "one key per partition");
        let vin = telegate_frame::Vin::parse("WP0ZZZ99ZTS392124").expect("VIN");
        let state_key = ring.state().key_of(&vin);
        assert!(!is_roll_marker(state_key.to_hex().as_bytes()));
        assert!(!is_roll_marker(b"WP0ZZZ99ZTS392124"));
    }
}
