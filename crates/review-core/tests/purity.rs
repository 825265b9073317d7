//! The core crate stays pure: what it is built from, checked on the real dependency graph.
//! A `use tokio::…` would not compile without the dependency, so the graph is the whole check.

#![allow(
    clippy::unwrap_used,
    clippy::arithmetic_side_effects,
    clippy::cast_possible_truncation,
    reason = "test and benchmark code: a panic is a failed run"
)]

use std::process::Command;

/// Crates that would bring networking, the broker or an async runtime into the pipeline.
const FORBIDDEN: &[&str] = &["tokio", "lapin", "reqwest", "hyper", "axum", "mio", "futures"];

#[test]
fn the_core_crate_depends_on_no_network_broker_or_runtime_crate() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .args([
            "tree",
            "-p",
            "review-core",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--format",
            "{p}",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    assert!(
        output.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let tree = String::from_utf8(output.stdout).expect("cargo tree prints UTF-8");
    let names: Vec<&str> = tree.lines().filter_map(|line| line.split_whitespace().next()).collect();
    assert!(
        names.contains(&"review-core"),
        "the tree names the crate itself: {tree}"
    );
    assert!(
        names.contains(&"serde_json"),
        "the tree lists direct dependencies: {tree}"
    );
    let found: Vec<&str> = names
        .iter()
        .copied()
        .filter(|name| {
            FORBIDDEN
                .iter()
                .any(|bad| name == bad || name.starts_with(&format!("{bad}-")))
        })
        .collect();
    assert!(found.is_empty(), "review-core must stay pure, but depends on {found:?}");
}
