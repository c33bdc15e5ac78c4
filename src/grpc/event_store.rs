//! `highwater.v1.EventStoreService`: appends and reads.

use crate::grpc::status::{IntoStatus, OrStatus, status};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::instrument;

use std::pin::Pin;

use tokio_stream::{Stream, StreamExt};

use super::{auth::Caller, convert};
use crate::services::ReadyCore;
use crate::{
    auth::Role,
    pb::{self, event_store_service_server::EventStoreService as EventStoreApi},
};
use highwater_core::{
    error::Error,
    shutdown::Tasks,
    store::{
        deletion::Deletion,
        model::Direction,
        reader::{Prefetch, ReadCursor},
        upcasting::Shape,
    },
    subscribe::{DurableAccess, SubscriptionMessage},
};

/// Read responses buffered ahead of a slow client, per read.
const READ_BUFFER: usize = 256;

pub struct EventStoreService {
    core: ReadyCore,
}

impl EventStoreService {
    pub fn new(core: ReadyCore) -> Self {
        Self { core }
    }
}

type ReadStream<T> = ReceiverStream<Result<T, Status>>;
type SubscribeStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl EventStoreApi for EventStoreService {
    #[instrument(skip_all, fields(stream = %request.get_ref().stream, events = request.get_ref().events.len()))]
    async fn append(
        &self,
        request: Request<pb::AppendRequest>,
    ) -> Result<Response<pb::AppendResponse>, Status> {
        let input = convert::append_input(request.into_inner()).or_status()?;
        let result = self
            .core
            .get()
            .or_status()?
            .store
            .append(input)
            .await
            .or_status()?;
        Ok(Response::new(convert::append_response(result)))
    }

    type ReadStreamStream = ReadStream<pb::ReadStreamResponse>;

    #[instrument(skip_all, fields(stream = %request.get_ref().stream, from_latest_snapshot = request.get_ref().from_latest_snapshot))]
    async fn read_stream(
        &self,
        request: Request<pb::ReadStreamRequest>,
    ) -> Result<Response<Self::ReadStreamStream>, Status> {
        let request = request.into_inner();
        let direction = convert::direction(request.direction).or_status()?;
        let core = self.core.get().or_status()?;
        let (snapshot, cursor) = if request.from_latest_snapshot {
            if direction != Direction::Forwards {
                return Err(Error::invalid(
                    "direction",
                    "a read from the latest snapshot goes forwards",
                ))
                .or_status();
            }
            core.store
                .load_stream(
                    request.stream,
                    request.from_revision,
                    request.max_count,
                    Shape::from_original(request.original),
                )
                .await
                .or_status()?
        } else {
            let cursor = core
                .store
                .read_stream(
                    request.stream,
                    request.from_revision,
                    direction,
                    request.max_count,
                    Shape::from_original(request.original),
                )
                .await
                .or_status()?;
            (None, cursor)
        };
        let first = snapshot.map(|snapshot| pb::ReadStreamResponse {
            event: None,
            snapshot: Some(convert::snapshot(snapshot)),
        });
        Ok(Response::new(stream_pages(
            &core.tasks,
            first,
            cursor,
            |event| pb::ReadStreamResponse {
                event: Some(event),
                snapshot: None,
            },
        )))
    }

    type ReadAllStream = ReadStream<pb::ReadAllResponse>;

    #[instrument(skip_all, fields(after_position = request.get_ref().after_position))]
    async fn read_all(
        &self,
        request: Request<pb::ReadAllRequest>,
    ) -> Result<Response<Self::ReadAllStream>, Status> {
        let request = request.into_inner();
        let direction = convert::direction(request.direction).or_status()?;
        let core = self.core.get().or_status()?;
        let cursor = core.store.read_all(
            request.after_position,
            direction,
            request.max_count,
            Shape::from_original(request.original),
        );
        Ok(Response::new(stream_pages(
            &core.tasks,
            None,
            cursor,
            |event| pb::ReadAllResponse { event: Some(event) },
        )))
    }

    type SubscribeAllStream = SubscribeStream<pb::SubscribeAllResponse>;

    #[instrument(skip_all, fields(start = ?request.get_ref().start))]
    async fn subscribe_all(
        &self,
        request: Request<pb::SubscribeAllRequest>,
    ) -> Result<Response<Self::SubscribeAllStream>, Status> {
        // Creating a durable subscription stores a row until it is deleted: a write, like
        // saving its checkpoint. A read token may resume existing ones.
        let durable = match request.extensions().get::<Caller>() {
            Some(caller) if caller.role < Role::Write => DurableAccess::ResumeOnly,
            _ => DurableAccess::Create,
        };
        let request = request.into_inner();
        let (start, filter) = convert::subscribe_all(&request);
        let subscription = self
            .core
            .get()
            .or_status()?
            .subscriptions
            .subscribe_all(
                start,
                filter,
                u64::from(request.checkpoint_interval),
                durable,
                Shape::from_original(request.original),
            )
            .await
            .or_status()?;
        Ok(Response::new(subscription_stream(
            subscription,
            convert::subscribe_all_response,
        )))
    }

    type SubscribeStreamStream = SubscribeStream<pb::SubscribeStreamResponse>;

    #[instrument(skip_all, fields(stream = %request.get_ref().stream))]
    async fn subscribe_stream(
        &self,
        request: Request<pb::SubscribeStreamRequest>,
    ) -> Result<Response<Self::SubscribeStreamStream>, Status> {
        let request = request.into_inner();
        let start = convert::stream_start(&request);
        let subscription = self
            .core
            .get()
            .or_status()?
            .subscriptions
            .subscribe_stream(
                request.stream,
                start,
                Shape::from_original(request.original),
            )
            .await
            .or_status()?;
        Ok(Response::new(subscription_stream(
            subscription,
            convert::subscribe_stream_response,
        )))
    }

    #[instrument(skip_all, fields(stream = %request.get_ref().stream, revision = request.get_ref().revision))]
    async fn save_snapshot(
        &self,
        request: Request<pb::SaveSnapshotRequest>,
    ) -> Result<Response<pb::SaveSnapshotResponse>, Status> {
        let input = convert::snapshot_input(request.into_inner());
        let saved = self
            .core
            .get()
            .or_status()?
            .store
            .save_snapshot(input)
            .await
            .or_status()?;
        Ok(Response::new(pb::SaveSnapshotResponse {
            snapshot: Some(convert::snapshot(saved)),
        }))
    }

    #[instrument(skip_all, fields(subscription = %request.get_ref().subscription, position = request.get_ref().position))]
    async fn save_checkpoint(
        &self,
        request: Request<pb::SaveCheckpointRequest>,
    ) -> Result<Response<pb::SaveCheckpointResponse>, Status> {
        let request = request.into_inner();
        let position = self
            .core
            .get()
            .or_status()?
            .subscriptions
            .save_checkpoint(request.subscription, request.position)
            .await
            .or_status()?;
        Ok(Response::new(pb::SaveCheckpointResponse { position }))
    }

    #[instrument(skip_all)]
    async fn list_subscriptions(
        &self,
        _request: Request<pb::ListSubscriptionsRequest>,
    ) -> Result<Response<pb::ListSubscriptionsResponse>, Status> {
        let subscriptions = self
            .core
            .get()
            .or_status()?
            .subscriptions
            .list()
            .await
            .or_status()?;
        Ok(Response::new(pb::ListSubscriptionsResponse {
            subscriptions: subscriptions
                .into_iter()
                .map(convert::subscription_info)
                .collect(),
        }))
    }

    #[instrument(skip_all, fields(subscription = %request.get_ref().subscription))]
    async fn delete_subscription(
        &self,
        request: Request<pb::DeleteSubscriptionRequest>,
    ) -> Result<Response<pb::DeleteSubscriptionResponse>, Status> {
        self.core
            .get()
            .or_status()?
            .subscriptions
            .delete(request.into_inner().subscription)
            .await
            .or_status()?;
        Ok(Response::new(pb::DeleteSubscriptionResponse {}))
    }

    #[instrument(skip_all, fields(stream = %request.get_ref().stream))]
    async fn delete_stream(
        &self,
        request: Request<pb::DeleteStreamRequest>,
    ) -> Result<Response<pb::DeleteStreamResponse>, Status> {
        let request = request.into_inner();
        let expected = convert::delete_stream_expected(&request).or_status()?;
        let result = self
            .core
            .get()
            .or_status()?
            .store
            .delete_stream(request.stream, expected, Deletion::Soft)
            .await
            .or_status()?;
        Ok(Response::new(pb::DeleteStreamResponse {
            deleted_revision: result.deleted_revision,
        }))
    }
}

