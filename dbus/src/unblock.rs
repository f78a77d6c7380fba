//! Running blocking work from an async method without stalling the bus.
//!
//! zbus runs the interface's methods on the connection's executor; a method
//! that runs `systemctl` and reads `/proc` for a while would hold up every
//! other call (property reads included). [`unblock`] runs such work on a
//! thread of its own and lets the method await it.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

struct Slot<T> {
    value: Option<T>,
    waker: Option<Waker>,
    /// The thread ended without a value (it panicked).
    lost: bool,
}

/// The result of [`unblock`]: resolves when the thread is done.
struct Pending<T> {
    slot: Arc<Mutex<Slot<T>>>,
}

impl<T> Future for Pending<T> {
    type Output = Option<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(value) = slot.value.take() {
            return Poll::Ready(Some(value));
        }
        if slot.lost {
            return Poll::Ready(None);
        }
        slot.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// Fills the slot when dropped, so a panicking closure still wakes the waiter.
struct Completer<T> {
    slot: Arc<Mutex<Slot<T>>>,
}

impl<T> Drop for Completer<T> {
    fn drop(&mut self) {
        let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.value.is_none() {
            slot.lost = true;
        }
        if let Some(waker) = slot.waker.take() {
            waker.wake();
        }
    }
}

/// Runs `work` on a new thread named `name`; the future resolves to its
/// result, or to `None` if the thread could not be started or panicked.
pub(crate) fn unblock<T, F>(name: &str, work: F) -> impl Future<Output = Option<T>> + Send
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let slot = Arc::new(Mutex::new(Slot {
        value: None,
        waker: None,
        lost: false,
    }));
    let completer = Completer { slot: slot.clone() };
    let spawned = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let value = work();
            completer
                .slot
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .value = Some(value);
            drop(completer);
        });
    if spawned.is_err() {
        // The closure (and the completer in it) was dropped: the slot is
        // marked lost and the future resolves to None.
        tracing::error!("cannot start a thread for {name}");
    }
    Pending { slot }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_value() {
        let v = zbus::block_on(unblock("test", || 6 * 7));
        assert_eq!(v, Some(42));
    }

    #[test]
    fn a_panic_is_none() {
        let v: Option<u32> = zbus::block_on(unblock("test", || panic!("deliberate")));
        assert_eq!(v, None);
    }
}
