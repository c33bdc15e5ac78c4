//! Input rules for appends: every violation is reported with the field it concerns, and a
//! request with any violation writes nothing.

use std::collections::HashMap;

use uuid::Uuid;

use super::model::{AppendInput, AppendRequest, DEFAULT_CONTENT_TYPE, NewEvent};
use crate::error::{Error, FieldViolation, Result};

/// The longest stream name or event type, in bytes.
pub const MAX_NAME_BYTES: usize = 255;

/// Size limits, set by flags.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The largest event: data, type and metadata, in bytes.
    pub max_event_bytes: usize,
    /// The largest append request: the sum of its events' sizes, in bytes.
    pub max_append_bytes: usize,
    /// The most events in one append request. It bounds the time an append (or its resend)
    /// holds the log's lock, which every appender waits for (docs/ARCHITECTURE.md, "Bounds").
    pub max_append_events: usize,
    /// Snapshots kept per stream: saving one more deletes the oldest.
    pub snapshots_kept: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_event_bytes: 1024 * 1024,
            max_append_bytes: 16 * 1024 * 1024,
            max_append_events: 10_000,
            snapshots_kept: 3,
        }
    }
}

/// Checks a stream name: 1 to 255 bytes, no control characters.
pub fn check_stream_name(field: &str, stream: &str, violations: &mut Vec<FieldViolation>) {
    if let Some(problem) = name_problem(stream) {
        violations.push(FieldViolation::new(field, problem));
    }
}

fn name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        Some("must not be empty".into())
    } else if name.len() > MAX_NAME_BYTES {
        Some(format!(
            "must be at most {MAX_NAME_BYTES} bytes, got {}",
            name.len()
        ))
    } else if name.chars().any(char::is_control) {
        Some("must not contain control characters".into())
    } else {
        None
    }
}

/// Checks a content type: at most `MAX_NAME_BYTES` of printable ASCII. ASCII only, so that "is
/// this JSON" reads the same here and in SQL (whose lower() and trim() follow the database's
/// locale for anything else).
pub fn check_content_type(field: &str, content_type: &str, violations: &mut Vec<FieldViolation>) {
    if content_type.len() > MAX_NAME_BYTES
        || !content_type
            .bytes()
            .all(|b| b.is_ascii_graphic() || b == b' ')
    {
        violations.push(FieldViolation::new(
            field,
            format!("must be at most {MAX_NAME_BYTES} bytes of printable ASCII (a media type)"),
        ));
    }
}

/// Checks a type name (of an event or a snapshot): 1 to 255 bytes, no control characters.
pub fn check_type_name(field: &str, name: &str, violations: &mut Vec<FieldViolation>) {
    if let Some(problem) = name_problem(name) {
        violations.push(FieldViolation::new(field, problem));
    }
}

/// Whether a content type says JSON: `application/json` or any `+json` type, parameters ignored.
pub fn is_json_content_type(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || (essence.contains('/') && essence.ends_with("+json"))
}

