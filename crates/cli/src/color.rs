//! Colour in the client's output for people: `--color auto` (the default) colours a stream that
//! is a terminal unless `NO_COLOR` is set (no-color.org), `always` and `never` decide outright.
//! Machine output (`--json`) is never coloured.

use std::{
    io::IsTerminal,
    sync::atomic::{AtomicBool, Ordering},
};

use clap::ValueEnum;

/// When to colour output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum ColorChoice {
    /// On a terminal, unless NO_COLOR is set.
    #[default]
    Auto,
    Always,
    Never,
}

/// Whether to colour a stream, given the choice, whether it is a terminal and NO_COLOR's value.
fn decide(choice: ColorChoice, terminal: bool, no_color: Option<&str>) -> bool {
    match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        // NO_COLOR counts when it is set to anything but the empty string.
        ColorChoice::Auto => terminal && no_color.is_none_or(str::is_empty),
    }
}

/// The decision for standard output and standard error, made once per command (`init`).
static STDOUT: AtomicBool = AtomicBool::new(false);
static STDERR: AtomicBool = AtomicBool::new(false);

/// Decides colour for both streams from `choice` and the environment.
pub fn init(choice: ColorChoice) {
    let no_color = std::env::var("NO_COLOR").ok();
    STDOUT.store(
        decide(choice, std::io::stdout().is_terminal(), no_color.as_deref()),
        Ordering::Relaxed,
    );
    STDERR.store(
        decide(choice, std::io::stderr().is_terminal(), no_color.as_deref()),
        Ordering::Relaxed,
    );
}

/// A colour of the palette.
#[derive(Debug, Clone, Copy)]
pub enum Paint {
    Green,
    Red,
}

impl Paint {
    fn code(self) -> &'static str {
        match self {
            Paint::Green => "32",
            Paint::Red => "31",
        }
    }
}

fn paint(on: bool, paint: Paint, text: &str) -> String {
    if on {
        format!("\x1b[{}m{text}\x1b[0m", paint.code())
    } else {
        text.to_string()
    }
}

/// `text` coloured for standard output, if colour is on there.
pub fn stdout(color: Paint, text: &str) -> String {
    paint(STDOUT.load(Ordering::Relaxed), color, text)
}

/// `text` coloured for standard error, if colour is on there.
pub fn stderr(color: Paint, text: &str) -> String {
    paint(STDERR.load(Ordering::Relaxed), color, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_colours_a_terminal_unless_no_color_is_set_and_the_flag_decides_outright() {
        assert!(decide(ColorChoice::Auto, true, None));
        assert!(decide(ColorChoice::Auto, true, Some("")));
        assert!(!decide(ColorChoice::Auto, true, Some("1")));
        assert!(!decide(ColorChoice::Auto, false, None));
        assert!(decide(ColorChoice::Always, false, Some("1")));
        assert!(!decide(ColorChoice::Never, true, None));
        assert_eq!(paint(true, Paint::Red, "x"), "\x1b[31mx\x1b[0m");
        assert_eq!(paint(false, Paint::Red, "x"), "x");
    }
}
