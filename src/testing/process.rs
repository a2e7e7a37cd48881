//! A `standin run` child process with its own config file and log, to crash, freeze and restart from a test.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

use super::{TestingError, io, send_signal};

/// A `standin run` process: `binary --config FILE run ARGS`, with the config
/// written to a temporary directory and stderr (its log) appended to a file
/// beside it. Killed (SIGKILL) and reaped on drop, and the directory removed.
///
/// The caller's `STANDIN_*`, `ETCD_ENDPOINTS` and `*_ENABLE_ACTIVE_STANDBY`
/// variables are not passed on: the binary reads them as config overrides,
/// and the test's config must be the whole story. `RUST_LOG` is passed on.
pub struct StandinProcess {
    binary: PathBuf,
    args: Vec<String>,
    /// Variables set on top of what is passed on, kept for restarts.
    env: Vec<(String, String)>,
    child: Child,
    /// Set once the child is reaped: its pid may be another process's by
    /// then, so no signal is sent to it.
    exited: Option<ExitStatus>,
    /// Holds `config.yaml` and `standin.log`; declared last so it is removed
    /// only after the process is gone.
    dir: tempfile::TempDir,
}

impl StandinProcess {
    const CONFIG_FILE: &str = "config.yaml";
    const LOG_FILE: &str = "standin.log";

    /// Writes `config_yaml` to a temporary file and starts
    /// `binary --config FILE run ARGS` (tests pass
    /// `env!("CARGO_BIN_EXE_standin")`). Does not wait for it to serve: poll
    /// its gRPC status for that.
    pub fn spawn(binary: &Path, config_yaml: &str, args: &[&str]) -> Result<Self, TestingError> {
        Self::spawn_with_env(binary, config_yaml, args, &[])
    }

    /// [`spawn`](Self::spawn) with `env` set in its environment (and kept
    /// for restarts): for a test of what the environment does, such as
    /// `STANDIN_*` overrides or the variables a kubelet or systemd sets.
    pub fn spawn_with_env(
        binary: &Path,
        config_yaml: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self, TestingError> {
        let dir = tempfile::Builder::new()
            .prefix("standin-node-")
            .tempdir()
            .map_err(io("creating the node's temporary directory"))?;
        let config = dir.path().join(Self::CONFIG_FILE);
        std::fs::write(&config, config_yaml).map_err(io(format!(
            "writing the node's config to {}",
            config.display()
        )))?;
        let binary = binary.to_owned();
        let args: Vec<String> = args.iter().map(|arg| (*arg).to_owned()).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect();
        let child = Self::launch(&binary, &args, &env, dir.path())?;
        Ok(Self {
            binary,
            args,
            env,
            child,
            exited: None,
            dir,
        })
    }

    fn launch(
        binary: &Path,
        args: &[String],
        env: &[(String, String)],
        dir: &Path,
    ) -> Result<Child, TestingError> {
        // Appended to, so a restarted process's log follows the previous one's.
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(Self::LOG_FILE))
            .map_err(io("opening the node's log file"))?;
        let mut command = Command::new(binary);
        for (name, _) in std::env::vars_os() {
            if let Some(name) = name.to_str()
                && (name.starts_with("STANDIN_")
                    || name == "ETCD_ENDPOINTS"
                    || name.ends_with("_ENABLE_ACTIVE_STANDBY"))
            {
                command.env_remove(name);
            }
        }
        command
            .arg("--config")
            .arg(dir.join(Self::CONFIG_FILE))
            .arg("run")
            .args(args)
            .envs(env.iter().map(|(name, value)| (name, value)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(io(format!("starting {}", binary.display())))
    }

    /// The process id of the current run.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills it with SIGKILL (a stopped one too), as a crash would, and
    /// reaps it. Killing an exited process does nothing.
    pub fn kill(&mut self) -> Result<(), TestingError> {
        if self.try_exit_status().is_some() {
            return Ok(());
        }
        self.child
            .kill()
            .map_err(io("killing the standin process"))?;
        let status = self
            .child
            .wait()
            .map_err(io("reaping the standin process"))?;
        self.exited = Some(status);
        Ok(())
    }

    /// Freezes it (SIGSTOP): its lease keepalives stop, its sockets stay
    /// open, and nothing in it runs until [`cont`](Self::cont).
    pub fn stop(&self) -> Result<(), TestingError> {
        self.signal("STOP")
    }

    /// Thaws a stopped process (SIGCONT).
    pub fn cont(&self) -> Result<(), TestingError> {
        self.signal("CONT")
    }

    /// Asks it to shut down (SIGTERM): it hands its roles over and exits;
    /// [`try_exit_status`](Self::try_exit_status) tells when.
    pub fn terminate(&self) -> Result<(), TestingError> {
        self.signal("TERM")
    }

    fn signal(&self, name: &str) -> Result<(), TestingError> {
        let whom = format!("standin (pid {})", self.child.id());
        if self.exited.is_some() {
            return Err(TestingError::NotRunning {
                what: format!("sending SIG{name} to {whom}"),
            });
        }
        // Not reaped, so the pid is still this child's, even if it exited.
        send_signal(self.child.id(), name, &whom)
    }

    /// Kills it if it runs, then starts it again with the same config and
    /// arguments (a new pid; the log continues in the same file). Does not
    /// wait for it to serve.
    pub fn restart(&mut self) -> Result<(), TestingError> {
        self.kill()?;
        self.child = Self::launch(&self.binary, &self.args, &self.env, self.dir.path())?;
        self.exited = None;
        Ok(())
    }

    /// How the current run ended, once it has; `None` while it runs (or is
    /// stopped).
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// Everything it wrote to stderr so far, over every run (lossily decoded).
    pub fn log(&self) -> String {
        let bytes = std::fs::read(self.dir.path().join(Self::LOG_FILE)).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The last `count` lines of the node's log, for error messages.
    pub fn log_tail(&self, count: usize) -> String {
        super::last_lines(&self.log(), count)
    }

    /// The temporary directory holding `config.yaml` and `standin.log`.
    pub fn temp_dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for StandinProcess {
    fn drop(&mut self) {
        // SIGKILL ends a stopped process too, so no SIGCONT first; an exited
        // one is already reaped, and std sends nothing to it again.
        let _ = self.child.kill();
        // Reaped before drop returns, so its port and lease connection are closed.
        let _ = self.child.wait();
    }
}
