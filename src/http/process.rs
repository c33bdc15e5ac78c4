//! The `process_*` metrics Prometheus clients export, read from `/proc/self` at scrape time:
//! CPU time, memory, open and allowed file descriptors, and the start time. On a system without
//! `/proc` they are left out.

use std::fs;

use highwater_core::metrics::{family_header, sample};

/// Appends the process families it can read.
pub fn render(out: &mut String) {
    // Both from sysconf, which cannot fail on Linux for these names; 0 means unknown.
    // SAFETY: sysconf only reads configuration values.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    // SAFETY: as above.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as f64;

    if let Some(stat) = fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|text| Stat::parse(&text))
        && ticks > 0.0
    {
        metric(
            out,
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time spent, in seconds.",
            (stat.utime + stat.stime) as f64 / ticks,
        );
        if let Some(boot) = boot_time() {
            metric(
                out,
                "process_start_time_seconds",
                "gauge",
                "Start time of the process since the Unix epoch, in seconds.",
                boot + stat.start_ticks as f64 / ticks,
            );
        }
        metric(
            out,
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size, in bytes.",
            stat.vsize as f64,
        );
        if page > 0.0 {
            metric(
                out,
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory size, in bytes.",
                stat.rss_pages as f64 * page,
            );
        }
    }
    if let Ok(entries) = fs::read_dir("/proc/self/fd") {
        metric(
            out,
            "process_open_fds",
            "gauge",
            "Open file descriptors.",
            entries.count() as f64,
        );
    }
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the limit into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        metric(
            out,
            "process_max_fds",
            "gauge",
            "Most file descriptors the process may open.",
            limit.rlim_cur as f64,
        );
    }
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, value: f64) {
    family_header(out, name, kind, help);
    sample(out, name, &[], value);
}

/// The fields of `/proc/self/stat` used here (proc(5): utime 14, stime 15, starttime 22,
/// vsize 23, rss 24, counted from 1).
#[derive(Debug, PartialEq)]
struct Stat {
    utime: u64,
    stime: u64,
    start_ticks: u64,
    vsize: u64,
    rss_pages: u64,
}

impl Stat {
    fn parse(text: &str) -> Option<Self> {
        // The command name (field 2) is in parentheses and may hold spaces: fields after it
        // are counted from the last ')'.
        let after_name = &text[text.rfind(')')? + 1..];
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        // fields[0] is field 3 (the state).
        let field = |number: usize| fields.get(number - 3)?.parse::<u64>().ok();
        Some(Self {
            utime: field(14)?,
            stime: field(15)?,
            start_ticks: field(22)?,
            vsize: field(23)?,
            rss_pages: field(24)?,
        })
    }
}

/// When the machine booted, in seconds since the Unix epoch (`btime` of `/proc/stat`).
fn boot_time() -> Option<f64> {
    fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("btime ")?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_a_command_name_with_spaces_and_parentheses() {
        let line = "4242 (tokio (rt) 1) S 1 2 3 4 5 6 7 8 9 10 111 222 13 14 15 16 17 18 3333 4444 555 rest";
        assert_eq!(
            Stat::parse(line),
            Some(Stat {
                utime: 111,
                stime: 222,
                start_ticks: 3333,
                vsize: 4444,
                rss_pages: 555
            })
        );
        assert_eq!(Stat::parse("no parenthesis"), None);
    }

    #[test]
    fn this_process_has_plausible_values() {
        let mut out = String::new();
        render(&mut out);
        let value = |name: &str| -> f64 {
            out.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in {out}"))
        };
        assert!(value("process_resident_memory_bytes") > 1e6);
        assert!(value("process_open_fds") >= 3.0);
        assert!(value("process_max_fds") >= value("process_open_fds"));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let started = value("process_start_time_seconds");
        assert!(
            started <= now + 1.0 && started > now - 3600.0,
            "started {started}, now {now}"
        );
    }
}
