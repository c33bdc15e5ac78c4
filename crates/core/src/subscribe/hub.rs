//! The hub: one LISTEN connection per process. On every commit notification it reads the new
//! events once and broadcasts them to every live subscriber, so database work grows with
//! wake-ups, not with subscribers. A lost LISTEN connection is reconnected, and what committed
//! meanwhile is read at once. Notifications are only wake-ups (their payload is not trusted: any
//! database user may NOTIFY); the head comes from `log_head`, which the hub also polls every
//! second, pinging the LISTEN connection, so a silent connection neither stalls delivery nor
//! stays (docs/ARCHITECTURE.md, "Bounds").

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgListener, PgPoolOptions},
};
use tokio::{
    sync::{broadcast, watch},
    task::JoinHandle,
};
use tracing::{debug, info, warn};

use super::registry::{Registry, SubscriberStats};
use crate::{
    error::{Error, Result},
    shutdown::{Tasks, stopped},
    store::{
        self,
        model::{Direction, RecordedEvent},
        reader::ReadCursor,
        upcasting::{Shape, Upcasting},
    },
};

/// The channel `highwater_append` notifies on commit, with the new head as payload.
pub const CHANNEL: &str = "highwater_appended";
/// The channel a trigger notifies when projections or their versions change state.
pub const PROJECTIONS_CHANNEL: &str = "highwater_projections";
/// Shown in `pg_stat_activity` for the hub's LISTEN connection.
pub const APPLICATION_NAME: &str = "highwater-hub";
/// How often the hub reads `log_head` without being told to: the safety net for notifications
/// that never arrive (a LISTEN connection that died without an error, a dropped route).
pub const HEAD_POLL: Duration = Duration::from_secs(1);
/// How long the LISTEN connection may take to answer the ping sent with each poll before it is
/// taken for dead (half-open) and replaced.
const LISTEN_PING_TIMEOUT: Duration = Duration::from_secs(5);
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Newly committed events, contiguous in position, as stored and through the upcasters (done
/// once here, before the fan-out).
pub type Batch = Arc<LiveBatch>;

pub struct LiveBatch {
    pub stored: Arc<[RecordedEvent]>,
    pub upcast: Upcast,
}

/// The batch through the upcasters.
pub enum Upcast {
    /// No upcaster reads any of its events.
    Same,
    Changed(Arc<[RecordedEvent]>),
    /// An upcaster failed: subscribers that read upcast events end with this error.
    Failed(String),
}

impl LiveBatch {
    /// The events in the given shape, or the upcasting's failure.
    pub fn events(&self, shape: Shape) -> Result<&[RecordedEvent]> {
        match (shape, &self.upcast) {
            (Shape::Stored, _) | (Shape::Upcast, Upcast::Same) => Ok(&self.stored),
            (Shape::Upcast, Upcast::Changed(events)) => Ok(events),
            (Shape::Upcast, Upcast::Failed(message)) => {
                Err(Error::FailedPrecondition(message.clone()))
            }
        }
    }
}

pub struct Hub {
    /// Every batch of newly committed events, in position order. A bounded ring shared by all
    /// live subscribers (no copy per subscriber); a receiver that falls behind by more than its
    /// capacity sees `Lagged` and goes back to reading history.
    batches: broadcast::Sender<Batch>,
    /// The last position broadcast.
    head: AtomicU64,
    /// The head, for tasks that wait for new commits without receiving the events (async
    /// projection workers).
    head_changes: watch::Sender<u64>,
    /// Counts projection catalog changes (and reconnections of the LISTEN connection, which
    /// may have missed some), for the projection supervisor, which waits on it when idle.
    projection_changes: watch::Sender<u64>,
    registry: Arc<Registry>,
    /// Live batches pass through it once, and it is reloaded on every catalog notification.
    upcasting: Arc<Upcasting>,
}

impl Hub {
    /// Connects the LISTEN connection (its own, outside the pool), reads the current head and
    /// starts following commits (a task of `tasks`) until shutdown.
    pub async fn start(
        pool: PgPool,
        options: &PgConnectOptions,
        registry: Arc<Registry>,
        upcasting: Arc<Upcasting>,
        live_buffer_batches: usize,
        tasks: &Tasks,
    ) -> Result<(Arc<Self>, JoinHandle<()>)> {
        let listen_pool = PgPoolOptions::new()
            .max_connections(1)
            .connect_lazy_with(options.clone().application_name(APPLICATION_NAME));
        let listener = listen(&listen_pool).await?;
        let head = store::head::position(&pool).await?;
        let (batches, _) = broadcast::channel(live_buffer_batches.max(1));
        let hub = Arc::new(Self {
            batches,
            head: AtomicU64::new(head),
            head_changes: watch::Sender::new(head),
            projection_changes: watch::Sender::new(0),
            registry,
            upcasting,
        });
        let listen_options = options.clone().application_name(APPLICATION_NAME);
        let task = tasks.spawn(
            "hub",
            hub.clone()
                .follow(pool, listen_options, listen_pool, listener, tasks.clone()),
        );
        Ok((hub, task))
    }

    /// Receives every batch broadcast from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Batch> {
        self.batches.subscribe()
    }

    /// Follows the head: changes whenever new commits are seen.
    pub fn head_watch(&self) -> watch::Receiver<u64> {
        self.head_changes.subscribe()
    }

    /// Changes whenever the projection catalog may have changed.
    pub fn projection_changes(&self) -> watch::Receiver<u64> {
        self.projection_changes.subscribe()
    }

    /// The upcasting of this process.
    pub fn upcasting(&self) -> &Arc<Upcasting> {
        &self.upcasting
    }

    async fn projections_changed(&self) {
        // Upcasters are in the catalog the notifications announce. A failed reload keeps the old
        // set until the next notification (the hub's reconnections count as one).
        if let Err(error) = self.upcasting.reload().await {
            warn!(%error, "cannot read the upcasters again");
        }
        self.projection_changes.send_modify(|count| *count += 1);
    }

    /// The last position broadcast.
    pub fn head(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Every subscriber of this process with its lag.
    pub fn subscribers(&self) -> Vec<SubscriberStats> {
        self.registry.snapshot(self.head())
    }

    /// Live receivers of the broadcast (subscribers in live mode).
    pub fn live_receivers(&self) -> usize {
        self.batches.receiver_count()
    }

    async fn follow(
        self: Arc<Self>,
        pool: PgPool,
        listen_options: PgConnectOptions,
        mut listen_pool: PgPool,
        mut listener: PgListener,
        tasks: Tasks,
    ) {
        let stop = tasks.stop();
        let mut poll = tokio::time::interval(HEAD_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut delay = RETRY_FIRST;
        // Events may have committed between reading the head and listening.
        let mut catch_up = true;
        loop {
            if std::mem::take(&mut catch_up) {
                if let Err(error) = self.read_new(&pool).await {
                    warn!(%error, "hub cannot read new events; retrying");
                    catch_up = true;
                    tokio::select! {
                        () = stopped(stop.clone()) => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(RETRY_MAX);
                    continue;
                }
                delay = RETRY_FIRST;
            }
            let received = tokio::select! {
                () = stopped(stop.clone()) => break,
                received = listener.try_recv() => received,
                _ = poll.tick() => {
                    // Read the head whether or not a notification came (first, so a silent
                    // LISTEN connection delays nothing by more than the poll), then check that
                    // the LISTEN connection still answers; a silent one is replaced, LISTENing
                    // again before what committed meanwhile is read.
                    if let Err(error) = self.read_new(&pool).await {
                        warn!(%error, "hub cannot read new events; retrying");
                    }
                    catch_up = true;
                    let ping = tokio::time::timeout(
                        LISTEN_PING_TIMEOUT,
                        sqlx::query("SELECT 1").execute(&mut listener),
                    )
                    .await;
                    if !matches!(ping, Ok(Ok(_))) {
                        warn!("hub LISTEN connection does not answer; replacing it");
                        crate::metrics::increment(&crate::metrics::RECORDED.hub_reconnects);
                        // A pool of its own: the silent connection still holds the old pool's
                        // one slot, and closing it could wait on the dead socket.
                        let fresh_pool = PgPoolOptions::new()
                            .max_connections(1)
                            .acquire_timeout(LISTEN_PING_TIMEOUT)
                            .connect_lazy_with(listen_options.clone());
                        match listen(&fresh_pool).await {
                            Ok(fresh) => {
                                let old = std::mem::replace(&mut listener, fresh);
                                let old_pool = std::mem::replace(&mut listen_pool, fresh_pool);
                                // Dropped aside, so that a hung UNLISTEN on the dead socket
                                // never holds up the hub; bounded, so it never holds up the
                                // shutdown either.
                                tasks.spawn("hub-listen-close", async move {
                                    drop(old);
                                    let _ = tokio::time::timeout(
                                        LISTEN_PING_TIMEOUT,
                                        old_pool.close(),
                                    )
                                    .await;
                                });
                            }
                            Err(error) => warn!(%error, "hub cannot LISTEN again yet"),
                        }
                        self.projections_changed().await;
                    }
                    continue;
                }
            };
            match received {
                // Only wake-ups: any database user may NOTIFY on the channels, so payloads are
                // not trusted (the head is read from log_head), and every notification already
                // received is taken at once, so a flood of them costs one read, not one each.
                Ok(Some(first)) => {
                    let mut projections = false;
                    let mut next = Some(first);
                    while let Some(notification) = next {
                        if notification.channel() == PROJECTIONS_CHANNEL {
                            projections = true;
                        } else {
                            catch_up = true;
                        }
                        next = listener.next_buffered();
                    }
                    if projections {
                        self.projections_changed().await;
                    }
                }
                Ok(None) => {
                    info!(
                        "hub LISTEN connection was lost and is reconnected; reading what committed meanwhile"
                    );
                    catch_up = true;
                    self.projections_changed().await;
                    crate::metrics::increment(&crate::metrics::RECORDED.hub_reconnects);
                }
                Err(error) => {
                    warn!(%error, retry_in_ms = delay.as_millis() as u64, "hub LISTEN connection failed");
                    tokio::select! {
                        () = stopped(stop.clone()) => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(RETRY_MAX);
                    catch_up = true;
                    self.projections_changed().await;
                }
            }
        }
        debug!("hub stopped");
    }

    /// Reads and broadcasts everything committed above the hub's head, up to the head stored in
    /// `log_head` (read first: what it counts has committed).
    async fn read_new(&self, pool: &PgPool) -> Result<()> {
        let target = store::head::position(pool).await?;
        if target <= self.head() {
            return Ok(());
        }
        if self.batches.receiver_count() == 0 {
            // Nobody is live: only the head moves. A subscriber that joins later reads everything
            // up to the database's head in its catch-up, after joining, so it misses nothing.
            self.head.fetch_max(target, Ordering::AcqRel);
            self.head_changes.send_replace(self.head());
            return Ok(());
        }
        let mut cursor = ReadCursor::all(pool.clone(), self.head(), Direction::Forwards, 0);
        while self.head() < target {
            let page = cursor.next_page().await?;
            let Some(last) = page.last().map(|event| event.position) else {
                // Everything up to a notified head has committed; what is missing below it was
                // erased by a hard delete since.
                if self.head() < target {
                    self.head.store(target, Ordering::Release);
                    self.head_changes.send_replace(target);
                }
                break;
            };
            // Publish then advance: a subscriber that reads the head after subscribing has
            // either this batch in its receiver or its events in the database.
            let stored: Arc<[RecordedEvent]> = page.into();
            let upcast = self.upcast(&stored).await;
            let _ = self.batches.send(Arc::new(LiveBatch { stored, upcast }));
            self.head.store(last, Ordering::Release);
            self.head_changes.send_replace(last);
        }
        Ok(())
    }
}

impl Hub {
    async fn upcast(&self, stored: &Arc<[RecordedEvent]>) -> Upcast {
        if !stored
            .iter()
            .any(|event| self.upcasting.reads(&event.event_type))
        {
            return Upcast::Same;
        }
        let mut events = stored.to_vec();
        match self.upcasting.apply(&mut events).await {
            Ok(()) => Upcast::Changed(events.into()),
            Err(error) => Upcast::Failed(error.to_string()),
        }
    }
}

/// A LISTEN connection on both channels.
async fn listen(listen_pool: &PgPool) -> Result<PgListener> {
    let mut listener = PgListener::connect_with(listen_pool).await?;
    listener.listen_all([CHANNEL, PROJECTIONS_CHANNEL]).await?;
    Ok(listener)
}
