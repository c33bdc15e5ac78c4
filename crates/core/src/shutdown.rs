//! Shutdown: the stop signal every background task watches, and the one owner that starts every
//! background task and waits for them at shutdown (docs/ARCHITECTURE.md, "Tasks and shutdown").

use std::future::Future;

use tokio::{sync::watch, task::JoinHandle, time::Instant};
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info_span};

/// Completes once shutdown has begun (the watched value is true), or if the sender is gone.
pub async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopping| *stopping).await;
}

/// The owner of one server's background tasks. Every task is started through [`Tasks::spawn`]
/// (the writer, the hub, subscribers, projection workers and rebuilds, erases, reads ahead, the
/// server's own loops); each watches the stop signal or ends with its request; and the server
/// waits for all of them in [`Tasks::join`] before it exits. Cheap to clone.
#[derive(Clone)]
pub struct Tasks {
    /// Every task started here: `join` closes it and waits until it is empty.
    tracker: TaskTracker,
    /// False while serving, true once shutdown has begun: the signal every task watches.
    stop: watch::Receiver<bool>,
}

impl Tasks {
    /// An owner whose tasks stop when `stop` turns true.
    pub fn new(stop: watch::Receiver<bool>) -> Self {
        Self {
            tracker: TaskTracker::new(),
            stop,
        }
    }

    /// The stop signal, for a task to watch.
    pub fn stop(&self) -> watch::Receiver<bool> {
        self.stop.clone()
    }

    /// Whether shutdown has begun.
    pub fn is_stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Starts `task` in the span `name`, owned here: `join` waits for it.
    pub fn spawn<F>(&self, name: &'static str, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker
            .spawn(task.instrument(info_span!("task", name)))
    }

    /// Once shutdown has begun: waits until every task has ended, until `deadline` at most. A
    /// task started meanwhile is waited for too. `Err` holds how many tasks were still running.
    pub async fn join_until(&self, deadline: Instant) -> Result<(), usize> {
        self.tracker.close();
        tokio::time::timeout_at(deadline, self.tracker.wait())
            .await
            .map_err(|_| self.tracker.len())
    }
}
