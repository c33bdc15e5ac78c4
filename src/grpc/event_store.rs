//! `highwater.v1.EventStore`: appends and reads.

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::instrument;

use super::{ReadyStore, convert};
use crate::{
    pb::{self, event_store_server::EventStore},
    store::reader::ReadCursor,
};

/// Read responses buffered ahead of a slow client, per read.
const READ_BUFFER: usize = 256;

pub struct EventStoreService {
    store: ReadyStore,
}

impl EventStoreService {
    pub fn new(store: ReadyStore) -> Self {
        Self { store }
    }
}

type ReadStream = ReceiverStream<Result<pb::ReadResponse, Status>>;

#[tonic::async_trait]
impl EventStore for EventStoreService {
    #[instrument(skip_all, fields(stream = %request.get_ref().stream, events = request.get_ref().events.len()))]
    async fn append(
        &self,
        request: Request<pb::AppendRequest>,
    ) -> Result<Response<pb::AppendResponse>, Status> {
        let input = convert::append_input(request.into_inner())?;
        let result = self.store.get()?.append(input).await?;
        Ok(Response::new(convert::append_response(result)))
    }

    type ReadStreamStream = ReadStream;

    #[instrument(skip_all, fields(stream = %request.get_ref().stream))]
    async fn read_stream(
        &self,
        request: Request<pb::ReadStreamRequest>,
    ) -> Result<Response<Self::ReadStreamStream>, Status> {
        let request = request.into_inner();
        let direction = convert::direction(request.direction)?;
        let cursor = self
            .store
            .get()?
            .read_stream(
                request.stream,
                request.from_revision,
                direction,
                request.max_count,
            )
            .await?;
        Ok(Response::new(stream_pages(cursor)))
    }

    type ReadAllStream = ReadStream;

    #[instrument(skip_all, fields(after_position = request.get_ref().after_position))]
    async fn read_all(
        &self,
        request: Request<pb::ReadAllRequest>,
    ) -> Result<Response<Self::ReadAllStream>, Status> {
        let request = request.into_inner();
        let direction = convert::direction(request.direction)?;
        let cursor =
            self.store
                .get()?
                .read_all(request.after_position, direction, request.max_count);
        Ok(Response::new(stream_pages(cursor)))
    }
}

/// Streams a cursor's pages to the client; stops as soon as the client goes away.
fn stream_pages(mut cursor: ReadCursor) -> ReadStream {
    let (sender, receiver) = mpsc::channel(READ_BUFFER);
    tokio::spawn(async move {
        loop {
            let page = match cursor.next_page().await {
                Ok(page) if page.is_empty() => return,
                Ok(page) => page,
                Err(error) => {
                    let _ = sender.send(Err(error.into())).await;
                    return;
                }
            };
            for event in page {
                let response = pb::ReadResponse {
                    event: Some(convert::recorded_event(event)),
                };
                if sender.send(Ok(response)).await.is_err() {
                    return;
                }
            }
        }
    });
    ReceiverStream::new(receiver)
}
