//! What reaches a live connection from outside, in one small allocation per connection: a
//! close order (blocked, revoked, taken over), "requests are queued", and the outcomes of its
//! QoS 1 publishes as the pipeline completes them. One waker wakes the connection's task for
//! all three, whichever of its waits is pending (the serve loop, or a throttled publish). It replaces a channel per connection and a oneshot channel plus a future per
//! publish: an idle connection holds a few dozen bytes here, and a publish's acknowledgement
//! costs a reference count, a short lock and a wake-up.

use crate::Refusal;
use crate::codec::AckOutcome;
use futures::task::AtomicWaker;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use strum::VariantArray;

#[derive(Debug, Default)]
pub(crate) struct Signal {
    /// The connection's task, as it last waited.
    waker: AtomicWaker,
    /// Set by every signal, taken by the wait that sees it.
    woken: AtomicBool,
    /// 0, or the index in [`Refusal::VARIANTS`] plus one of the reason to close.
    close: AtomicU8,
    deliver: AtomicBool,
    /// Outcomes of publishes, by the connection's publish sequence number, in the order the
    /// pipeline completed them.
    done: Mutex<Vec<(u64, AckOutcome)>>,
    /// Cleared when the connection ends: orders to it go nowhere.
    ended: AtomicBool,
}

impl Signal {
    /// Orders the connection closed; false if it had ended already. Whether it lives is read
    /// before it is woken: woken, it may act on the order and end before this returns.
    pub(crate) fn close(&self, why: Refusal) -> bool {
        let alive = !self.ended.load(Ordering::Acquire);
        let code = u8::try_from(why.index() + 1).expect("fewer than 255 refusals");
        let _ = self
            .close
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire);
        self.wake();
        alive
    }

    /// Tells the connection its session has requests to send; false if it had ended.
    pub(crate) fn deliver(&self) -> bool {
        let alive = !self.ended.load(Ordering::Acquire);
        self.deliver.store(true, Ordering::Release);
        self.wake();
        alive
    }

    pub(crate) fn complete(&self, seq: u64, outcome: AckOutcome) {
        self.done
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((seq, outcome));
        self.wake();
    }

    fn wake(&self) {
        self.woken.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Completes once something was signalled since the last wait completed. Only the
    /// connection's own task waits.
    pub(crate) fn notified(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| {
            self.waker.register(cx.waker());
            match self.woken.swap(false, Ordering::AcqRel) {
                true => Poll::Ready(()),
                false => Poll::Pending,
            }
        })
    }

    /// The close order, if one came.
    pub(crate) fn close_order(&self) -> Option<Refusal> {
        match self.close.load(Ordering::Acquire) {
            0 => None,
            code => Refusal::VARIANTS.get(usize::from(code) - 1).copied(),
        }
    }

    /// Completes with the close order once one comes.
    pub(crate) async fn closed(&self) -> Refusal {
        loop {
            if let Some(why) = self.close_order() {
                return why;
            }
            self.notified().await;
        }
    }

    /// Whether requests were queued since the last call.
    pub(crate) fn take_deliver(&self) -> bool {
        self.deliver.swap(false, Ordering::AcqRel)
    }

    /// Moves the outcomes completed so far into `into` (emptied first), leaving `into`'s
    /// old buffer behind for the next ones: no allocation once both have room.
    pub(crate) fn take_done(&self, into: &mut Vec<(u64, AckOutcome)>) {
        into.clear();
        std::mem::swap(
            &mut *self.done.lock().unwrap_or_else(|p| p.into_inner()),
            into,
        );
    }

    pub(crate) fn end(&self) {
        self.ended.store(true, Ordering::Release);
    }
}

/// How a QoS 1 publish is completed: on a connection of the edge, or through a oneshot
/// channel (external-broker mode, where one task acknowledges in order).
#[derive(Debug)]
pub(crate) enum AckTo {
    Conn { signal: Arc<Signal>, seq: u64 },
    Oneshot(tokio::sync::oneshot::Sender<AckOutcome>),
}

impl AckTo {
    pub(crate) fn send(self, outcome: AckOutcome) {
        match self {
            AckTo::Conn { signal, seq } => signal.complete(seq, outcome),
            // The receiver may be gone; then nobody waits for the answer.
            AckTo::Oneshot(tx) => {
                let _ = tx.send(outcome);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_close_order_keeps_its_first_reason_and_says_whether_anyone_listens() {
        let s = Signal::default();
        assert_eq!(s.close_order(), None);
        assert!(s.close(Refusal::VehicleBlocked));
        assert!(s.close(Refusal::SessionTakenOver));
        assert_eq!(s.close_order(), Some(Refusal::VehicleBlocked));
        s.end();
        assert!(!s.close(Refusal::VehicleBlocked));
        assert!(!s.deliver());
    }

    #[test]
    fn outcomes_are_taken_once_in_completion_order() {
        let s = Signal::default();
        s.complete(2, AckOutcome::Accepted);
        s.complete(1, AckOutcome::Failed);
        let mut v = Vec::new();
        s.take_done(&mut v);
        assert_eq!(v, [(2, AckOutcome::Accepted), (1, AckOutcome::Failed)]);
        s.take_done(&mut v);
        assert!(v.is_empty());
        assert!(!s.take_deliver());
        s.deliver();
        assert!(s.take_deliver());
        assert!(!s.take_deliver());
    }

    #[tokio::test]
    async fn a_signal_before_the_wait_is_not_lost() {
        let s = Signal::default();
        s.complete(0, AckOutcome::Accepted);
        tokio::time::timeout(std::time::Duration::from_secs(5), s.notified())
            .await
            .expect("the stored wake-up ends the wait at once");
    }
}
