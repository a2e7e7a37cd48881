//! The `standin` command line: run a node with the built-in roles, and inspect, steer and use a deployment.

mod cli;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use cli::client::{KvOp, TsoArgs};
use cli::output::Format;
use cli::run::RunArgs;
use cli::{Failure, usage};
use standin::{Config, TransferTarget};

#[derive(Parser)]
#[command(
    name = "standin",
    version = standin::telemetry::BUILD,
    about = "standin: active-standby coordinators on an etcd lease"
)]
struct Cli {
    /// The YAML configuration (see config/standin.yaml); STANDIN_* variables override it.
    #[arg(long, global = true, default_value = "config/standin.yaml")]
    config: PathBuf,
    /// etcd endpoints, comma-separated: replaces etcd.endpoints (and ETCD_ENDPOINTS).
    #[arg(long, global = true, env = "ETCDCTL_ENDPOINTS", value_delimiter = ',')]
    endpoints: Vec<String>,
    /// One-shot commands (status, resign, tso, and watch until it first
    /// reads etcd) give up after this long when etcd or a node does not answer.
    #[arg(long, global = true, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// How results are printed (etcdctl: -w/--write-out).
    #[arg(short = 'o', long = "output", visible_short_alias = 'w', visible_alias = "write-out",
          global = true, value_enum, default_value_t = Format::Text)]
    output: Format,
    /// Log lines as text or as JSON objects (one per line, for log shippers).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node serving the built-in roles over gRPC, until SIGTERM or Ctrl-C.
    Run {
        /// A role to run (repeatable); every built-in role when neither
        /// --role nor --idle-roles is given.
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Also run N idle roles (idle-0000, idle-0001, ...): coordinators
        /// that hold a term and serve nothing, to size a node that runs many roles.
        #[arg(long, default_value_t = 0)]
        idle_roles: usize,
        /// Where the gRPC server listens; node.address when absent.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// The address published for clients (NAT, containers); node.address, else --listen, when absent.
        #[arg(long)]
        advertise: Option<String>,
        /// Where Prometheus scrapes /metrics (and probes /healthz, /readyz, /status):
        /// PORT (on 127.0.0.1) or HOST:PORT (0.0.0.0:PORT exposes it on every
        /// interface); none when absent.
        #[arg(long, value_parser = metrics_address)]
        metrics: Option<SocketAddr>,
        /// Serve the Faults gRPC service, which makes actors crash on request (tests only).
        #[arg(long)]
        fault_injection: bool,
    },
    /// Every role's leader and standbys, from etcd; -o wide adds what each node reports.
    Status {
        /// Ask only this node (its gRPC address) what it reports about its roles.
        #[arg(long)]
        node: Option<String>,
        /// Same as -o json.
        #[arg(long, hide = true)]
        json: bool,
    },
    /// Ask the leader of ROLE to hand it over gracefully: to whoever is next, or to a chosen standby.
    Resign {
        /// The role.
        role: String,
        /// Hand the role to this standby: its server ID or the address it publishes.
        #[arg(long, value_parser = transfer_target)]
        to: Option<TransferTarget>,
    },
    /// Print leader changes as they happen (-o json: one object per line).
    Watch {
        /// Only this role.
        role: Option<String>,
    },
    /// Allocate timestamps from the tso role through the failover-following client.
    Tso {
        /// Timestamps per allocation.
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Keep allocating, checking order and reporting each failover ridden through.
        #[arg(long = "loop")]
        repeat: bool,
        /// With --loop: stop after this long (until Ctrl-C when absent).
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        /// Give up on one allocation after this long.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        deadline: Duration,
        /// With --loop: tasks allocating at once through the one batching
        /// client, each checking its own order (as pd-tso-bench's -c); the
        /// summary gives timestamps per second and p50/p99 per call.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        callers: u32,
        /// Streams the client keeps to the leader, each batching what waits.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
        streams: u32,
    },
    /// Put or get a key of the kv role (the built-in register) through the failover-following client.
    Kv {
        #[command(subcommand)]
        op: KvOp,
        /// Give up on the call after this long.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        deadline: Duration,
    },
    /// Parse and validate the configuration, then print the effective timings.
    CheckConfig {
        /// Print every effective value and where it came from (default, file line, variable).
        #[arg(long)]
        print: bool,
    },
    /// Exits 0 when the node answers and each of its roles holds a live etcd
    /// session (leading or not): a container health check, a readiness probe.
    Probe {
        /// The node's gRPC address; node.address (else 127.0.0.1:19530) when absent.
        #[arg(long)]
        address: Option<String>,
        /// Only ask that the process answers: a liveness probe, which an
        /// etcd outage must not fail (restarting the node would not help).
        #[arg(long)]
        live: bool,
    },
    /// Print a shell completion script: `source <(standin completion bash)`.
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A node logs what it does; a one-shot command's output is its answer,
    // and its failure one line, so its retries stay quiet unless RUST_LOG asks.
    // ractor's per-actor `Actor` span is at info: kept open for each actor's
    // life, it costs a node of a thousand roles a few megabytes and adds
    // nothing the role fields in our events do not say.
    let default_filter = match cli.command {
        Command::Run { .. } => "info,ractor=warn",
        _ => "error",
    };
    init_logging(default_filter, cli.log_format);
    // A coordinator's panic is taken over only once the hook returns.
    standin::telemetry::install_panic_hook();
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime starts");
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("standin: {}", cli::describe(&failure.error));
            ExitCode::from(failure.code)
        }
    }
}

