//! What the tools that drive `standin` processes share: their logging and the binary they run.

use std::path::PathBuf;

use anyhow::Context;

/// Logs errors only, on stderr, unless `RUST_LOG` says otherwise: the
/// tools print their own lines on stdout.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// `chosen`, or `standin` beside the running tool: both are binaries of one
/// workspace, built into `target/<profile>/`.
pub fn standin_binary(chosen: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(chosen) = chosen {
        return Ok(chosen);
    }
    let exe = std::env::current_exe().context("finding the running executable")?;
    let profile_dir = exe
        .parent()
        .context("the running executable has no parent directory")?;
    Ok(profile_dir.join("standin"))
}
