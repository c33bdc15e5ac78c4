//! The crates are layers with one direction (docs/ARCHITECTURE.md, "Crates and layers"): the core
//! knows no gRPC, protobuf, HTTP or command line and none of the crates above it; the protocol
//! crate knows neither the core nor the server; the CLI and the load generator are clients of the
//! protocol and reach into neither the server nor the core. Read from `cargo tree` (the lockfile,
//! no network), so a new dependency anywhere below a crate counts, not only its own manifest.

use std::{collections::BTreeSet, process::Command};

/// Every package `package` depends on to build (normal and build dependencies, transitively).
fn dependencies(package: &str) -> BTreeSet<String> {
    let output = Command::new(env!("CARGO"))
        // Every feature: an optional dependency counts even when no default enables it. (The
        // host's target only: other platforms' crates are not in the offline cache.)
        .args([
            "tree",
            "--locked",
            "--offline",
            "-e",
            "normal,build",
            "--all-features",
        ])
        .args(["--prefix", "none", "--format", "{p}", "-p", package])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        output.status.success(),
        "cargo tree -p {package}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("utf-8")
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != package)
        .map(str::to_owned)
        .collect()
}

/// The names in `dependencies` that match any of `forbidden` (a name, or a prefix ending in `*`).
fn offending(dependencies: &BTreeSet<String>, forbidden: &[&str]) -> Vec<String> {
    dependencies
        .iter()
        .filter(|name| {
            forbidden.iter().any(|rule| match rule.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => name.as_str() == *rule,
            })
        })
        .cloned()
        .collect()
}

#[test]
fn the_core_depends_on_no_adapter_and_no_crate_above_it() {
    let found = offending(
        &dependencies("highwater-core"),
        &[
            "tonic*",
            "prost*",
            "clap*",
            "axum*",
            "hyper*",
            "tower*",
            "http",
            "highwater*",
        ],
    );
    assert!(found.is_empty(), "highwater-core depends on {found:?}");
}

#[test]
fn the_protocol_crate_depends_on_neither_the_core_nor_the_server() {
    let found = offending(
        &dependencies("highwater-api"),
        &["highwater*", "sqlx*", "clap*"],
    );
    assert!(found.is_empty(), "highwater-api depends on {found:?}");
}

#[test]
fn the_clients_depend_on_the_protocol_only() {
    for client in ["highwater-cli", "highwater-bench"] {
        let found = offending(
            &dependencies(client),
            &[
                "highwater",
                "highwater-core",
                "highwater-cli",
                "highwater-bench",
            ],
        );
        assert!(found.is_empty(), "{client} depends on {found:?}");
    }
}

/// The rule above can fail: the server itself depends on every crate of the workspace.
#[test]
fn the_server_is_seen_to_depend_on_the_layers_below_it() {
    let found = offending(&dependencies("highwater"), &["highwater-*"]);
    assert_eq!(
        found,
        [
            "highwater-api",
            "highwater-bench",
            "highwater-cli",
            "highwater-core"
        ]
    );
}
