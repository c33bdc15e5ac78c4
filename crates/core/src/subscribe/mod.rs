//! Subscriptions (docs/ARCHITECTURE.md, "Subscriptions"): one hub per process turns commit notifications into
//! batches of new events; each subscriber reads history from the database, then follows the hub.

pub mod checkpoints;
pub mod filter;
pub mod hub;
pub mod registry;
pub mod subscriber;

use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::{Semaphore, mpsc};

use crate::{
    error::{Error, Result},
    shutdown::Tasks,
    store::{model::RecordedEvent, upcasting::Shape, validate},
};
pub use filter::Filter;
use hub::Hub;
use subscriber::{Follower, Target};

/// Messages queued for one subscriber's client before the subscriber waits for it.
const OUTBOX_CAPACITY: usize = 256;
/// What a caller may do with a durable subscription named in `SubscribeAll`. Each durable
/// subscription is a row kept until deleted, so creating one is a write (as saving its
/// checkpoint is); resuming an existing one is a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DurableAccess {
    /// Resume it, creating it at the start of the log when it does not exist.
    Create,
    /// Resume it only if it exists (PERMISSION_DENIED otherwise).
    ResumeOnly,
}

/// The default checkpoint interval, in scanned events.
pub const DEFAULT_CHECKPOINT_INTERVAL: u64 = 1000;

/// What a subscriber sends its client.
#[derive(Debug, Clone)]
pub enum SubscriptionMessage {
    Event(RecordedEvent),
    /// Everything up to this position has been sent or filtered out.
    Checkpoint(u64),
    /// Switched to live delivery.
    CaughtUp(u64),
    /// Moved back to history reads.
    FellBehind(u64),
}

/// Where a subscription to the whole log starts.
#[derive(Debug, Clone)]
pub enum AllStart {
    After(u64),
    End,
    Durable(String),
}

/// Where a subscription to one stream starts.
#[derive(Debug, Clone, Copy)]
pub enum StreamStart {
    From(u64),
    End,
}

/// The subscription service of the core. Cheap to clone.
#[derive(Clone)]
pub struct Subscriptions {
    pool: PgPool,
    hub: Arc<Hub>,
    /// The owner of the subscriber tasks; its stop signal ends every subscription.
    tasks: Tasks,
    /// One permit per open subscription, at most --max-subscribers; a subscription beyond them
    /// is refused with RESOURCE_EXHAUSTED rather than slowing every other one down.
    slots: Arc<Semaphore>,
    max_subscribers: usize,
}

/// The receiving end of a subscription: dropping it ends the subscriber at once.
pub type Subscription = mpsc::Receiver<Result<SubscriptionMessage>>;

impl Subscriptions {
    pub fn new(pool: PgPool, hub: Arc<Hub>, tasks: Tasks, max_subscribers: usize) -> Self {
        Self {
            pool,
            hub,
            tasks,
            slots: Arc::new(Semaphore::new(max_subscribers)),
            max_subscribers,
        }
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    pub async fn subscribe_all(
        &self,
        start: AllStart,
        filter: Filter,
        checkpoint_interval: u64,
        durable: DurableAccess,
        shape: Shape,
    ) -> Result<Subscription> {
        let (name, after) = match start {
            AllStart::After(position) => {
                checkpoints::check_within_log(&self.pool, "after_position", position).await?;
                (None, Some(position))
            }
            AllStart::End => (None, None),
            AllStart::Durable(name) => {
                check_name("subscription", &name)?;
                let position = match durable {
                    DurableAccess::Create => checkpoints::open(&self.pool, &name).await?,
                    DurableAccess::ResumeOnly => checkpoints::existing(&self.pool, &name).await?,
                };
                (Some(name), Some(position))
            }
        };
        let interval = if checkpoint_interval == 0 {
            DEFAULT_CHECKPOINT_INTERVAL
        } else {
            checkpoint_interval
        };
        let (follower, subscription) = self.follower(
            Target::All {
                filter,
                checkpoint_interval: interval,
            },
            name,
            shape,
        )?;
        self.tasks.spawn("subscriber", follower.start_all(after));
        Ok(subscription)
    }

    pub async fn subscribe_stream(
        &self,
        stream: String,
        start: StreamStart,
        shape: Shape,
    ) -> Result<Subscription> {
        check_name("stream", &stream)?;
        let from = match start {
            StreamStart::From(revision) => Some(revision),
            StreamStart::End => None,
        };
        let (follower, subscription) = self.follower(Target::Stream { stream }, None, shape)?;
        self.tasks.spawn("subscriber", follower.start_stream(from));
        Ok(subscription)
    }

    fn follower(
        &self,
        target: Target,
        name: Option<String>,
        shape: Shape,
    ) -> Result<(Follower, Subscription)> {
        let slot = self.slots.clone().try_acquire_owned().map_err(|_| {
            Error::ResourceExhausted(format!(
                "this server already serves its maximum of {} subscriptions (--max-subscribers)",
                self.max_subscribers
            ))
        })?;
        let (outbox, subscription) = mpsc::channel(OUTBOX_CAPACITY);
        let follower = Follower::new(
            self.pool.clone(),
            self.hub.clone(),
            target,
            name,
            outbox,
            self.tasks.clone(),
            slot,
        )
        .shaped(shape);
        Ok((follower, subscription))
    }

    pub async fn save_checkpoint(&self, name: String, position: u64) -> Result<u64> {
        check_name("subscription", &name)?;
        checkpoints::save(&self.pool, &name, position).await
    }

    pub async fn list(&self) -> Result<Vec<checkpoints::DurableSubscription>> {
        checkpoints::list(&self.pool).await
    }

    pub async fn delete(&self, name: String) -> Result<()> {
        check_name("subscription", &name)?;
        checkpoints::delete(&self.pool, &name).await
    }
}

fn check_name(field: &str, name: &str) -> Result<()> {
    let mut violations = Vec::new();
    validate::check_stream_name(field, name, &mut violations);
    if violations.is_empty() {
        Ok(())
    } else {
        Err(Error::InvalidArgument(violations))
    }
}
