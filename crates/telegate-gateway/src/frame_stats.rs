//! What the pipeline made of the frames, counted once and read twice: as Prometheus counters
//! on `/metrics`, and as typed numbers this process reads back (the console's flows page, the
//! demo's screen) without parsing its own exposition text. Every counter is registered when
//! the pack is loaded, so the hot path never builds a label.

use metrics::Counter;
use std::sync::atomic::{AtomicU64, Ordering};
use strum::VariantArray;
use telegate_frame::{FrameKind, RejectReason};
use telegate_policy::{DropReason, Pack, Purpose};

/// One count, kept for `/metrics` and for readers in this process.
#[derive(Debug)]
struct Tally {
    n: AtomicU64,
    metric: Counter,
}

impl Tally {
    fn new(metric: Counter) -> Self {
        Self {
            n: AtomicU64::new(0),
            metric,
        }
    }

    fn add(&self, n: u64) {
        self.n.fetch_add(n, Ordering::Relaxed);
        self.metric.increment(n);
    }

    fn get(&self) -> u64 {
        self.n.load(Ordering::Relaxed)
    }
}

/// The frames by kind and verdict, and the records by purpose and drop reason, since this
/// gateway started. Purposes are numbered as in the pack (`Pack::purposes`).
#[derive(Debug)]
pub struct FrameStats {
    /// Per frame kind.
    valid: Vec<Tally>,
    /// Per frame kind: valid, but no purpose takes it.
    unrouted: Vec<Tally>,
    /// Per rejection reason.
    rejected: Vec<Tally>,
    /// Per purpose.
    forwarded: Vec<Tally>,
    /// Per purpose, then per drop reason.
    dropped: Vec<Vec<Tally>>,
    /// Frames captured in offline mode: counted, nothing else kept.
    offline: Tally,
}

impl FrameStats {
    pub(crate) fn register(pack: &Pack) -> Self {
        let per_kind = |name: &'static str| {
            FrameKind::VARIANTS
                .iter()
                .map(|k| Tally::new(metrics::counter!(name, "kind" => k.as_str())))
                .collect()
        };
        let purpose_labels = |p: &Purpose| {
            vec![
                ("service", pack.service_of(p).id.to_string()),
                ("purpose", p.id.to_string()),
            ]
        };
        Self {
            valid: per_kind("telegate_frames_valid_total"),
            unrouted: per_kind("telegate_frames_unrouted_total"),
            rejected: RejectReason::VARIANTS
                .iter()
                .map(|r| {
                    let c =
                        metrics::counter!("telegate_frames_rejected_total", "reason" => r.as_str());
                    Tally::new(c)
                })
                .collect(),
            forwarded: pack
                .purposes
                .iter()
                .map(|p| {
                    let c =
                        metrics::counter!("telegate_records_forwarded_total", &purpose_labels(p));
                    Tally::new(c)
                })
                .collect(),
            dropped: pack
                .purposes
                .iter()
                .map(|p| {
                    DropReason::VARIANTS
                        .iter()
                        .map(|r| {
                            let mut labels = purpose_labels(p);
                            labels.push(("reason", r.as_str().to_owned()));
                            Tally::new(metrics::counter!("telegate_records_dropped_total", &labels))
                        })
                        .collect()
                })
                .collect(),
            offline: Tally::new(metrics::counter!("telegate_frames_offline_total")),
        }
    }

    pub(crate) fn count_valid(&self, kind: FrameKind) {
        self.valid[kind.index()].add(1);
    }

    pub(crate) fn count_unrouted(&self, kind: FrameKind) {
        self.unrouted[kind.index()].add(1);
    }

    pub(crate) fn count_rejected(&self, reason: RejectReason) {
        self.rejected[reason.index()].add(1);
    }

    pub(crate) fn count_forwarded(&self, purpose: usize) {
        self.forwarded[purpose].add(1);
    }

    pub(crate) fn count_dropped(&self, purpose: usize, reason: DropReason) {
        self.dropped[purpose][reason.index()].add(1);
    }

    pub(crate) fn count_offline(&self) {
        self.offline.add(1);
    }

    /// Valid frames of this kind.
    pub fn valid(&self, kind: FrameKind) -> u64 {
        self.valid[kind.index()].get()
    }

    /// Valid frames of this kind that no purpose takes.
    pub fn unrouted(&self, kind: FrameKind) -> u64 {
        self.unrouted[kind.index()].get()
    }

    /// Frames refused for this reason.
    pub fn rejected(&self, reason: RejectReason) -> u64 {
        self.rejected[reason.index()].get()
    }

    /// Records handed on for the pack's purpose number `purpose`.
    pub fn forwarded(&self, purpose: usize) -> u64 {
        self.forwarded[purpose].get()
    }

    /// Records the pack's purpose number `purpose` did not get, for this reason.
    pub fn dropped(&self, purpose: usize, reason: DropReason) -> u64 {
        self.dropped[purpose][reason.index()].get()
    }

    /// Frames captured while their vehicle was in offline mode.
    pub fn offline(&self) -> u64 {
        self.offline.get()
    }
}

#[cfg(test)]
mod tests {
    use super::FrameStats;
    use telegate_frame::{FrameKind, RejectReason};
    use telegate_policy::{DropReason, Pack};

    #[test]
    fn each_count_is_read_back_where_it_was_made() {
        let pack = Pack::from_toml(crate::REFERENCE_PACK).expect("reference pack");
        let stats = FrameStats::register(&pack);
        stats.count_valid(FrameKind::Status);
        stats.count_valid(FrameKind::Status);
        stats.count_unrouted(FrameKind::Software);
        stats.count_rejected(RejectReason::TopicMalformed);
        stats.count_forwarded(1);
        stats.count_dropped(1, DropReason::PrivateMode);
        stats.count_offline();
        assert_eq!(stats.valid(FrameKind::Status), 2);
        assert_eq!(stats.valid(FrameKind::Location), 0);
        assert_eq!(stats.unrouted(FrameKind::Software), 1);
        assert_eq!(stats.rejected(RejectReason::TopicMalformed), 1);
        assert_eq!((stats.forwarded(0), stats.forwarded(1)), (0, 1));
        assert_eq!(stats.dropped(1, DropReason::PrivateMode), 1);
        assert_eq!(stats.dropped(0, DropReason::PrivateMode), 0);
        assert_eq!(stats.offline(), 1);
    }
}
