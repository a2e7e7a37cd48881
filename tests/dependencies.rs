//! What a service that embeds standin with default features compiles: the runtime's dependencies, not the binary's or the gRPC server's.
//!
//! Reads `cargo tree -e normal` of `tests/embedder`, a crate that depends on
//! standin as an embedder would.

use std::path::Path;
use std::process::Command;

/// The crates of the embedder's normal dependency tree, by name.
fn embedder_crates() -> Vec<String> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/embedder/Cargo.toml");
    let output = Command::new(env!("CARGO"))
        .args([
            "tree",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--offline",
            "--manifest-path",
        ])
        .arg(&manifest)
        .output()
        .expect("cargo runs");
    assert!(
        output.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut crates: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
        .collect();
    crates.sort();
    crates.dedup();
    crates
}

#[test]
fn an_embedder_compiles_the_runtime_without_the_binary_or_the_grpc_server() {
    let crates = embedder_crates();
    for needed in [
        "standin",
        "etcd-client",
        "ractor",
        "tokio",
        "serde",
        "tracing",
        "metrics",
        "thiserror",
    ] {
        assert!(
            crates.iter().any(|c| c == needed),
            "{needed} missing from {crates:?}"
        );
    }
    // The binary's (clap, the subscriber, the exporter), the test kit's
    // (tempfile, rcgen), the gRPC server's (tonic-health, x509-parser) and rand, which
    // no library code uses.
    for unwanted in [
        "clap",
        "tracing-subscriber",
        "metrics-exporter-prometheus",
        "tonic-health",
        "rand",
        "tempfile",
        "rcgen",
        "x509-parser",
    ] {
        assert!(
            !crates.iter().any(|c| c == unwanted),
            "an embedder with default features compiles {unwanted}"
        );
    }
    println!("an embedder compiles {} crates", crates.len());
}
