//! The `standin` command line: today it checks a configuration file; running a node comes next.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use standin::Config;

#[derive(Parser)]
#[command(
    version,
    about = "standin: active-standby coordinators on an etcd lease"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Parse and validate a configuration file, then print the effective timings.
    CheckConfig {
        /// The YAML file (see config/standin.yaml).
        #[arg(long, default_value = "config/standin.yaml")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config: path } => match Config::load(&path) {
            Ok(config) => {
                let session = &config.session;
                println!(
                    "{}: ok (ttl {:?}, keepalive every {:?}, renew deadline {:?})",
                    path.display(),
                    session.ttl,
                    session.keepalive_interval(),
                    session.renew_deadline()
                );
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("standin: {error}");
                ExitCode::from(2)
            }
        },
    }
}
