//! A small executor for `oncelog bench --async`: futures run as tasks on a fixed number of
//! worker threads, each task woken by its `Waker` (the store's commit thread wakes the
//! tasks whose claims a sync made durable). The library needs no runtime, and the tool
//! does not pull one in either.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Wake, Waker};

type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Tasks ready to be polled, and how many are not finished.
struct Scheduler {
    ready: Mutex<VecDeque<Arc<Task>>>,
    wakeup: Condvar,
    unfinished: AtomicUsize,
}

struct Task {
    future: Mutex<Option<BoxFuture>>,
    /// In `ready` (or about to be): a wake then need not queue it again.
    queued: AtomicBool,
    scheduler: Arc<Scheduler>,
}

impl Wake for Task {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            let s = &self.scheduler;
            s.ready
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push_back(Arc::clone(self));
            s.wakeup.notify_one();
        }
    }
}

/// Lets the other tasks run before the one that awaits it goes on (it is queued again at
/// once): a claim that needs no sync never waits, and without this the first tasks would
/// run alone while the others wait for them to finish.
pub async fn yield_now() {
    struct YieldNow(bool);
    impl Future for YieldNow {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.0 {
                return Poll::Ready(());
            }
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
    YieldNow(false).await
}

/// Runs every future in `tasks` to completion on `workers` threads; returns when all are
/// done.
pub fn run_all(workers: usize, tasks: Vec<BoxFuture>) {
    let scheduler = Arc::new(Scheduler {
        ready: Mutex::new(VecDeque::with_capacity(tasks.len())),
        wakeup: Condvar::new(),
        unfinished: AtomicUsize::new(tasks.len()),
    });
    {
        let mut ready = scheduler.ready.lock().unwrap_or_else(|p| p.into_inner());
        for f in tasks {
            ready.push_back(Arc::new(Task {
                future: Mutex::new(Some(f)),
                queued: AtomicBool::new(true),
                scheduler: Arc::clone(&scheduler),
            }));
        }
    }
    let threads: Vec<_> = (0..workers.max(1))
        .map(|_| {
            let s = Arc::clone(&scheduler);
            std::thread::spawn(move || work(&s))
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

/// One worker: polls ready tasks until every task has finished.
fn work(s: &Scheduler) {
    loop {
        let task = {
            let mut ready = s.ready.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if let Some(t) = ready.pop_front() {
                    break t;
                }
                if s.unfinished.load(Ordering::Acquire) == 0 {
                    return;
                }
                ready = s.wakeup.wait(ready).unwrap_or_else(|p| p.into_inner());
            }
        };
        // Cleared before the poll: a wake during it queues the task again.
        task.queued.store(false, Ordering::Release);
        let waker = Waker::from(Arc::clone(&task));
        let mut slot = task.future.lock().unwrap_or_else(|p| p.into_inner());
        let Some(future) = slot.as_mut() else {
            continue;
        };
        if let Poll::Ready(()) = future.as_mut().poll(&mut Context::from_waker(&waker)) {
            *slot = None;
            if s.unfinished.fetch_sub(1, Ordering::AcqRel) == 1 {
                // The last one: let the idle workers see that and stop.
                let _ready = s.ready.lock().unwrap_or_else(|p| p.into_inner());
                s.wakeup.notify_all();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    /// Pending once, after waking itself from another thread.
    struct Later(bool);

    impl Future for Later {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.0 {
                return Poll::Ready(());
            }
            self.0 = true;
            let w = cx.waker().clone();
            std::thread::spawn(move || w.wake());
            Poll::Pending
        }
    }

    #[test]
    fn every_task_runs_to_completion() {
        let sum = Arc::new(AtomicU64::new(0));
        let tasks: Vec<BoxFuture> = (1..=500u64)
            .map(|i| {
                let sum = Arc::clone(&sum);
                Box::pin(async move {
                    Later(false).await;
                    sum.fetch_add(i, Ordering::SeqCst);
                }) as BoxFuture
            })
            .collect();
        run_all(2, tasks);
        assert_eq!(sum.load(Ordering::SeqCst), 500 * 501 / 2);
    }
}
