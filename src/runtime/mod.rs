//! Helpers on top of glommio that every layer may use; they depend on
//! nothing else in the crate: a local notify, the wake ticker, and a
//! stream that is plain TCP or TLS.

pub(crate) mod notify;
pub(crate) mod stream;

use std::time::Duration;

/// A test executor on the calling thread, as GLOMMIO.md prescribes (small
/// io_memory, shallow rings).
#[cfg(test)]
pub(crate) fn test_executor() -> glommio::LocalExecutor {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(64 << 10)
        .ring_depth(32)
        .make()
        .expect("a test executor")
}

/// Keeps the executor from sleeping longer than `interval`.
///
/// glommio 0.9.0 queues a waker sent from another thread and writes the
/// executor's eventfd only if the executor has already announced it is going
/// to sleep; just before sleeping it re-checks its cross-thread channels but
/// not that waker queue. A wake-up that lands in between (a forwarded
/// request's reply, a mesh join) is noticed only at the next wake-up. This
/// ticker makes sure there is one within `interval`. Found as a start-up
/// hang under parallel tests; see GLOMMIO.md in the design notes for the
/// runtime's other traps.
pub fn spawn_wake_ticker(interval: Duration) {
    glommio::spawn_local(async move {
        loop {
            glommio::timer::sleep(interval).await;
        }
    })
    .detach();
}
