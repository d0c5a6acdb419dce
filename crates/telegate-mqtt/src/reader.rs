//! The link reader: a dedicated thread that drains the broker's local link into the
//! pipeline's bounded channel. When that channel is full the reader blocks, the broker's log
//! grows, and past its size the broker evicts segments; the jump in the link's cursor is the
//! number of frames lost, and is counted.

use bytes::Bytes;
use rumqttd::Notification;
use rumqttd::local::LinkRx;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::mpsc;

/// One MQTT publish, as received.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub topic: Bytes,
    pub payload: Bytes,
}

/// Counters the reader keeps (also exported as metrics).
#[derive(Debug, Default)]
pub struct IngressStats {
    received: AtomicU64,
    lost: AtomicU64,
}

impl IngressStats {
    /// Publishes read from the broker.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
    /// Publishes the broker evicted before telegate read them.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }
}

pub(crate) fn spawn(
    mut link_rx: LinkRx,
    tx: mpsc::Sender<Incoming>,
    stats: Arc<IngressStats>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("mqtt-link-reader".into())
        .spawn(move || {
            // Registered up front so both series exist (at zero) before the first frame.
            let received = metrics::counter!("telegate_ingress_received_total");
            let lost = metrics::counter!("telegate_ingress_lost_total");
            lost.increment(0);
            let mut next_offset: Option<u64> = None;
            loop {
                let notification = match link_rx.recv() {
                    Ok(Some(n)) => n,
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::error!(error = %e, "MQTT link closed; ingress stops");
                        return;
                    }
                };
                match notification {
                    Notification::Forward(forward) => {
                        if let Some((_, offset)) = forward.cursor {
                            let gap = gap(&mut next_offset, offset);
                            if gap > 0 {
                                stats.lost.fetch_add(gap, Ordering::Relaxed);
                                lost.increment(gap);
                                tracing::warn!(
                                    lost = gap,
                                    "broker evicted unread frames: the pipeline fell behind"
                                );
                            }
                        }
                        stats.received.fetch_add(1, Ordering::Relaxed);
                        received.increment(1);
                        let incoming = Incoming {
                            topic: forward.publish.topic,
                            payload: forward.publish.payload,
                        };
                        // Blocking here is the back-pressure: the broker's log absorbs it.
                        if tx.blocking_send(incoming).is_err() {
                            tracing::info!("pipeline closed; MQTT link reader stops");
                            return;
                        }
                    }
                    // The router pauses a link after a batch; it must be told to go on.
                    Notification::Unschedule => {
                        if let Err(e) = link_rx.ready() {
                            tracing::error!(error = %e, "MQTT link closed; ingress stops");
                            return;
                        }
                    }
                    _ => {}
                }
            }
        })?;
    Ok(())
}

/// Frames skipped between the expected and the seen offset; advances the expectation.
fn gap(next: &mut Option<u64>, seen: u64) -> u64 {
    let lost = next.map_or(0, |n| seen.saturating_sub(n));
    *next = Some(seen + 1);
    lost
}

#[cfg(test)]
mod tests {
    #[test]
    fn gaps_count_skipped_offsets_only() {
        let mut next = None;
        assert_eq!(super::gap(&mut next, 0), 0);
        assert_eq!(super::gap(&mut next, 1), 0);
        assert_eq!(super::gap(&mut next, 5), 3);
        assert_eq!(super::gap(&mut next, 6), 0);
    }
}
