//! Output of the client commands: aligned tables and event lines for people, JSON lines for
//! scripts.

use std::io::{self, Write};

use base64::Engine;
use serde_json::{Value, json};

use highwater_api::pb;

/// Longest data shown in a table cell or an event line; `--json` shows all of it.
const DATA_PREVIEW_CHARS: usize = 80;

/// Writes one JSON value as a line on standard output.
pub fn json_line(value: &Value) -> io::Result<()> {
    let mut out = io::stdout().lock();
    serde_json::to_writer(&mut out, value)?;
    out.write_all(b"\n")?;
    out.flush()
}

/// Writes one line on standard output, flushed so that `tail` output reaches pipes at once.
pub fn line(text: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.write_all(b"\n")?;
    out.flush()
}

/// Whether the event's data is JSON (the default content type).
fn is_json(event: &pb::RecordedEvent) -> bool {
    event.content_type.is_empty() || event.content_type == "application/json"
}

/// An event as a JSON object. JSON data is embedded as JSON; other data as base64.
pub fn event_json(event: &pb::RecordedEvent) -> Value {
    let mut object = json!({
        "position": event.position,
        "stream": event.stream,
        "revision": event.revision,
        "id": event.id,
        "type": event.r#type,
        "content_type": event.content_type,
        "recorded_at": timestamp(event.recorded_at.as_ref()),
        "metadata": event.metadata,
    });
    let parsed = is_json(event)
        .then(|| serde_json::from_slice::<Value>(&event.data).ok())
        .flatten();
    match parsed {
        Some(data) => object["data"] = data,
        None => {
            object["data_base64"] =
                Value::String(base64::engine::general_purpose::STANDARD.encode(&event.data))
        }
    }
    object
}

/// An event on one line: position, stream@revision, type, data (shortened).
pub fn event_text(event: &pb::RecordedEvent) -> String {
    format!(
        "{}\t{}@{}\t{}\t{}",
        event.position,
        event.stream,
        event.revision,
        event.r#type,
        data_preview(event)
    )
}

/// The event's data as text on one line, shortened for a terminal; binary data as its size.
pub fn data_preview(event: &pb::RecordedEvent) -> String {
    let Ok(text) = std::str::from_utf8(&event.data) else {
        return format!("<{} bytes of {}>", event.data.len(), event.content_type);
    };
    let one_line: String = text
        .trim_end()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if one_line.chars().count() > DATA_PREVIEW_CHARS {
        let cut: String = one_line.chars().take(DATA_PREVIEW_CHARS - 1).collect();
        format!("{cut}…")
    } else {
        one_line
    }
}

/// A timestamp in RFC 3339, or empty.
pub fn timestamp(value: Option<&prost_types::Timestamp>) -> String {
    value.map(ToString::to_string).unwrap_or_default()
}

/// A table printed with aligned columns.
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&'static str]) -> Self {
        Self {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Prints the table; an empty one prints `empty_message` instead.
    pub fn print(&self, empty_message: &str) -> io::Result<()> {
        if self.rows.is_empty() {
            return line(empty_message);
        }
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.len()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let format_row = |cells: Vec<&str>| {
            let mut text = String::new();
            for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
                if i + 1 == cells.len() {
                    text.push_str(cell);
                } else {
                    let pad = width - cell.chars().count();
                    text.push_str(cell);
                    text.push_str(&" ".repeat(pad + 2));
                }
            }
            text
        };
        let mut out = String::new();
        out.push_str(&format_row(self.headers.clone()));
        for row in &self.rows {
            out.push('\n');
            out.push_str(&format_row(row.iter().map(String::as_str).collect()));
        }
        line(&out)
    }
}
