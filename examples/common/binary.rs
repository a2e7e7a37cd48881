//! Finding the `standin` binary that the examples drive, next to the running example.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// `standin` in the profile directory: an example runs from
/// `target/<profile>/examples/`, the binary lives in `target/<profile>/`.
pub fn default_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("finding the running executable")?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("the running executable has no grandparent directory")?;
    Ok(profile_dir.join("standin"))
}
