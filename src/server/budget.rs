//! Byte budgets for requests in memory: one per connection, one per shard.
//!
//! A frame's bytes are reserved as they arrive, never for what its length
//! prefix announces: a client that announces 16 MiB and then stalls holds
//! nothing. The reader reads what the socket has (at most one chunk) and
//! only then reserves it, so memory beyond the budget is at most one chunk
//! per connection in the middle of a read; before reading the first bytes
//! of a new frame it waits until the budget is not spent, which is what
//! slows a fast producer down (its socket is not read).
//!
//! Large frames still arriving may hold at most half of the shard budget
//! between them, so clients that send most of a large frame and then stall
//! cannot take the room small requests need: the other half is always left
//! for requests whose frames are complete and for small frames (up to one
//! read piece, 256 KiB), which are charged as they arrive like any other.
//!
//! Reserving piece by piece while holding earlier pieces could deadlock:
//! several large frames, each holding part of the budget and waiting for
//! more, with nothing left to free. So large frames still arriving stand in
//! a line ([`Arrival`]), and the frame at its head may overdraw the budget:
//! it never waits, completes (or hits the frame deadline), and makes room
//! for the next. The overdraft is at most one frame (`max_frame_bytes`), so
//! memory stays bounded by the budget plus one frame plus one read piece per
//! reading connection.
//!
//! Holds grow and release themselves when dropped.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::rc::Rc;

use crate::runtime::notify::Notify;

/// Bytes a connection or a shard lets requests hold in memory.
pub(crate) struct ByteBudget {
    capacity: u64,
    held: Cell<u64>,
    freed: Notify,
    /// Large frames whose bytes are still arriving, in the order they
    /// started to; bounded by the connections (each reads one frame at a
    /// time).
    arrivals: RefCell<VecDeque<u64>>,
    next_arrival: Cell<u64>,
    /// Bytes held by the frames in `arrivals`; at most half the capacity,
    /// except for the head's overdraft.
    arriving: Cell<u64>,
    /// Mirrors `held` for metrics (the shard's in-flight bytes gauge).
    gauge: Option<Rc<Cell<u64>>>,
}

impl fmt::Debug for ByteBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ByteBudget").field("capacity", &self.capacity).field("held", &self.held.get()).finish()
    }
}

/// Bytes held against a budget until dropped.
pub(crate) struct Hold {
    budget: Rc<ByteBudget>,
    bytes: u64,
}

/// A large frame's place in the line of frames still arriving at a budget,
/// and the bytes it holds while it is there.
pub(crate) struct Arrival {
    budget: Rc<ByteBudget>,
    id: u64,
    bytes: Cell<u64>,
}

impl ByteBudget {
    pub(crate) fn new(capacity: u64) -> Rc<ByteBudget> {
        ByteBudget::build(capacity, None)
    }

    /// A budget whose held bytes are also kept in `gauge`.
    pub(crate) fn with_gauge(capacity: u64, gauge: Rc<Cell<u64>>) -> Rc<ByteBudget> {
        ByteBudget::build(capacity, Some(gauge))
    }

    fn build(capacity: u64, gauge: Option<Rc<Cell<u64>>>) -> Rc<ByteBudget> {
        Rc::new(ByteBudget {
            capacity,
            held: Cell::new(0),
            freed: Notify::default(),
            arrivals: RefCell::new(VecDeque::new()),
            next_arrival: Cell::new(0),
            arriving: Cell::new(0),
            gauge,
        })
    }

    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }

    #[cfg(test)]
    pub(crate) fn held(&self) -> u64 {
        self.held.get()
    }

    /// An empty hold, to grow.
    pub(crate) fn hold(self: &Rc<Self>) -> Hold {
        Hold { budget: Rc::clone(self), bytes: 0 }
    }

    /// Joins the line of arriving frames; leaves it when dropped.
    pub(crate) fn arrival(self: &Rc<Self>) -> Arrival {
        let id = self.next_arrival.get();
        self.next_arrival.set(id.wrapping_add(1));
        self.arrivals.borrow_mut().push_back(id);
        Arrival { budget: Rc::clone(self), id, bytes: Cell::new(0) }
    }

    /// Waits until some of the budget is free.
    pub(crate) async fn wait_for_room(&self) {
        loop {
            let freed = self.freed.notified();
            if self.held.get() < self.capacity {
                return;
            }
            freed.await;
        }
    }

    /// Adds `bytes` to `hold`, waiting while they do not fit. Bytes of a
    /// large frame still arriving (`arrival`) must also fit the half of the
    /// budget such frames share, unless that frame heads the line of
    /// arriving frames (see the module docs).
    pub(crate) async fn grow(&self, hold: &mut Hold, bytes: u64, arrival: Option<&Arrival>) {
        debug_assert!(std::ptr::eq(self, &*hold.budget), "a hold grows against its own budget");
        loop {
            let freed = self.freed.notified();
            let fits = self.held.get() + bytes <= self.capacity;
            let fits_arriving = arrival.is_none() || self.arriving.get() + bytes <= self.capacity / 2;
            let heads_the_line = arrival.is_some_and(|arrival| self.arrivals.borrow().front() == Some(&arrival.id));
            if (fits && fits_arriving) || heads_the_line {
                self.set_held(self.held.get() + bytes);
                hold.bytes += bytes;
                if let Some(arrival) = arrival {
                    arrival.bytes.set(arrival.bytes.get() + bytes);
                    self.arriving.set(self.arriving.get() + bytes);
                }
                return;
            }
            freed.await;
        }
    }

    fn set_held(&self, held: u64) {
        self.held.set(held);
        if let Some(gauge) = &self.gauge {
            gauge.set(held);
        }
    }

    fn release(&self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        debug_assert!(self.held.get() >= bytes, "released more than was held");
        self.set_held(self.held.get().saturating_sub(bytes));
        self.freed.notify_all();
    }
}

