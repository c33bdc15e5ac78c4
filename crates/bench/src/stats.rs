//! Latency samples and rates, printed as benchmark rows.

use std::time::Duration;

/// Latencies of one workload.
#[derive(Debug, Default)]
pub struct Samples(Vec<Duration>);

impl Samples {
    pub fn push(&mut self, latency: Duration) {
        self.0.push(latency);
    }

    pub fn extend(&mut self, other: Samples) {
        self.0.extend(other.0);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// p50, p99 and max, in milliseconds.
    pub fn percentiles(&mut self) -> (f64, f64, f64) {
        if self.0.is_empty() {
            return (0.0, 0.0, 0.0);
        }
        self.0.sort_unstable();
        let at = |q: f64| {
            let index = ((self.0.len() as f64 * q).ceil() as usize)
                .saturating_sub(1)
                .min(self.0.len() - 1);
            self.0[index].as_secs_f64() * 1000.0
        };
        (
            at(0.50),
            at(0.99),
            self.0[self.0.len() - 1].as_secs_f64() * 1000.0,
        )
    }
}

/// One line of the report.
pub fn row(
    name: &str,
    events: u64,
    elapsed: Duration,
    samples: Option<&mut Samples>,
    note: &str,
) -> f64 {
    let rate = events as f64 / elapsed.as_secs_f64().max(1e-9);
    let latency = match samples {
        Some(samples) if !samples.is_empty() => {
            let (p50, p99, max) = samples.percentiles();
            format!("{p50:>9.2} {p99:>9.2} {max:>9.2}")
        }
        _ => format!("{:>9} {:>9} {:>9}", "-", "-", "-"),
    };
    println!("{name:<44} {events:>10} {rate:>12.0} {latency}  {note}");
    rate
}

pub fn header(title: &str) {
    println!();
    println!("{title}");
    println!(
        "{:<44} {:>10} {:>12} {:>9} {:>9} {:>9}",
        "workload", "events", "events/s", "p50 ms", "p99 ms", "max ms"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_hundred_samples() {
        let mut samples = Samples::default();
        for ms in 1..=100 {
            samples.push(Duration::from_millis(ms));
        }
        assert_eq!(samples.percentiles(), (50.0, 99.0, 100.0));
    }
}
