//! One subscriber: history from the database (catch-up), then live batches from the hub, back to
//! history when it cannot keep up. It ends when its client goes away or the server stops.
//!
//! No gap, no duplicate: the subscriber joins the hub's broadcast *before* each catch-up, and
//! reads history until the database has nothing more. Every event the hub broadcasts after the
//! join is in the receiver; every event broadcast before it was committed before the catch-up
//! read, so the catch-up read has it. Live events at or below the subscriber's position are
//! duplicates of the catch-up and are dropped.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use sqlx::PgPool;
use tokio::sync::{OwnedSemaphorePermit, broadcast::error::RecvError, mpsc, watch};

use super::{Filter, SubscriptionMessage, hub::Hub, registry::Registration};
use crate::{
    error::{Error, Result},
    shutdown::{Tasks, stopped},
    store::{
        self,
        model::{Direction, RecordedEvent},
        reader::{Prefetch, ReadCursor},
        upcasting::Shape,
    },
};

/// What a subscriber follows.
#[derive(Debug, Clone)]
pub enum Target {
    All {
        filter: Filter,
        checkpoint_interval: u64,
    },
    Stream {
        stream: String,
    },
}

/// The client went away (or the server is stopping): the subscriber ends.
struct Gone;

pub struct Follower {
    pool: PgPool,
    hub: Arc<Hub>,
    target: Target,
    /// Everything up to this position has been sent or filtered out.
    position: u64,
    /// The next revision to deliver (stream subscriptions).
    next_revision: u64,
    /// Events scanned since the last checkpoint message.
    scanned: u64,
    /// Whether events were filtered out since the last message the client got.
    hidden: bool,
    /// Messages for the client; bounded, so a slow client holds the subscriber back (and, when
    /// live, makes it fall behind the hub instead of buffering without limit).
    outbox: mpsc::Sender<Result<SubscriptionMessage>>,
    /// Becomes true when the server shuts down.
    stop: watch::Receiver<bool>,
    /// The owner of this subscriber's reads ahead.
    tasks: Tasks,
    registration: Registration,
    /// Whether events come through the upcasters or as stored.
    shape: Shape,
    /// This subscription's place under --max-subscribers, given back when it ends.
    _slot: OwnedSemaphorePermit,
}

impl Follower {
    pub fn new(
        pool: PgPool,
        hub: Arc<Hub>,
        target: Target,
        name: Option<String>,
        outbox: mpsc::Sender<Result<SubscriptionMessage>>,
        tasks: Tasks,
        slot: OwnedSemaphorePermit,
    ) -> Self {
        let registration = hub.registry().register(name);
        Self {
            pool,
            hub,
            target,
            position: 0,
            next_revision: 0,
            scanned: 0,
            hidden: false,
            outbox,
            stop: tasks.stop(),
            tasks,
            registration,
            shape: Shape::default(),
            _slot: slot,
        }
    }

    /// Events through the upcasters (the default) or as stored.
    pub fn shaped(self, shape: Shape) -> Self {
        Self { shape, ..self }
    }

    /// Follows the log after `after` (None: after the current head).
    pub async fn start_all(mut self, after: Option<u64>) {
        let live = self.hub.subscribe();
        let start = match after {
            Some(position) => Ok(position),
            None => store::head::position(&self.pool).await,
        };
        match start {
            Ok(position) => {
                self.position = position;
                self.run(live).await;
            }
            Err(error) => {
                let _ = self.outbox.send(Err(error)).await;
            }
        }
    }

    /// Follows a stream from revision `from` (None: after its current last event).
    pub async fn start_stream(mut self, from: Option<u64>) {
        let live = self.hub.subscribe();
        let Target::Stream { stream } = &self.target else {
            return;
        };
        let start = match from {
            Some(revision) => Ok(revision),
            None => {
                sqlx::query_scalar::<_, i64>("SELECT revision + 1 FROM streams WHERE stream = $1")
                    .bind(stream.as_str())
                    .fetch_optional(&self.pool)
                    .await
                    .map(|next| next.unwrap_or(0) as u64)
                    .map_err(Error::from)
            }
        };
        match start {
            Ok(revision) => {
                self.next_revision = revision;
                self.run(live).await;
            }
            Err(error) => {
                let _ = self.outbox.send(Err(error)).await;
            }
        }
    }

    async fn run(mut self, mut live: tokio::sync::broadcast::Receiver<super::hub::Batch>) {
        loop {
            if self.catch_up().await.is_err() {
                return;
            }
            if self
                .send(SubscriptionMessage::CaughtUp(self.position))
                .await
                .is_err()
            {
                return;
            }
            self.registration
                .progress
                .live
                .store(true, Ordering::Relaxed);
            match self.follow_live(&mut live).await {
                Ok(()) => {}
                Err(Gone) => return,
            }
            // Fell behind: rejoin the broadcast first, then read history again.
            self.registration
                .progress
                .live
                .store(false, Ordering::Relaxed);
            live = self.hub.subscribe();
            if self
                .send(SubscriptionMessage::FellBehind(self.position))
                .await
                .is_err()
            {
                return;
            }
        }
    }

