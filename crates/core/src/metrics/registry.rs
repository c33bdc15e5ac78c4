//! Counters and histograms that the code updates as things happen: process-wide statics of
//! atomics, so that recording costs a few atomic adds and needs no handle passed around.

use std::{
    fmt::Write,
    sync::atomic::{AtomicU64, Ordering},
};

/// Upper bounds of the latency buckets, in seconds.
const SECONDS_BOUNDS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
];
/// Upper bounds of the group-size buckets, in requests per group commit.
const GROUP_BOUNDS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];
/// Room for the largest bucket list, plus +Inf.
const MAX_BUCKETS: usize = 16;

/// A Prometheus histogram with fixed buckets.
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative; summed when rendered); the last is +Inf.
    counts: [AtomicU64; MAX_BUCKETS],
    /// The sum of observations, as f64 bits.
    sum: AtomicU64,
}

impl Histogram {
    /// A histogram of durations, in seconds.
    pub const fn seconds() -> Self {
        Self::new(SECONDS_BOUNDS)
    }

    const fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: [const { AtomicU64::new(0) }; MAX_BUCKETS],
            sum: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: f64) {
        let bucket = self
            .bounds
            .iter()
            .position(|bound| value <= *bound)
            .unwrap_or(self.bounds.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        let _ = self
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + value).to_bits())
            });
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        self.render_series(out, name, &[]);
    }

    /// The histogram's samples with `labels` (after a `histogram_header`).
    pub fn render_series(&self, out: &mut String, name: &str, labels: &[(&str, &str)]) {
        let prefix: String = labels
            .iter()
            .map(|(key, value)| format!("{key}=\"{}\",", escape(value)))
            .collect();
        let mut cumulative = 0;
        for (i, bound) in self.bounds.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{prefix}le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.counts[self.bounds.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{prefix}le=\"+Inf\"}} {cumulative}");
        let sum = f64::from_bits(self.sum.load(Ordering::Relaxed));
        let labels = prefix.trim_end_matches(',');
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(
            out,
            "{name}_sum{braces} {sum}\n{name}_count{braces} {cumulative}"
        );
    }
}

/// What this process has done since it started.
pub struct Recorded {
    /// Append requests answered with success (replays of an earlier append included).
    pub appends: AtomicU64,
    /// Append requests answered with an error.
    pub append_errors: AtomicU64,
    /// Events written by appends.
    pub events_appended: AtomicU64,
    /// Time from an append's arrival (validated) to its answer.
    pub append_seconds: Histogram,
    /// Requests per group commit.
    pub group_requests: Histogram,
    /// Times the hub's LISTEN connection was lost and reconnected.
    pub hub_reconnects: AtomicU64,
    /// Client connections closed after --idle-timeout-secs without a call.
    pub idle_connections_closed: AtomicU64,
}

pub static RECORDED: Recorded = Recorded {
    appends: AtomicU64::new(0),
    append_errors: AtomicU64::new(0),
    events_appended: AtomicU64::new(0),
    append_seconds: Histogram::new(SECONDS_BOUNDS),
    group_requests: Histogram::new(GROUP_BOUNDS),
    hub_reconnects: AtomicU64::new(0),
    idle_connections_closed: AtomicU64::new(0),
};

/// Adds one to a counter.
pub fn increment(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Recorded {
    pub fn render(&self, out: &mut String) {
        counter(
            out,
            "highwater_appends_total",
            "Append requests that succeeded.",
            self.appends.load(Ordering::Relaxed),
        );
        counter(
            out,
            "highwater_append_errors_total",
            "Append requests that failed (any code).",
            self.append_errors.load(Ordering::Relaxed),
        );
        counter(
            out,
            "highwater_events_appended_total",
            "Events written by appends.",
            self.events_appended.load(Ordering::Relaxed),
        );
        self.append_seconds.render(
            out,
            "highwater_append_duration_seconds",
            "Time to answer an append.",
        );
        self.group_requests.render(
            out,
            "highwater_append_group_requests",
            "Append requests written per group commit.",
        );
        counter(
            out,
            "highwater_hub_reconnects_total",
            "Reconnections of the hub's LISTEN connection.",
            self.hub_reconnects.load(Ordering::Relaxed),
        );
        counter(
            out,
            "highwater_idle_connections_closed_total",
            "Client connections closed after --idle-timeout-secs without a call.",
            self.idle_connections_closed.load(Ordering::Relaxed),
        );
    }
}

pub fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
    );
}

/// Starts a family of the given type (`counter`, `gauge`, `histogram`): its HELP and TYPE lines.
pub fn family_header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Starts a gauge family: its HELP and TYPE lines.
pub fn gauge_header(out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
}

/// One gauge sample, with labels.
pub fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (key, label)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{key}=\"{}\"", escape(label));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// Label values escape backslash, double quote and newline.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_renders_cumulative_buckets_sum_and_count() {
        let histogram = Histogram::new(&[1.0, 10.0]);
        for value in [0.5, 2.0, 3.0, 50.0] {
            histogram.observe(value);
        }
        let mut out = String::new();
        histogram.render(&mut out, "h", "help");
        assert!(out.contains("h_bucket{le=\"1\"} 1\n"), "{out}");
        assert!(out.contains("h_bucket{le=\"10\"} 3\n"), "{out}");
        assert!(out.contains("h_bucket{le=\"+Inf\"} 4\n"), "{out}");
        assert!(out.contains("h_sum 55.5\nh_count 4\n"), "{out}");
    }

    #[test]
    fn a_labelled_histogram_puts_its_labels_before_le() {
        let histogram = Histogram::new(&[1.0]);
        histogram.observe(0.5);
        let mut out = String::new();
        histogram.render_series(&mut out, "h", &[("m", "A")]);
        assert_eq!(
            out,
            "h_bucket{m=\"A\",le=\"1\"} 1\nh_bucket{m=\"A\",le=\"+Inf\"} 1\n\
             h_sum{m=\"A\"} 0.5\nh_count{m=\"A\"} 1\n"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        sample(&mut out, "g", &[("name", "a\"b\\c")], 2.0);
        assert_eq!(out, "g{name=\"a\\\"b\\\\c\"} 2\n");
    }
}
