//! Compiles proto/standin.proto into the gRPC client and server code (cargo feature `grpc`), and names the git commit the build comes from.

use std::process::Command;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    #[cfg(feature = "grpc")]
    {
        println!("cargo:rerun-if-changed=proto/standin.proto");
        tonic_prost_build::configure().compile_protos(&["proto/standin.proto"], &["proto"])?;
    }
    println!("cargo:rustc-env=BUILT_FROM_GIT_COMMIT={}", git_commit());
    Ok(())
}

/// The commit checked out, shortened; `unknown` outside a git checkout
/// (a crate from a registry, a source tarball) or without git.
fn git_commit() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|output| output.status.success())
            .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    };
    let Some(git_dir) = git(&["rev-parse", "--absolute-git-dir"]) else {
        return "unknown".to_owned();
    };
    // A new commit moves HEAD, or the branch HEAD names.
    println!("cargo:rerun-if-changed={git_dir}/HEAD");
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        println!("cargo:rerun-if-changed={git_dir}/{branch}");
    }
    println!("cargo:rerun-if-changed={git_dir}/packed-refs");
    git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".to_owned())
}
