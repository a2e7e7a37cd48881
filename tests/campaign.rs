//! A short fault campaign (30 faults, 10k metadata keys preloaded halfway) against three `standin run --role tso --role kv` processes: no timestamp, register or leadership violation, every fault recovered within its bound.
//!
//! The campaign itself lives with the `campaign` example, which runs the
//! long one; `CAMPAIGN_SEED=S` replays a seed printed by a failed run.

#[path = "../examples/campaign/checker.rs"]
mod checker;
#[path = "../examples/campaign/history.rs"]
mod history;
#[path = "../examples/campaign/runner.rs"]
mod runner;

use std::path::PathBuf;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_campaign_finds_no_violation() -> anyhow::Result<()> {
    let seed = match std::env::var("CAMPAIGN_SEED") {
        Ok(seed) => seed.parse()?,
        Err(_) => rand::random(),
    };
    let summary = runner::run(runner::Options {
        faults: 30,
        seed,
        binary: PathBuf::from(env!("CARGO_BIN_EXE_standin")),
        // Enough keys for every standby to follow and every takeover to
        // catch up; the long campaign (`make campaign`) preloads 100k.
        preload: 10_000,
    })
    .await?;
    println!("{}", summary.line());
    assert_eq!(
        summary.violations,
        0,
        "{}: the VIOLATION lines above say what broke; CAMPAIGN_SEED={seed} replays the fault sequence",
        summary.line()
    );
    Ok(())
}
