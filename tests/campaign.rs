//! Short fault campaigns against three `standin run --role tso --role kv` processes (30 faults of every kind on one etcd server; 15 of etcd's own on a 3-member cluster; 10k metadata keys preloaded halfway): no timestamp, register or leadership violation, every fault recovered within its bound.
//!
//! The campaign itself lives in the `standin-tools` workspace member
//! (`tools/`), whose `campaign` binary runs the long one; `CAMPAIGN_SEED=S`
//! replays a seed printed by a failed run.

use std::path::PathBuf;

use standin_tools::campaign::runner;

/// Campaigns run one at a time: each starts etcd, three nodes and their
/// clients, which two cores cannot run twice over without slowing every
/// takeover past its bound.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The seed: `CAMPAIGN_SEED` when set, else a random one.
fn seed() -> anyhow::Result<u64> {
    Ok(match std::env::var("CAMPAIGN_SEED") {
        Ok(seed) => seed.parse()?,
        Err(_) => rand::random(),
    })
}

/// Runs a campaign and fails with its summary when it found a violation.
async fn campaign(options: runner::Options) -> anyhow::Result<()> {
    let _alone = ONE_AT_A_TIME.lock().await;
    let seed = options.seed;
    let summary = runner::run(options).await?;
    println!("{}", summary.line());
    assert_eq!(
        summary.violations,
        0,
        "{}: the VIOLATION lines above say what broke; CAMPAIGN_SEED={seed} replays the fault sequence",
        summary.line()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_campaign_finds_no_violation() -> anyhow::Result<()> {
    campaign(runner::Options {
        faults: 30,
        seed: seed()?,
        binary: PathBuf::from(env!("CARGO_BIN_EXE_standin")),
        // Enough keys for every standby to follow and every takeover to
        // catch up; the long campaign (`make campaign`) preloads 100k.
        preload: 10_000,
        setup: runner::Setup::default(),
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_campaign_of_etcd_faults_against_three_members_finds_no_violation()
-> anyhow::Result<()> {
    campaign(runner::Options {
        faults: 15,
        seed: seed()?,
        binary: PathBuf::from(env!("CARGO_BIN_EXE_standin")),
        preload: 10_000,
        setup: runner::Setup {
            etcd_members: 3,
            etcd_faults_only: true,
            ..runner::Setup::default()
        },
    })
    .await
}
