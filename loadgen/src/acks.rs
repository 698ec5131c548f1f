//! Timing acknowledgements exactly, in whatever order they arrive.
//!
//! A producer hands out one future per record; all records of a batch are
//! answered at once. Awaiting the futures one by one in send order would be
//! cheap, but it charges a late batch's delay to every record queued behind
//! it — and batches do come back out of order (the client's in-flight
//! limit is an unfair semaphore: a newly sealed batch can overtake one that
//! was already waiting). A task per record would be exact but far too
//! costly at millions of events per second.
//!
//! A [`Lane`] gets both: every record's future is polled once, when it is
//! queued, with a waker of the lane's own. The client keeps one copy of a
//! waker that polls several records of a batch in a row, so the lane is
//! woken once per answered batch and counts the wake-ups. The collector
//! pops answered records from the front (the usual, in-order case) and
//! scans the whole lane only when that cannot account for every wake-up.
//!
//! Records of one batch are answered together, so the lane keeps them as
//! runs: a record that follows the last one queued, in the same batch and
//! with the same send time, only extends that entry. The collector then
//! handles one entry per run instead of one per record. In a burst loadgen
//! stamps several records with one clock reading; in open loop each
//! record's intended send time follows from its sequence number, so a run
//! is the whole batch.
//!
//! Nothing here depends on the client beyond the `Future` contract and
//! [`SameBatch`], so the tests drive it with fake batches.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

/// Records `seq..seq + count` of one batch, whose ack is awaited.
#[derive(Debug)]
pub struct Pending<F> {
    /// The first record's future; the batch answers the others alike.
    pub future: F,
    pub seq: u64,
    pub count: u32,
    /// When the events were sent (burst); `None` where each record's own
    /// time follows from its sequence number (open loop: its intended
    /// send time, from the schedule).
    pub from_ns: Option<u64>,
}

/// Futures that can tell whether they are answered by the same batch.
pub trait SameBatch {
    fn same_batch(&self, other: &Self) -> bool;
}

impl<F: SameBatch> Pending<F> {
    /// Takes `next` into this run if it continues it: the next sequences,
    /// the same batch, the same send time.
    fn extend(&mut self, next: &Pending<F>) -> bool {
        let continues = self.seq + u64::from(self.count) == next.seq
            && self.from_ns == next.from_ns
            && self.count.checked_add(next.count).is_some()
            && self.future.same_batch(&next.future);
        if continues {
            self.count += next.count;
        }
        continues
    }
}

/// The records of one producer whose acks are outstanding, in send order.
/// Bounded by the producer's buffer: `send` waits once it is full.
#[derive(Debug)]
pub struct Lane<F> {
    signal: Arc<AckSignal>,
    waker: Waker,
    pending: RefCell<VecDeque<Pending<F>>>,
    /// Where a full pass moves the records still pending (kept for its
    /// allocation).
    spare: RefCell<VecDeque<Pending<F>>>,
    /// The producer has flushed: no more records will come.
    closed: Cell<bool>,
}

/// What a lane's futures wake. `Waker` must be `Send + Sync`, hence the
/// atomic and the mutex; both are touched once per answered batch, not per
/// record, and never contended (the client runs on the lane's thread).
#[derive(Debug, Default)]
struct AckSignal {
    wakes: AtomicUsize,
    collector: Mutex<Option<Waker>>,
}

impl Wake for AckSignal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wakes.fetch_add(1, Ordering::Relaxed);
        if let Some(collector) = self.collector.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).as_ref() {
            collector.wake_by_ref();
        }
    }
}

impl<F: Future + Unpin + SameBatch> Default for Lane<F> {
    fn default() -> Self {
        Lane::new()
    }
}

impl<F: Future + Unpin + SameBatch> Lane<F> {
    pub fn new() -> Lane<F> {
        let signal = Arc::new(AckSignal::default());
        let waker = Waker::from(Arc::clone(&signal));
        Lane {
            signal,
            waker,
            pending: RefCell::new(VecDeque::new()),
            spare: RefCell::new(VecDeque::new()),
            closed: Cell::new(false),
        }
    }

