//! `check-config` (with `--print`, every effective value and where it came from) and `completion`.

use std::path::Path;

use clap::CommandFactory;
use standin::Config;
use standin::config::{Setting, Source};

use super::output::{Format, print_table, table};
use super::{Failure, usage};

/// `standin check-config`: parses and validates; with `print`, every value
/// and its source. `endpoints_flag`: `--endpoints` replaced `etcd.endpoints`.
pub fn check_config(
    config: &Config,
    path: &Path,
    env: Vec<(String, String)>,
    print: bool,
    endpoints_flag: bool,
    format: Format,
) -> Result<(), Failure> {
    let file = path.display().to_string();
    if !print {
        let session = &config.session;
        println!(
            "{file}: ok (ttl {:?}, keepalive every {:?}, renew deadline {:?})",
            session.ttl,
            session.keepalive_interval(),
            session.renew_deadline()
        );
        return Ok(());
    }
    let text = std::fs::read_to_string(path)
        .map_err(|error| usage(anyhow::anyhow!("reading {file}: {error}")))?;
    let mut settings = Config::explain_with_env(&text, env).map_err(|error| usage(error.into()))?;
    for setting in &mut settings {
        if endpoints_flag && setting.key == "etcd.endpoints" {
            setting.source = Source::Env {
                variable: "--endpoints".to_owned(),
            };
        }
    }
    if format.print_data(&settings)? {
        return Ok(());
    }
    let mut shown = table(&["KEY", "VALUE", "SOURCE"]);
    for Setting { key, value, source } in settings {
        let source = match source {
            Source::File { line } => format!("{file}:{line}"),
            Source::Env { variable } if variable.starts_with("--") => format!("flag {variable}"),
            other => other.to_string(),
        };
        shown.add_row(vec![key, value, source]);
    }
    print_table(&shown);
    Ok(())
}

/// `standin completion SHELL`: the completion script on stdout.
pub fn completion<C: CommandFactory>(shell: clap_complete::Shell) {
    let mut command = C::command();
    let name = command.get_name().to_owned();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, name, &mut script);
    // `standin completion bash | head` closes the pipe early: not a failure.
    let _ = std::io::Write::write_all(&mut std::io::stdout(), &script);
}
