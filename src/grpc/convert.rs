//! Conversions between protobuf messages and core types. No rules live here beyond decoding.

use crate::pb;
use highwater_core::subscribe::{
    AllStart, Filter, StreamStart, SubscriptionMessage, checkpoints::DurableSubscription,
};
use highwater_core::{
    error::{Error, Result},
    store::model::{
        AppendInput, AppendResult, Direction, EventInput, ExpectedRevision, RecordedEvent,
    },
    store::snapshots::{Snapshot, SnapshotInput},
};

/// The `expected` oneof, which append and both deletes spell the same way.
macro_rules! expected {
    ($oneof:path, $value:expr) => {{
        use $oneof as Expected;
        match $value {
            None => Ok(ExpectedRevision::Any),
            Some(Expected::Revision(revision)) => Ok(ExpectedRevision::Exact(revision)),
            Some(Expected::State(state)) => expected_state(state),
        }
    }};
}

fn expected_state(state: i32) -> Result<ExpectedRevision> {
    match pb::ExpectedState::try_from(state) {
        Ok(pb::ExpectedState::Unspecified | pb::ExpectedState::Any) => Ok(ExpectedRevision::Any),
        Ok(pb::ExpectedState::NoStream) => Ok(ExpectedRevision::NoStream),
        Ok(pb::ExpectedState::StreamExists) => Ok(ExpectedRevision::StreamExists),
        Err(_) => Err(Error::invalid(
            "state",
            format!("unknown expected state {state}"),
        )),
    }
}

pub fn delete_stream_expected(request: &pb::DeleteStreamRequest) -> Result<ExpectedRevision> {
    expected!(pb::delete_stream_request::Expected, request.expected)
}

pub fn hard_delete_stream_expected(
    request: &pb::HardDeleteStreamRequest,
) -> Result<ExpectedRevision> {
    expected!(pb::hard_delete_stream_request::Expected, request.expected)
}

pub fn append_input(request: pb::AppendRequest) -> Result<AppendInput> {
    let expected = expected!(pb::append_request::Expected, request.expected)?;
    let events = request
        .events
        .into_iter()
        .map(|event| EventInput {
            id: event.id,
            event_type: event.r#type,
            data: event.data,
            content_type: event.content_type,
            metadata: event.metadata,
        })
        .collect();
    Ok(AppendInput {
        stream: request.stream,
        expected,
        events,
    })
}

pub fn append_response(result: AppendResult) -> pb::AppendResponse {
    pb::AppendResponse {
        first_revision: result.first_revision,
        last_revision: result.last_revision,
        first_position: result.first_position,
        last_position: result.last_position,
    }
}

pub fn direction(value: i32) -> Result<Direction> {
    match pb::Direction::try_from(value) {
        Ok(pb::Direction::Unspecified | pb::Direction::Forwards) => Ok(Direction::Forwards),
        Ok(pb::Direction::Backwards) => Ok(Direction::Backwards),
        Err(_) => Err(Error::invalid(
            "direction",
            format!("unknown direction {value}"),
        )),
    }
}

pub fn snapshot_input(request: pb::SaveSnapshotRequest) -> SnapshotInput {
    SnapshotInput {
        stream: request.stream,
        revision: request.revision,
        snapshot_type: request.r#type,
        data: request.data,
        content_type: request.content_type,
    }
}

pub fn snapshot(snapshot: Snapshot) -> pb::Snapshot {
    pb::Snapshot {
        stream: snapshot.stream,
        revision: snapshot.revision,
        r#type: snapshot.snapshot_type,
        data: snapshot.data,
        content_type: snapshot.content_type,
        saved_at: Some(prost_types::Timestamp::from(snapshot.saved_at)),
    }
}

pub fn recorded_event(event: RecordedEvent) -> pb::RecordedEvent {
    pb::RecordedEvent {
        id: event.id.to_string(),
        r#type: event.event_type,
        stream: event.stream,
        revision: event.revision,
        position: event.position,
        data: event.data,
        content_type: event.content_type,
        metadata: event.metadata,
        recorded_at: Some(prost_types::Timestamp::from(event.recorded_at)),
    }
}

pub fn subscribe_all(request: &pb::SubscribeAllRequest) -> (AllStart, Filter) {
    let start = match &request.start {
        None => AllStart::After(0),
        Some(pb::subscribe_all_request::Start::AfterPosition(position)) => {
            AllStart::After(*position)
        }
        Some(pb::subscribe_all_request::Start::End(())) => AllStart::End,
        Some(pb::subscribe_all_request::Start::Subscription(name)) => {
            AllStart::Durable(name.clone())
        }
    };
    let filter = request
        .filter
        .as_ref()
        .map(|filter| Filter {
            stream_prefixes: filter.stream_prefixes.clone(),
            event_types: filter.event_types.clone(),
        })
        .unwrap_or_default();
    (start, filter)
}

pub fn stream_start(request: &pb::SubscribeStreamRequest) -> StreamStart {
    match request.start {
        None => StreamStart::From(0),
        Some(pb::subscribe_stream_request::Start::FromRevision(revision)) => {
            StreamStart::From(revision)
        }
        Some(pb::subscribe_stream_request::Start::End(())) => StreamStart::End,
    }
}

/// SubscribeAll and SubscribeStream answer with distinct messages of the same content (one
/// response type per RPC, as buf's lint rules ask); one conversion is written for both.
macro_rules! subscription_response {
    ($function:ident, $response:ident, $module:ident) => {
        pub fn $function(message: SubscriptionMessage) -> pb::$response {
            use pb::$module::Content;
            let content = match message {
                SubscriptionMessage::Event(event) => Content::Event(recorded_event(event)),
                SubscriptionMessage::Checkpoint(position) => {
                    Content::Checkpoint(pb::Checkpoint { position })
                }
                SubscriptionMessage::CaughtUp(position) => {
                    Content::CaughtUp(pb::CaughtUp { position })
                }
                SubscriptionMessage::FellBehind(position) => {
                    Content::FellBehind(pb::FellBehind { position })
                }
            };
            pb::$response {
                content: Some(content),
            }
        }
    };
}

subscription_response!(
    subscribe_all_response,
    SubscribeAllResponse,
    subscribe_all_response
);
subscription_response!(
    subscribe_stream_response,
    SubscribeStreamResponse,
    subscribe_stream_response
);

pub fn subscription_info(subscription: DurableSubscription) -> pb::SubscriptionInfo {
    pb::SubscriptionInfo {
        name: subscription.name,
        position: subscription.position,
        lag: subscription.lag,
        lag_seconds: subscription.lag_seconds,
        updated_at: Some(prost_types::Timestamp::from(subscription.updated_at)),
    }
}
