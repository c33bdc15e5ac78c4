//! Who is subscribed, and how far each subscriber has got: the numbers an operator needs (live
//! subscribers, lag per subscription), kept in the process.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

/// Progress of one subscriber, updated by its task without locking.
#[derive(Debug, Default)]
pub struct Progress {
    /// Everything up to this position has been sent or filtered out.
    pub position: AtomicU64,
    /// Whether the subscriber is following the hub (true) or reading history (false).
    pub live: AtomicBool,
}

#[derive(Debug)]
struct Entry {
    name: Option<String>,
    progress: Arc<Progress>,
}

/// The subscribers of this process.
#[derive(Debug, Default)]
pub struct Registry {
    next_id: AtomicU64,
    entries: Mutex<HashMap<u64, Entry>>,
}

/// One subscriber as seen by an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriberStats {
    /// The durable subscription's name, if it is one.
    pub name: Option<String>,
    pub position: u64,
    pub live: bool,
    /// Events committed (as far as the hub knows) after the subscriber's position.
    pub lag: u64,
}

impl Registry {
    /// Registers a subscriber; it is removed when the returned guard drops.
    pub fn register(self: &Arc<Self>, name: Option<String>) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let progress = Arc::new(Progress::default());
        self.lock().insert(
            id,
            Entry {
                name,
                progress: progress.clone(),
            },
        );
        Registration {
            registry: self.clone(),
            id,
            progress,
        }
    }

    /// Every subscriber, with its lag behind `head`.
    pub fn snapshot(&self, head: u64) -> Vec<SubscriberStats> {
        self.lock()
            .values()
            .map(|entry| {
                let position = entry.progress.position.load(Ordering::Relaxed);
                SubscriberStats {
                    name: entry.name.clone(),
                    position,
                    live: entry.progress.live.load(Ordering::Relaxed),
                    lag: head.saturating_sub(position),
                }
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Keeps a subscriber registered while it lives.
pub struct Registration {
    registry: Arc<Registry>,
    id: u64,
    pub progress: Arc<Progress>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}