    /// Queues a record, registering the lane's waker with its batch (or
    /// adding it to the last run, whose batch has the waker already).
    /// Returns it with its result if it was already answered.
    pub fn push(&self, mut record: Pending<F>) -> Option<(Pending<F>, F::Output)> {
        if self.pending.borrow_mut().back_mut().is_some_and(|last| last.extend(&record)) {
            return None;
        }
        match Pin::new(&mut record.future).poll(&mut Context::from_waker(&self.waker)) {
            Poll::Ready(result) => Some((record, result)),
            Poll::Pending => {
                self.pending.borrow_mut().push_back(record);
                None
            }
        }
    }

    /// No more records will come; the collector finishes once the lane is
    /// empty.
    pub fn close(&self) {
        self.closed.set(true);
        self.waker.wake_by_ref();
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.pending.borrow().len()
    }

    /// Waits until batches were answered; returns how many wake-ups came
    /// (0: closed and empty, the collector is done).
    pub async fn answered(&self) -> usize {
        std::future::poll_fn(|cx| {
            let mut collector = self.signal.collector.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if !collector.as_ref().is_some_and(|waker| waker.will_wake(cx.waker())) {
                *collector = Some(cx.waker().clone());
            }
            drop(collector);
            match self.signal.wakes.swap(0, Ordering::Relaxed) {
                0 if self.closed.get() && self.pending.borrow().is_empty() => Poll::Ready(0),
                0 => Poll::Pending,
                wakes => Poll::Ready(wakes),
            }
        })
        .await
    }

    /// Moves the answered records to `out`. `wakes` batches were answered
    /// since the last call: if answered records were found at the front and
    /// only one batch was answered, they are all there is; otherwise (out of
    /// order, or several batches) every record is looked at.
    pub fn take_ready(&self, wakes: usize, out: &mut Vec<(Pending<F>, F::Output)>) {
        let mut pending = self.pending.borrow_mut();
        let mut cx = Context::from_waker(&self.waker);
        let before = out.len();
        while let Some(front) = pending.front_mut() {
            match Pin::new(&mut front.future).poll(&mut cx) {
                Poll::Ready(result) => out.push((pending.pop_front().expect("the front exists"), result)),
                Poll::Pending => break,
            }
        }
        if wakes == 1 && out.len() > before {
            return;
        }
        // One pass that moves every record once: removing answered records
        // from the middle one by one shifted the rest each time (quadratic,
        // and a few percent of loadgen's CPU with thousands pending).
        let mut still_pending = self.spare.borrow_mut();
        for mut record in pending.drain(..) {
            match Pin::new(&mut record.future).poll(&mut cx) {
                Poll::Ready(result) => out.push((record, result)),
                Poll::Pending => still_pending.push_back(record),
            }
        }
        std::mem::swap(&mut *pending, &mut *still_pending);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    /// A batch answered all at once, waking its wakers like the client does:
    /// a waker equal to the last one registered is not added again.
    #[derive(Default)]
    struct Batch {
        done: Cell<bool>,
        wakers: RefCell<Vec<Waker>>,
    }

    impl Batch {
        fn answer(&self) {
            self.done.set(true);
            self.wakers.take().into_iter().for_each(Waker::wake);
        }
    }

    struct Record(Rc<Batch>);

    impl SameBatch for Record {
        fn same_batch(&self, other: &Record) -> bool {
            Rc::ptr_eq(&self.0, &other.0)
        }
    }

    impl Future for Record {
        type Output = ();

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.0.done.get() {
                return Poll::Ready(());
            }
            let mut wakers = self.0.wakers.borrow_mut();
            if !wakers.last().is_some_and(|last| last.will_wake(cx.waker())) {
                wakers.push(cx.waker().clone());
            }
            Poll::Pending
        }
    }

