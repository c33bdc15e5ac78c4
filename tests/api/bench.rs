//! The benchmark runs end to end (tiny sizes: this checks that it works, not how fast).

use crate::helpers::{admin_url, highwater_blocking};

#[test]
fn the_benchmark_runs_every_workload_and_prints_its_report() {
    let output = highwater_blocking()
        .args([
            "bench",
            "--database-url",
            admin_url(),
            "--duration-secs",
            "1",
            "--clients",
            "1,4",
        ])
        .args([
            "--stream-events",
            "600",
            "--scan-events",
            "3000",
            "--grown-events",
            "2000",
            "--live-subscribers",
            "5",
            "--live-rate",
            "50",
            "--live-runs",
            "2",
        ])
        .args(["--idle-subscribers", "20", "--idle-secs", "1"])
        .env_remove("RUST_LOG")
        .output()
        .expect("run highwater bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench failed:\n{stdout}\n{stderr}");
    for expected in [
        "W1 append",
        "highwater  C=4   batch=1",
        "raw insert C=4   1 row/txn",
        "ratio highwater/raw",
        "groups, mean",
        "W1 again once the log holds 2000 events",
        "highwater  C=4   batch=1 grown",
        "raw insert C=4   1 row/txn grown",
        "ReadStream of 600 events",
        "ratio ReadAll/raw",
        "5 subs at 50/s, 1 conn, run 1",
        "5 subs at 50/s, 1 conn, run 2",
        "5 subs at 50/s, 5 conn, run 2",
        "ms in ",
        "20 idle subscribers",
        "database transactions in 1s idle",
        "AdminRebuild blue/green, whole log",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
}