    /// Reads history until the database has nothing more.
    async fn catch_up(&mut self) -> Result<(), Gone> {
        let cursor = match &self.target {
            Target::All { .. } => {
                ReadCursor::all(self.pool.clone(), self.position, Direction::Forwards, 0)
            }
            Target::Stream { stream } => ReadCursor::stream(
                self.pool.clone(),
                stream.clone(),
                self.next_revision,
                Direction::Forwards,
                0,
            ),
        };
        let cursor = cursor.upcast_with(self.shape.upcasting(self.hub.upcasting()));
        let mut cursor = Prefetch::new(cursor, &self.tasks);
        loop {
            let page = tokio::select! {
                _ = self.outbox.closed() => return Err(Gone),
                () = stopped(self.stop.clone()) => return self.shutting_down().await,
                page = cursor.next_page() => page,
            };
            let page = match page {
                Ok(page) if page.is_empty() => return Ok(()),
                Ok(page) => page,
                Err(error) => {
                    let _ = self.outbox.send(Err(error)).await;
                    return Err(Gone);
                }
            };
            for event in page {
                if self.accept(&event) {
                    self.send(SubscriptionMessage::Event(event)).await?;
                }
                self.checkpoint_if_due().await?;
            }
            self.checkpoint_if_hidden().await?;
        }
    }

    /// Delivers live batches; returns Ok when the subscriber fell behind.
    async fn follow_live(
        &mut self,
        live: &mut tokio::sync::broadcast::Receiver<super::hub::Batch>,
    ) -> Result<(), Gone> {
        loop {
            let batch = tokio::select! {
                _ = self.outbox.closed() => return Err(Gone),
                () = stopped(self.stop.clone()) => return self.shutting_down().await,
                batch = live.recv() => batch,
            };
            match batch {
                Ok(batch) => {
                    let events = match batch.events(self.shape) {
                        Ok(events) => events,
                        Err(error) => {
                            let _ = self.outbox.send(Err(error)).await;
                            return Err(Gone);
                        }
                    };
                    for event in events {
                        if self.accept(event) {
                            self.send(SubscriptionMessage::Event(event.clone())).await?;
                        }
                        self.checkpoint_if_due().await?;
                    }
                    self.checkpoint_if_hidden().await?;
                }
                Err(RecvError::Lagged(_)) => return Ok(()),
                Err(RecvError::Closed) => return self.shutting_down().await,
            }
        }
    }

    /// Moves the position past `event`; true if the client should get it.
    fn accept(&mut self, event: &RecordedEvent) -> bool {
        match &self.target {
            Target::All { filter, .. } => {
                if event.position <= self.position {
                    return false; // already delivered by the catch-up
                }
                self.position = event.position;
                self.scanned += 1;
                let matches = filter.matches(event);
                self.hidden |= !matches;
                self.registration
                    .progress
                    .position
                    .store(self.position, Ordering::Relaxed);
                matches
            }
            Target::Stream { stream } => {
                if event.stream != *stream || event.revision < self.next_revision {
                    return false;
                }
                self.next_revision = event.revision + 1;
                self.position = event.position;
                self.registration
                    .progress
                    .position
                    .store(self.position, Ordering::Relaxed);
                true
            }
        }
    }

    async fn checkpoint_if_due(&mut self) -> Result<(), Gone> {
        if let Target::All {
            checkpoint_interval,
            ..
        } = self.target
            && self.scanned >= checkpoint_interval
        {
            return self.checkpoint().await;
        }
        Ok(())
    }

    /// A filtered scan moved on: tell the client, so its checkpoint advances too.
    async fn checkpoint_if_hidden(&mut self) -> Result<(), Gone> {
        if self.hidden {
            self.checkpoint().await
        } else {
            Ok(())
        }
    }

    async fn checkpoint(&mut self) -> Result<(), Gone> {
        self.scanned = 0;
        self.hidden = false;
        self.send(SubscriptionMessage::Checkpoint(self.position))
            .await
    }

    async fn send(&mut self, message: SubscriptionMessage) -> Result<(), Gone> {
        if matches!(message, SubscriptionMessage::Event(_)) {
            self.hidden = false;
        }
        tokio::select! {
            sent = self.outbox.send(Ok(message)) => sent.map_err(|_| Gone),
            () = stopped(self.stop.clone()) => self.shutting_down().await,
        }
    }

    /// Ends the subscription with UNAVAILABLE, so the client reconnects (to another server).
    async fn shutting_down(&self) -> Result<(), Gone> {
        let message = Err(Error::Unavailable("server is shutting down".into()));
        let _ = tokio::time::timeout(Duration::from_secs(1), self.outbox.send(message)).await;
        Err(Gone)
    }
}