/// Why `data` is not JSON that PostgreSQL's `jsonb` accepts, if it is not: serde's parse, plus
/// what jsonb refuses and serde allows (a NUL character, `\u0000`, in a string or a key). Every
/// event a projection reads as `$data` passed this check at append.
pub fn json_problem(data: &[u8]) -> std::result::Result<(), String> {
    let value: serde_json::Value = serde_json::from_slice(data).map_err(|e| e.to_string())?;
    let mut pending = vec![&value];
    while let Some(value) = pending.pop() {
        match value {
            serde_json::Value::String(text) if text.contains('\0') => {
                return Err("a string holds a NUL character (\\u0000), which jsonb refuses".into());
            }
            serde_json::Value::Array(items) => pending.extend(items),
            serde_json::Value::Object(fields) => {
                for (key, item) in fields {
                    if key.contains('\0') {
                        return Err(
                            "a key holds a NUL character (\\u0000), which jsonb refuses".into()
                        );
                    }
                    pending.push(item);
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Validates an append and assigns ids to events that came without one (UUID v7).
pub fn validate_append(input: AppendInput, limits: &Limits) -> Result<AppendRequest> {
    let mut violations = Vec::new();
    check_stream_name("stream", &input.stream, &mut violations);
    if input.events.is_empty() {
        violations.push(FieldViolation::new(
            "events",
            "at least one event is required",
        ));
    }
    if input.events.len() > limits.max_append_events {
        // Refused before any per-event work: the request's size is the problem.
        violations.push(FieldViolation::new(
            "events",
            format!(
                "request has {} events, over the per-request limit of {} events",
                input.events.len(),
                limits.max_append_events
            ),
        ));
        return Err(Error::InvalidArgument(violations));
    }

    let mut seen_ids: HashMap<Uuid, usize> = HashMap::new();
    let mut total_bytes = 0usize;
    let mut events = Vec::with_capacity(input.events.len());
    for (index, event) in input.events.into_iter().enumerate() {
        let field = |name: &str| format!("events[{index}].{name}");

        let id = if event.id.is_empty() {
            Uuid::now_v7()
        } else {
            match Uuid::try_parse(&event.id) {
                Ok(id) if id.is_nil() => {
                    violations.push(FieldViolation::new(field("id"), "must not be the nil uuid"));
                    id
                }
                Ok(id) => id,
                Err(error) => {
                    violations.push(FieldViolation::new(
                        field("id"),
                        format!("must be a uuid or empty: {error}"),
                    ));
                    Uuid::nil()
                }
            }
        };
        if !id.is_nil()
            && let Some(first) = seen_ids.insert(id, index)
        {
            violations.push(FieldViolation::new(
                field("id"),
                format!("duplicates events[{first}].id"),
            ));
        }

        check_type_name(&field("type"), &event.event_type, &mut violations);

        let content_type = if event.content_type.is_empty() {
            DEFAULT_CONTENT_TYPE.to_string()
        } else {
            event.content_type
        };
        check_content_type(&field("content_type"), &content_type, &mut violations);
        if is_json_content_type(&content_type)
            && let Err(problem) = json_problem(&event.data)
        {
            violations.push(FieldViolation::new(
                field("data"),
                format!("is not valid JSON (content type {content_type}): {problem}"),
            ));
        }
        for (key, value) in &event.metadata {
            if key.contains('\0') || value.contains('\0') {
                violations.push(FieldViolation::new(
                    field(&format!("metadata[{key:?}]")),
                    "must not contain NUL characters (PostgreSQL's jsonb cannot hold them)",
                ));
            }
        }

        let metadata_json = match serde_json::to_string(&event.metadata) {
            Ok(json) => json,
            Err(error) => return Err(Error::Internal(format!("metadata serialisation: {error}"))),
        };
        let size = event.data.len() + event.event_type.len() + metadata_json.len();
        if size > limits.max_event_bytes {
            violations.push(FieldViolation::new(
                field("data"),
                format!(
                    "event is {size} bytes, over the per-event limit of {} bytes",
                    limits.max_event_bytes
                ),
            ));
        }
        total_bytes += size;

        events.push(NewEvent {
            id,
            event_type: event.event_type,
            data: event.data,
            content_type,
            metadata_json,
        });
    }
    if total_bytes > limits.max_append_bytes {
        violations.push(FieldViolation::new(
            "events",
            format!(
                "request is {total_bytes} bytes, over the per-request limit of {} bytes",
                limits.max_append_bytes
            ),
        ));
    }

    if violations.is_empty() {
        Ok(AppendRequest {
            stream: input.stream,
            expected: input.expected,
            events,
        })
    } else {
        Err(Error::InvalidArgument(violations))
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::store::model::{EventInput, ExpectedRevision};

    fn event(data: &str) -> EventInput {
        EventInput {
            id: String::new(),
            event_type: "Happened".into(),
            data: Bytes::copy_from_slice(data.as_bytes()),
            content_type: String::new(),
            metadata: HashMap::new(),
        }
    }

    fn input(stream: &str, events: Vec<EventInput>) -> AppendInput {
        AppendInput {
            stream: stream.into(),
            expected: ExpectedRevision::Any,
            events,
        }
    }

    fn fields(result: Result<AppendRequest>) -> Vec<String> {
        match result {
            Err(Error::InvalidArgument(violations)) => {
                violations.into_iter().map(|v| v.field).collect()
            }
            other => panic!("expected invalid argument, got {other:?}"),
        }
    }

    #[test]
    fn assigns_v7_ids_and_default_content_type() {
        let request = validate_append(input("s", vec![event("{}")]), &Limits::default()).unwrap();
        assert_eq!(request.events[0].id.get_version_num(), 7);
        assert_eq!(request.events[0].content_type, "application/json");
    }

    #[test]
    fn json_that_jsonb_refuses_is_refused() {
        assert!(
            json_problem(br#"{"a":"\u0000"}"#)
                .unwrap_err()
                .contains("NUL")
        );
        assert!(
            json_problem(br#"{"\u0000":1}"#)
                .unwrap_err()
                .contains("NUL")
        );
        assert!(json_problem(br#"[[{"a":["x\u0000"]}]]"#).is_err());
        assert!(
            json_problem(br#"{"a":"\\u0000"}"#).is_ok(),
            "an escaped backslash is fine"
        );
        assert!(json_problem(b"{").is_err());
    }

    #[test]
    fn json_content_types_are_recognised() {
        assert!(is_json_content_type("application/json"));
        assert!(is_json_content_type("Application/JSON; charset=utf-8"));
        assert!(is_json_content_type("application/cloudevents+json"));
        assert!(!is_json_content_type("application/octet-stream"));
        assert!(!is_json_content_type("text/plain"));
    }

    #[test]
    fn reports_every_violation_with_its_field() {
        let mut bad_id = event("{}");
        bad_id.id = "not-a-uuid".into();
        let mut no_type = event("{}");
        no_type.event_type.clear();
        let got = fields(validate_append(
            input("bad\nstream", vec![bad_id, no_type, event("{oops")]),
            &Limits::default(),
        ));
        assert_eq!(
            got,
            ["stream", "events[0].id", "events[1].type", "events[2].data"]
        );
    }

    #[test]
    fn duplicate_ids_within_a_request_are_rejected() {
        let id = Uuid::now_v7().to_string();
        let mut first = event("{}");
        first.id = id.clone();
        let mut second = event("{}");
        second.id = id;
        let got = fields(validate_append(
            input("s", vec![first, second]),
            &Limits::default(),
        ));
        assert_eq!(got, ["events[1].id"]);
    }

    #[test]
    fn enforces_size_limits() {
        let limits = Limits {
            max_event_bytes: 20,
            max_append_bytes: 30,
            max_append_events: 3,
            ..Limits::default()
        };
        let big = format!("\"{}\"", "x".repeat(20));
        assert_eq!(
            fields(validate_append(input("s", vec![event(&big)]), &limits)),
            ["events[0].data", "events"]
        );
        let small = "\"0123\"";
        assert_eq!(
            fields(validate_append(
                input("s", vec![event(small), event(small)]),
                &limits
            )),
            ["events"]
        );
    }

    #[test]
    fn refuses_more_events_than_the_cap_before_reading_them() {
        let limits = Limits {
            max_append_events: 3,
            ..Limits::default()
        };
        let four = (0..4).map(|_| event("{oops")).collect();
        assert_eq!(
            fields(validate_append(input("s", four), &limits)),
            ["events"]
        );
        let three = (0..3).map(|_| event("{}")).collect();
        assert!(validate_append(input("s", three), &limits).is_ok());
    }
}
