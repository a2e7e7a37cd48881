//! A fault campaign against three `standin run --role tso --role kv` processes: seeded random faults on a role's leader, then a check of every timestamp, register read and leadership interval.
//!
//! `cargo build --release --features cli --bin standin && cargo run --release -p
//! standin-tools --bin campaign -- --faults 500 [--seed S] [--etcd-members 3]` (or `make campaign`,
//! `make campaign CAMPAIGN_ARGS="--etcd-members 3"`). The last line
//! is `campaign: seed=S faults=N violations=V max_unavailable_ms=M`; the exit
//! code is non-zero when V > 0. The line before it measures the overlap of
//! operator-forced takeovers: `campaign: forced-overlap n=.. p50_ms=..
//! p99_ms=.. max_ms=.. surely_max_ms=..`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use standin_tools::campaign::runner;
use standin_tools::driver;

#[derive(Parser)]
#[command(
    about = "Inject seeded random faults into a 3-node standin tso + kv cluster and check the history",
    // A later flag wins, so `make campaign CAMPAIGN_ARGS="--faults 50"` overrides the default.
    args_override_self = true
)]
struct Args {
    /// How many faults to inject.
    #[arg(long, default_value_t = 30)]
    faults: usize,
    /// Seed of the fault sequence; random (and printed) when absent.
    #[arg(long)]
    seed: Option<u64>,
    /// The standin binary; by default `standin` beside this one in the target directory.
    #[arg(long)]
    binary: Option<PathBuf>,
    /// Keys of 100 bytes put under the kv role's metadata halfway through (0: none).
    #[arg(long, default_value_t = 100_000)]
    preload_keys: usize,
    #[command(flatten)]
    setup: runner::Setup,
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    // Errors only by default: the clients' retries while they follow a
    // failover are expected, and each fault already has its line.
    driver::init_logging();
    let binary = driver::standin_binary(args.binary)?;
    let summary = runner::run(runner::Options {
        faults: args.faults,
        seed: args.seed.unwrap_or_else(rand::random),
        binary,
        preload: args.preload_keys,
        setup: args.setup,
    })
    .await?;
    println!("{}", summary.line());
    Ok(if summary.violations == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