/// Converts a core subscription to the response stream; dropping it (the client went away)
/// drops the receiver, which ends the subscriber task at once.
fn subscription_stream<T: Send + 'static>(
    subscription: highwater_core::subscribe::Subscription,
    respond: fn(SubscriptionMessage) -> T,
) -> SubscribeStream<T> {
    Box::pin(
        ReceiverStream::new(subscription).map(move |message| message.map(respond).map_err(status)),
    )
}

/// Streams `first` (if any) and then a cursor's pages to the client; stops as soon as the
/// client goes away.
fn stream_pages<T: Send + 'static>(
    tasks: &Tasks,
    first: Option<T>,
    cursor: ReadCursor,
    respond: fn(pb::RecordedEvent) -> T,
) -> ReadStream<T> {
    let (sender, receiver) = mpsc::channel(READ_BUFFER);
    let read_ahead = tasks.clone();
    tasks.spawn("read-stream", async move {
        if let Some(first) = first
            && sender.send(Ok(first)).await.is_err()
        {
            return;
        }
        let mut cursor = Prefetch::new(cursor, &read_ahead);
        loop {
            let page = match cursor.next_page().await {
                Ok(page) if page.is_empty() => return,
                Ok(page) => page,
                Err(error) => {
                    let _ = sender.send(Err(error.into_status())).await;
                    return;
                }
            };
            for event in page {
                let response = respond(convert::recorded_event(event));
                if sender.send(Ok(response)).await.is_err() {
                    return;
                }
            }
        }
    });
    ReceiverStream::new(receiver)
}
