//! The manifest tells the truth: `rust-version` is what the build needs, and the licence it names ships in the package.
//!
//! No older toolchain is installable here, so the minimum Rust version is
//! checked the honest way that remains: against the `rust-version` every
//! resolved dependency declares and the language features our own sources use.

use std::path::{Path, PathBuf};
use std::process::Command;

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn cargo(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO"))
        .args(args)
        .current_dir(manifest_dir())
        .output()
        .expect("cargo runs");
    assert!(
        output.status.success(),
        "cargo {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("cargo prints UTF-8")
}

fn host_triple() -> String {
    let output = Command::new("rustc")
        .arg("-vV")
        .output()
        .expect("rustc runs");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("host: ").map(str::to_owned))
        .expect("rustc -vV names the host")
}

/// `1.88`, `1.88.0` -> (1, 88, 0).
fn version(text: &str) -> (u32, u32, u32) {
    let mut parts = text.split('.').map(|part| part.parse::<u32>().unwrap_or(0));
    (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("the directory reads") {
        let path = entry.expect("an entry reads").path();
        if path.is_dir() {
            sources(&path, found);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            found.push(path);
        }
    }
}

/// Whether `line` chains a `let` pattern with `&&` (stable since Rust 1.88).
fn is_let_chain(line: &str) -> bool {
    let line = line.trim_start();
    line.starts_with("&& let ") || (line.starts_with("if let ") && line.contains(" && "))
}

#[test]
fn rust_version_is_what_the_dependencies_and_our_sources_need() {
    let metadata: serde_json::Value = serde_json::from_str(&cargo(&[
        "metadata",
        "--format-version",
        "1",
        "--offline",
        "--all-features",
        "--filter-platform",
        &host_triple(),
    ]))
    .expect("cargo metadata prints JSON");
    let packages = metadata["packages"].as_array().expect("a package list");
    let declared = packages
        .iter()
        .find(|package| package["name"] == "standin")
        .and_then(|package| package["rust_version"].as_str())
        .expect("standin declares a rust-version");
    let (needed_by, needed) = packages
        .iter()
        // Dependencies come from a registry; the workspace's own packages
        // (standin, standin-tools) declare the version under test.
        .filter(|package| !package["source"].is_null())
        .filter_map(|package| {
            let wanted = package["rust_version"].as_str()?;
            Some((package["name"].as_str()?.to_owned(), version(wanted)))
        })
        .max_by_key(|(_, wanted)| *wanted)
        .expect("dependencies declare rust-versions");

    let mut files = Vec::new();
    sources(&manifest_dir().join("src"), &mut files);
    let chained = files.iter().find(|file| {
        std::fs::read_to_string(file)
            .expect("a source reads")
            .lines()
            .any(is_let_chain)
    });
    let (needed_by, needed) = match chained {
        Some(file) if version("1.88") > needed => (
            format!("the let-chains in {}", file.display()),
            version("1.88"),
        ),
        _ => (needed_by, needed),
    };
    assert_eq!(
        version(declared),
        needed,
        "Cargo.toml says rust-version = {declared:?}, but {needed_by} needs {needed:?}"
    );
    println!("rust-version {declared}: needed by {needed_by}");
}

#[test]
fn the_package_ships_the_apache_licence_it_names() {
    let listed = cargo(&["package", "--list", "--allow-dirty", "--offline"]);
    assert!(
        listed.lines().any(|file| file == "LICENSE"),
        "cargo package leaves LICENSE out:\n{listed}"
    );
    let text = std::fs::read_to_string(manifest_dir().join("LICENSE")).expect("LICENSE reads");
    assert!(text.contains("Apache License") && text.contains("Version 2.0, January 2004"));
    let manifest =
        std::fs::read_to_string(manifest_dir().join("Cargo.toml")).expect("Cargo.toml reads");
    assert!(manifest.contains("license = \"Apache-2.0\""));
}