impl Hold {
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Gives back what is held beyond `bytes`.
    pub(crate) fn shrink_to(&mut self, bytes: u64) {
        if self.bytes > bytes {
            self.budget.release(self.bytes - bytes);
            self.bytes = bytes;
        }
    }
}

impl fmt::Debug for Hold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hold").field("bytes", &self.bytes).finish()
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

impl Drop for Arrival {
    /// The frame is complete (or abandoned): its bytes no longer count as
    /// arriving (they stay held by its `Hold`), and it leaves the line.
    fn drop(&mut self) {
        self.budget.arriving.set(self.budget.arriving.get().saturating_sub(self.bytes.get()));
        let mut arrivals = self.budget.arrivals.borrow_mut();
        if let Some(position) = arrivals.iter().position(|id| *id == self.id) {
            arrivals.remove(position);
        }
        drop(arrivals);
        // A new head of the line may now overdraw.
        self.budget.freed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future;
    use std::time::Duration;

    fn run<T>(future: impl std::future::Future<Output = T>) -> T {
        crate::runtime::test_executor().run(future)
    }

    /// Whether `future` is still waiting after the executor has had time
    /// to run everything ready.
    async fn still_waiting(future: impl std::future::Future<Output = ()>) -> bool {
        future::or(
            async {
                future.await;
                false
            },
            async {
                glommio::timer::sleep(Duration::from_millis(20)).await;
                true
            },
        )
        .await
    }

    #[test]
    fn holds_release_what_they_took_when_dropped() {
        run(async {
            let budget = ByteBudget::new(100);
            let mut hold = budget.hold();
            budget.grow(&mut hold, 60, None).await;
            budget.grow(&mut hold, 40, None).await;
            assert_eq!((hold.bytes(), budget.held()), (100, 100));
            let mut other = budget.hold();
            assert!(still_waiting(budget.grow(&mut other, 1, None)).await, "a spent budget makes growers wait");
            assert!(still_waiting(budget.wait_for_room()).await);
            drop(hold);
            assert_eq!(budget.held(), 0);
            budget.wait_for_room().await;
            budget.grow(&mut other, 1, None).await;
            assert_eq!(budget.held(), 1);
        });
    }

    #[test]
    fn the_oldest_arriving_frame_may_overdraw_and_no_other() {
        run(async {
            let budget = ByteBudget::new(100);
            let (first, second) = (budget.arrival(), budget.arrival());
            let (mut a, mut b) = (budget.hold(), budget.hold());
            budget.grow(&mut a, 50, Some(&first)).await;
            // Arriving frames share half the budget: the second must wait
            // although the budget as a whole has room.
            assert!(still_waiting(budget.grow(&mut b, 10, Some(&second))).await, "the second frame waits");
            // Both frames want more: without the overdraft they would wait
            // for each other forever.
            budget.grow(&mut a, 70, Some(&first)).await;
            assert_eq!(budget.held(), 120, "the head of the line overdrew");
            // The first frame completes and leaves the line (its bytes stay
            // held): the second heads it and may go on.
            drop(first);
            budget.grow(&mut b, 10, Some(&second)).await;
            assert_eq!((budget.held(), budget.arriving.get()), (130, 10));
            drop((a, b, second));
            assert_eq!((budget.held(), budget.arriving.get()), (0, 0));
            assert!(budget.arrivals.borrow().is_empty(), "the line is empty once every frame left it");
        });
    }

    #[test]
    fn arriving_frames_leave_half_the_budget_to_everything_else() {
        run(async {
            let budget = ByteBudget::new(100);
            let (head, stalled) = (budget.arrival(), budget.arrival());
            let (mut a, mut b, mut small) = (budget.hold(), budget.hold(), budget.hold());
            budget.grow(&mut a, 30, Some(&head)).await;
            budget.grow(&mut b, 20, Some(&stalled)).await;
            assert!(still_waiting(budget.grow(&mut b, 1, Some(&stalled))).await, "arriving frames are capped");
            // A complete request still finds the other half.
            budget.grow(&mut small, 50, None).await;
            assert_eq!(budget.held(), 100);
            drop((head, stalled, a, b, small));
        });
    }
}
