//! Helpers for the crate's own unit tests.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// A gate threads pass through. While it is closed, each thread that reaches it reports its
/// arrival and waits until the gate opens; while it is open, `pass` returns at once.
#[derive(Default)]
pub(crate) struct Gate {
    closed: Mutex<Option<Closed>>,
}

/// Where arrivals are reported, and what they wait on.
type Closed = (Sender<()>, Arc<Mutex<Receiver<()>>>);

/// Opens a closed [`Gate`] when given back to it.
pub(crate) struct Key(Sender<()>);

impl Gate {
    /// Closes the gate; returns the arrivals, one message per thread that reaches it, and
    /// the key that opens it.
    pub(crate) fn close(&self) -> (Receiver<()>, Key) {
        let (arrived_tx, arrived_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel();
        *self.closed.lock() = Some((arrived_tx, Arc::new(Mutex::new(go_rx))));
        (arrived_rx, Key(go_tx))
    }

    /// Opens the gate: the threads waiting at it go on, and later ones pass.
    pub(crate) fn open(&self, key: Key) {
        *self.closed.lock() = None;
        drop(key.0);
    }

    /// Called by the threads that pass: waits while the gate is closed.
    pub(crate) fn pass(&self) {
        let closed = self.closed.lock().clone();
        if let Some((arrived, go)) = closed {
            let _ = arrived.send(());
            // Returns once the key is dropped (the channel disconnects).
            let _ = go.lock().recv();
        }
    }
}

/// Polls a condition that other threads will make true. Bounded, so that a bug fails the
/// test instead of hanging it.
pub(crate) fn wait_until(mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "condition never became true"
        );
        std::thread::yield_now();
    }
}
