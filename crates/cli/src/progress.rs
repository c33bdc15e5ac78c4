//! The rebuild's progress display: a live bar on a terminal, plain lines otherwise.

use std::{
    io::{self, IsTerminal, Write},
    time::{Duration, Instant},
};

use highwater_api::pb::{self, rebuild_progress::Phase};

/// Width of the bar, in characters.
const BAR_WIDTH: usize = 30;
/// Plain (non-terminal) output prints at most one line per this interval within a phase.
const PLAIN_INTERVAL: Duration = Duration::from_secs(1);

/// Draws rebuild progress on standard output.
pub struct ProgressDisplay {
    terminal: bool,
    last_phase: Option<Phase>,
    last_line: Option<Instant>,
}

impl ProgressDisplay {
    pub fn new() -> Self {
        Self {
            terminal: io::stdout().is_terminal(),
            last_phase: None,
            last_line: None,
        }
    }

    /// Shows one progress update.
    pub fn show(&mut self, progress: &pb::RebuildProgress) -> io::Result<()> {
        let phase = progress.phase();
        let text = describe(progress);
        let mut out = io::stdout().lock();
        if self.terminal {
            // Redraw in place; a new phase keeps the previous one's last line on screen.
            if self.last_phase.is_some() && self.last_phase != Some(phase) {
                out.write_all(b"\n")?;
            }
            write!(out, "\r\x1b[2K{text}")?;
            if finished(phase) {
                out.write_all(b"\n")?;
            }
        } else {
            let due = self
                .last_line
                .is_none_or(|at| at.elapsed() >= PLAIN_INTERVAL);
            if self.last_phase != Some(phase) || finished(phase) || due {
                writeln!(out, "{text}")?;
                self.last_line = Some(Instant::now());
            }
        }
        self.last_phase = Some(phase);
        out.flush()
    }
}

fn finished(phase: Phase) -> bool {
    matches!(phase, Phase::Done | Phase::Failed)
}

/// The phase's name as people read it.
pub fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Unspecified => "unknown",
        Phase::Starting => "starting",
        Phase::Backfilling => "backfilling",
        Phase::CatchingUp => "catching up",
        Phase::CuttingOver => "cutting over",
        Phase::ReplayingSkips => "replaying skips",
        Phase::Done => "done",
        Phase::Failed => "failed",
    }
}

/// One line: phase, bar, events, rate and time left.
fn describe(progress: &pb::RebuildProgress) -> String {
    let phase = progress.phase();
    let name = match phase {
        Phase::Done => crate::color::stdout(crate::color::Paint::Green, phase_name(phase)),
        Phase::Failed => crate::color::stdout(crate::color::Paint::Red, phase_name(phase)),
        _ => phase_name(phase).to_string(),
    };
    match phase {
        Phase::Failed => format!("{name}: {}", progress.error),
        Phase::Done => format!(
            "{name}: version {} applied {} events ({} events/s)",
            progress.version,
            thousands(progress.position),
            thousands(progress.events_per_second as u64)
        ),
        // The version is 0 until the server has chosen or made it.
        Phase::Unspecified | Phase::Starting if progress.version == 0 => name.to_string(),
        Phase::Unspecified | Phase::Starting => format!("{name}: version {}", progress.version),
        Phase::ReplayingSkips => format!("{name}: {} replayed", thousands(progress.skips_replayed)),
        _ => {
            let done = progress.position.min(progress.head);
            let fraction = if progress.head == 0 {
                1.0
            } else {
                done as f64 / progress.head as f64
            };
            let filled = ((fraction * BAR_WIDTH as f64) as usize).min(BAR_WIDTH);
            let bar = format!("{}{}", "#".repeat(filled), ".".repeat(BAR_WIDTH - filled));
            let eta = if progress.events_per_second > 0.0 {
                let seconds = (progress.head - done) as f64 / progress.events_per_second;
                format!("ETA {}", clock(seconds as u64))
            } else {
                "ETA -".to_string()
            };
            format!(
                "{name:<12} [{bar}] {:>5.1}%  {}/{} events  {} events/s  {eta}",
                fraction * 100.0,
                thousands(done),
                thousands(progress.head),
                thousands(progress.events_per_second as u64)
            )
        }
    }
}

/// 1234567 as 1,234,567.
pub fn thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut text = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            text.push(',');
        }
        text.push(digit);
    }
    text
}

/// Seconds as m:ss or h:mm:ss.
fn clock(seconds: u64) -> String {
    let (hours, minutes, seconds) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    if hours > 0 {
        format!("{hours}:{minutes:02}:{seconds:02}")
    } else {
        format!("{minutes}:{seconds:02}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_grouped_by_thousands() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn the_version_is_shown_only_once_the_server_has_chosen_it() {
        let mut progress = pb::RebuildProgress {
            phase: Phase::Starting as i32,
            ..Default::default()
        };
        assert_eq!(describe(&progress), "starting");
        progress.version = 3;
        assert_eq!(describe(&progress), "starting: version 3");
    }

    #[test]
    fn a_backfill_line_shows_bar_rate_and_time_left() {
        let progress = pb::RebuildProgress {
            phase: Phase::Backfilling as i32,
            position: 250_000,
            head: 1_000_000,
            events_per_second: 50_000.0,
            ..Default::default()
        };
        let line = describe(&progress);
        assert!(line.starts_with("backfilling  [#######.."), "{line}");
        assert!(line.contains(" 25.0%"), "{line}");
        assert!(line.contains("250,000/1,000,000 events"), "{line}");
        assert!(line.contains("50,000 events/s"), "{line}");
        assert!(line.ends_with("ETA 0:15"), "{line}");
    }
}
