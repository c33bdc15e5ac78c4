//! Subscription filters: stream prefixes and event types.

use crate::store::model::RecordedEvent;

#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub stream_prefixes: Vec<String>,
    pub event_types: Vec<String>,
}

impl Filter {
    /// Any prefix (or none given) and any type (or none given).
    pub fn matches(&self, event: &RecordedEvent) -> bool {
        (self.stream_prefixes.is_empty()
            || self
                .stream_prefixes
                .iter()
                .any(|prefix| event.stream.starts_with(prefix.as_str())))
            && (self.event_types.is_empty() || self.event_types.contains(&event.event_type))
    }

    pub fn is_empty(&self) -> bool {
        self.stream_prefixes.is_empty() && self.event_types.is_empty()
    }
}
