//! A single-threaded "something changed" signal for tasks of one executor.
//!
//! Waiters re-check their condition after every wake-up, so one signal can
//! serve several conditions (data appended, durability advanced, space
//! freed) without lost wake-ups: checking a condition and starting to wait
//! happen with no `.await` in between, and nothing else runs on the thread.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

#[derive(Debug, Default)]
pub(crate) struct Notify {
    generation: Cell<u64>,
    next_token: Cell<u64>,
    // Invariant: one entry per live, pending `Notified` (removed when it is
    // dropped), so the map is bounded by the number of waiting tasks.
    wakers: RefCell<BTreeMap<u64, Waker>>,
}

impl Notify {
    /// Wakes every task currently waiting.
    pub(crate) fn notify_all(&self) {
        self.generation.set(self.generation.get().wrapping_add(1));
        let wakers = std::mem::take(&mut *self.wakers.borrow_mut());
        for waker in wakers.into_values() {
            waker.wake();
        }
    }

    /// Completes at the next [`Notify::notify_all`] after this call.
    pub(crate) fn notified(&self) -> Notified<'_> {
        Notified { notify: self, generation: self.generation.get(), token: None }
    }
}

#[derive(Debug)]
pub(crate) struct Notified<'a> {
    notify: &'a Notify,
    generation: u64,
    /// Where this waiter's waker is registered, once it is.
    token: Option<u64>,
}

impl Future for Notified<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.notify.generation.get() != self.generation {
            return Poll::Ready(());
        }
        let token = match self.token {
            Some(token) => token,
            None => {
                let token = self.notify.next_token.get();
                self.notify.next_token.set(token.wrapping_add(1));
                self.token = Some(token);
                token
            }
        };
        self.notify.wakers.borrow_mut().insert(token, cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Notified<'_> {
    fn drop(&mut self) {
        if let Some(token) = self.token {
            self.notify.wakers.borrow_mut().remove(&token);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::task::Wake;

    struct Flag(std::sync::atomic::AtomicBool);

    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn waiters_wake_once_notified_and_dropped_waiters_leave_no_trace() {
        let notify = Notify::default();
        let flag = Arc::new(Flag(std::sync::atomic::AtomicBool::new(false)));
        let waker = Waker::from(Arc::clone(&flag));
        let mut cx = Context::from_waker(&waker);
        let mut first = Box::pin(notify.notified());
        assert!(first.as_mut().poll(&mut cx).is_pending());
        {
            let mut dropped = Box::pin(notify.notified());
            assert!(dropped.as_mut().poll(&mut cx).is_pending());
            assert_eq!(notify.wakers.borrow().len(), 2);
        }
        assert_eq!(notify.wakers.borrow().len(), 1, "a dropped waiter deregisters");
        notify.notify_all();
        assert!(flag.0.load(std::sync::atomic::Ordering::SeqCst));
        assert!(first.as_mut().poll(&mut cx).is_ready());
        // A waiter created after the notification waits for the next one.
        let mut later = Box::pin(notify.notified());
        assert!(later.as_mut().poll(&mut cx).is_pending());
    }
}
