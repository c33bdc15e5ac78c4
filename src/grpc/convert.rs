//! Conversions between protobuf messages and core types. No rules live here beyond decoding.

use crate::{
    error::{Error, Result},
    pb,
    store::model::{
        AppendInput, AppendResult, Direction, EventInput, ExpectedRevision, RecordedEvent,
    },
};

pub fn append_input(request: pb::AppendRequest) -> Result<AppendInput> {
    let expected = match request.expected {
        None => ExpectedRevision::Any,
        Some(pb::append_request::Expected::Revision(revision)) => ExpectedRevision::Exact(revision),
        Some(pb::append_request::Expected::State(state)) => {
            match pb::ExpectedState::try_from(state) {
                Ok(pb::ExpectedState::Any) => ExpectedRevision::Any,
                Ok(pb::ExpectedState::NoStream) => ExpectedRevision::NoStream,
                Ok(pb::ExpectedState::StreamExists) => ExpectedRevision::StreamExists,
                Err(_) => {
                    return Err(Error::invalid(
                        "state",
                        format!("unknown expected state {state}"),
                    ));
                }
            }
        }
    };
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
        Ok(pb::Direction::Forwards) => Ok(Direction::Forwards),
        Ok(pb::Direction::Backwards) => Ok(Direction::Backwards),
        Err(_) => Err(Error::invalid(
            "direction",
            format!("unknown direction {value}"),
        )),
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