fn init_logging(default_filter: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| default_filter.into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => logs.json().init(),
        // Colour codes only for a person watching, not in a log file.
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

async fn dispatch(cli: Cli) -> Result<(), Failure> {
    if let Command::Completion { shell } = cli.command {
        cli::settings::completion::<Cli>(shell);
        return Ok(());
    }
    let env = environment(&cli.endpoints);
    let config = load_config(&cli.config, env.clone())?;
    let (timeout, output) = (cli.timeout, cli.output);
    match cli.command {
        Command::Run {
            roles,
            idle_roles,
            listen,
            advertise,
            metrics,
            fault_injection,
        } => {
            let args = RunArgs {
                roles,
                idle_roles,
                listen,
                advertise,
                metrics,
                fault_injection,
            };
            cli::run::run(config, args).await
        }
        Command::Status { node, json } => {
            let output = if json { Format::Json } else { output };
            cli::inspect::status(&config, output, node, timeout).await
        }
        Command::Resign { role, to } => {
            cli::steer::resign(&config, &role, to, output, timeout).await
        }
        Command::Watch { role } => cli::inspect::watch(&config, role, output, timeout).await,
        Command::Tso {
            count,
            repeat,
            duration,
            deadline,
            callers,
            streams,
        } => {
            let args = TsoArgs {
                count,
                repeat,
                duration,
                deadline,
                callers: callers as usize,
                streams: streams as usize,
            };
            cli::client::tso(&config, args, output, timeout).await
        }
        Command::Kv { op, deadline } => {
            cli::client::kv(&config, op, deadline, output, timeout).await
        }
        Command::Probe { address, live } => {
            cli::steer::probe(&config, address, live, output, timeout).await
        }
        Command::CheckConfig { print } => {
            let endpoints = !cli.endpoints.is_empty();
            cli::settings::check_config(&config, &cli.config, env, print, endpoints, output)
        }
        Command::Completion { .. } => unreachable!("answered before the config is read"),
    }
}

/// The process's environment, with `--endpoints` as the variable that wins
/// over the file and over every other name for the same key.
fn environment(endpoints: &[String]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = std::env::vars().collect();
    if !endpoints.is_empty() {
        env.retain(|(name, _)| name != "STANDIN_ETCD_ENDPOINTS" && name != "ETCD_ENDPOINTS");
        env.push(("STANDIN_ETCD_ENDPOINTS".to_owned(), endpoints.join(",")));
    }
    env
}

/// `--metrics`: a port alone binds loopback, so metrics leave the host
/// only when an address says so.
fn metrics_address(value: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = value.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    value
        .parse()
        .map_err(|_| format!("{value:?} is neither a port nor HOST:PORT"))
}

fn transfer_target(value: &str) -> Result<TransferTarget, String> {
    value.parse()
}

fn load_config(path: &Path, env: Vec<(String, String)>) -> Result<Config, Failure> {
    if !path.exists() {
        return Err(usage(anyhow::anyhow!(
            "config file {} not found: pass --config FILE (config/standin.yaml documents every key)",
            path.display()
        )));
    }
    Config::load_with_env(path, env).map_err(|error| usage(error.into()))
}

#[cfg(test)]
mod tests {
    use super::metrics_address;

    #[test]
    fn a_metrics_port_alone_binds_loopback_and_an_address_is_taken_as_given() {
        assert_eq!(
            metrics_address("9100").unwrap().to_string(),
            "127.0.0.1:9100"
        );
        assert_eq!(
            metrics_address("0.0.0.0:9100").unwrap().to_string(),
            "0.0.0.0:9100"
        );
        assert_eq!(
            metrics_address("[::1]:9100").unwrap().to_string(),
            "[::1]:9100"
        );
        let error = metrics_address("metrics").unwrap_err();
        assert!(error.contains("neither a port nor HOST:PORT"), "{error}");
    }
}