    /// Three batches of four records, sequences 0..12.
    fn lane_with_batches() -> (Lane<Record>, Vec<Rc<Batch>>) {
        let lane = Lane::new();
        let batches: Vec<Rc<Batch>> = (0..3).map(|_| Rc::new(Batch::default())).collect();
        for seq in 0..12 {
            let record =
                Pending { future: Record(Rc::clone(&batches[seq as usize / 4])), seq, count: 1, from_ns: Some(0) };
            assert!(lane.push(record).is_none());
        }
        (lane, batches)
    }

    fn take(lane: &Lane<Record>) -> Vec<u64> {
        let wakes = futures_lite::future::block_on(lane.answered());
        let mut out = Vec::new();
        lane.take_ready(wakes, &mut out);
        out.iter().flat_map(|(run, ())| run.seq..run.seq + u64::from(run.count)).collect()
    }

    #[test]
    fn each_batch_wakes_the_lane_once() {
        let (lane, batches) = lane_with_batches();
        assert!(batches.iter().all(|batch| batch.wakers.borrow().len() == 1));
        batches[0].answer();
        assert_eq!(take(&lane), [0, 1, 2, 3]);
        assert_eq!(lane.len(), 2, "a run per batch");
    }

    #[test]
    fn batches_answered_out_of_order_are_picked_out_exactly() {
        let (lane, batches) = lane_with_batches();
        batches[1].answer();
        assert_eq!(take(&lane), [4, 5, 6, 7], "the middle batch, while the first is still out");
        batches[2].answer();
        batches[0].answer();
        let mut both = take(&lane);
        both.sort_unstable();
        assert_eq!(both, [0, 1, 2, 3, 8, 9, 10, 11]);
        lane.close();
        assert_eq!(futures_lite::future::block_on(lane.answered()), 1, "close wakes the collector");
        assert_eq!(futures_lite::future::block_on(lane.answered()), 0, "closed and empty");
    }

    #[test]
    fn a_record_already_answered_is_returned_at_once() {
        let lane = Lane::new();
        let batch = Rc::new(Batch::default());
        batch.answer();
        let answered = lane.push(Pending { future: Record(batch), seq: 7, count: 1, from_ns: Some(0) });
        assert_eq!(answered.map(|(record, ())| record.seq), Some(7));
        assert_eq!(lane.len(), 0);
    }

    #[test]
    fn runs_break_at_batches_send_times_and_gaps() {
        let lane = Lane::new();
        let (first, second) = (Rc::new(Batch::default()), Rc::new(Batch::default()));
        let push = |batch: &Rc<Batch>, seq, from_ns| {
            assert!(lane.push(Pending { future: Record(Rc::clone(batch)), seq, count: 1, from_ns }).is_none());
        };
        // 0-2 one run; 3 a new send time; 5 after a gap; 6-9 another batch,
        // whose times follow from the sequence numbers: one run.
        for (batch, seq, from_ns) in [(&first, 0, Some(10)), (&first, 1, Some(10)), (&first, 2, Some(10))] {
            push(batch, seq, from_ns);
        }
        push(&first, 3, Some(20));
        push(&first, 5, Some(20));
        for seq in 6..10 {
            push(&second, seq, None);
        }
        assert_eq!(lane.len(), 4);
        assert_eq!(first.wakers.borrow().len(), 1, "the lane's waker once per batch");
        second.answer();
        assert_eq!(take(&lane), [6, 7, 8, 9]);
        first.answer();
        let wakes = futures_lite::future::block_on(lane.answered());
        let mut out = Vec::new();
        lane.take_ready(wakes, &mut out);
        let runs: Vec<(u64, u32, Option<u64>)> =
            out.iter().map(|(run, ())| (run.seq, run.count, run.from_ns)).collect();
        assert_eq!(runs, [(0, 3, Some(10)), (3, 1, Some(20)), (5, 1, Some(20))]);
    }
}
