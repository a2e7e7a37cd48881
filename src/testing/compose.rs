//! deploy/compose/compose.yaml under podman-compose, from images this build's binary is put in: the containers, to kill, stop and restart from a test or the bench.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};

use super::{TestingError, io, last_lines, send_signal};

/// What a test or the bench does to a node, whether a process or a container.
pub trait NodeProcess: Send {
    /// Kills it with SIGKILL, as a crash would.
    fn kill(&mut self) -> Result<(), TestingError>;
    /// Asks it to shut down (SIGTERM): it hands its roles over and exits.
    fn terminate(&self) -> Result<(), TestingError>;
    /// Kills it if it runs, then starts it again; does not wait for it to serve.
    fn restart(&mut self) -> Result<(), TestingError>;
    /// How its current run ended, once it has.
    fn try_exit_status(&mut self) -> Option<ExitStatus>;
    /// Everything it logged so far, over every run.
    fn log(&self) -> String;
    /// The last `count` lines of its log.
    fn log_tail(&self, count: usize) -> String {
        last_lines(&self.log(), count)
    }
    /// Its process ID on this host, while it runs.
    fn pid(&self) -> Option<u32>;
}

impl NodeProcess for super::StandinProcess {
    fn kill(&mut self) -> Result<(), TestingError> {
        super::StandinProcess::kill(self)
    }
    fn terminate(&self) -> Result<(), TestingError> {
        super::StandinProcess::terminate(self)
    }
    fn restart(&mut self) -> Result<(), TestingError> {
        super::StandinProcess::restart(self)
    }
    fn try_exit_status(&mut self) -> Option<ExitStatus> {
        super::StandinProcess::try_exit_status(self)
    }
    fn log(&self) -> String {
        super::StandinProcess::log(self)
    }
    fn pid(&self) -> Option<u32> {
        Some(super::StandinProcess::pid(self))
    }
}

/// Runs `command`, failing with what it printed when it fails.
fn run(command: &mut Command) -> Result<Output, TestingError> {
    let what = format!("{command:?}");
    let output = command.output().map_err(io(what.clone()))?;
    if output.status.success() {
        return Ok(output);
    }
    Err(TestingError::Io {
        what,
        source: std::io::Error::other(format!(
            "{}: {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )),
    })
}

fn podman(args: &[&str]) -> Result<String, TestingError> {
    let output = run(Command::new("podman").args(args))?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// The compose cluster of deploy/compose/compose.yaml, brought up under its
/// own project name with its own secrets; taken down, volumes and all, on drop.
pub struct ComposeCluster {
    project: String,
    /// Set once [`down`](Self::down) took it down: nothing left for drop.
    down: bool,
    /// Holds compose.yaml and secrets/.
    dir: tempfile::TempDir,
}

impl ComposeCluster {
    /// etcd's client address in compose.yaml.
    pub const ETCD: &str = "127.0.0.10:2379";
    /// The nodes' API addresses in compose.yaml.
    pub const NODES: [&str; 3] = ["127.0.0.11:19530", "127.0.0.12:19530", "127.0.0.13:19530"];

    /// Builds `localhost/standin:PROJECT` around `binary` and
    /// `localhost/standin-etcd:PROJECT` around the `etcd` on PATH (with
    /// `repo`'s deploy/image.sh), makes fresh secrets, and starts the
    /// cluster as compose project `project` (one left over from an earlier
    /// run is taken down first). Does not wait for it to serve.
    pub fn up(repo: &Path, binary: &Path, project: &str) -> Result<Self, TestingError> {
        let etcd = which("etcd")?;
        // Built afresh each time: no image of an earlier build is ever run.
        let [image, etcd_image] = Self::images_of(project);
        let build = repo.join("deploy/image.sh");
        run(Command::new(&build).arg("standin").arg(binary).arg(&image))?;
        run(Command::new(&build).arg("etcd").arg(&etcd).arg(&etcd_image))?;
        let dir = tempfile::Builder::new()
            .prefix("standin-compose-")
            .tempdir()
            .map_err(io("creating the compose directory"))?;
        std::fs::copy(
            repo.join("deploy/compose/compose.yaml"),
            dir.path().join("compose.yaml"),
        )
        .map_err(io("copying compose.yaml"))?;
        run(Command::new(repo.join("deploy/compose/secrets.sh")).arg(dir.path().join("secrets")))?;
        let cluster = Self {
            project: project.to_owned(),
            down: false,
            dir,
        };
        let _ = cluster.compose(&["down", "-v"]).output();
        run(cluster
            .compose(&["up", "-d"])
            .env("IMAGE", &image)
            .env("ETCD_IMAGE", &etcd_image))?;
        Ok(cluster)
    }

    fn compose(&self, args: &[&str]) -> Command {
        let mut command = Command::new("podman-compose");
        command
            .arg("-p")
            .arg(&self.project)
            .arg("-f")
            .arg(self.dir.path().join("compose.yaml"))
            .args(args);
        command
    }

    /// The container name of node `node` (0-2).
    pub fn container(&self, node: usize) -> String {
        format!("{}_node{}_1", self.project, node + 1)
    }

    /// Node `node`'s container, to act on.
    pub fn node(&self, node: usize) -> Container {
        let mut container = Container {
            name: self.container(node),
            pid: None,
        };
        container.pid = container.main_pid();
        container
    }

    /// The token file the cluster's API accepts.
    pub fn token_file(&self) -> PathBuf {
        self.dir.path().join("secrets/api-token")
    }

    /// Runs the image's health check (`standin probe`) in node `node`'s container.
    pub fn healthy(&self, node: usize) -> bool {
        Command::new("podman")
            .args(["healthcheck", "run", &self.container(node)])
            .output()
            .is_ok_and(|output| output.status.success())
    }

    /// `podman-compose down -v` and the project's images removed, then what
    /// podman still holds of the project: container, volume and image
    /// names (none, when all went well).
    pub fn down(mut self) -> Result<Vec<String>, TestingError> {
        self.take_down()?;
        self.down = true;
        let label = format!("label=io.podman.compose.project={}", self.project);
        let mut left: Vec<String> =
            podman(&["ps", "-a", "--format", "{{.Names}}", "--filter", &label])?
                .lines()
                .map(str::to_owned)
                .collect();
        let volumes = podman(&["volume", "ls", "--format", "{{.Name}}"])?;
        left.extend(
            volumes
                .lines()
                .filter(|name| name.starts_with(&format!("{}_", self.project)))
                .map(str::to_owned),
        );
        let images = podman(&["images", "--format", "{{.Repository}}:{{.Tag}}"])?;
        left.extend(
            images
                .lines()
                .filter(|image| {
                    Self::images_of(&self.project)
                        .iter()
                        .any(|ours| ours == image)
                })
                .map(str::to_owned),
        );
        Ok(left)
    }

    /// The images [`up`](Self::up) builds for `project`: the node's, etcd's.
    fn images_of(project: &str) -> [String; 2] {
        [
            format!("localhost/standin:{project}"),
            format!("localhost/standin-etcd:{project}"),
        ]
    }

    fn take_down(&self) -> Result<(), TestingError> {
        run(&mut self.compose(&["down", "-v"]))?;
        let [image, etcd_image] = Self::images_of(&self.project);
        podman(&["rmi", "--ignore", &image, &etcd_image]).map(drop)
    }
}

impl Drop for ComposeCluster {
    fn drop(&mut self) {
        if !self.down {
            let _ = self.take_down();
        }
    }
}

fn which(program: &str) -> Result<String, TestingError> {
    let found = run(Command::new("sh").args(["-c", &format!("command -v {program}")]))?;
    Ok(String::from_utf8_lossy(&found.stdout).trim().to_owned())
}

/// One container of a [`ComposeCluster`]. Signals go straight to its
/// process (as the kernel's OOM killer's would), so that a test times the
/// act itself and not `podman kill`'s tens of milliseconds of start-up.
pub struct Container {
    name: String,
    /// The host's PID of its process, as of the last (re)start.
    pid: Option<u32>,
}

impl Container {
    fn state(&self, field: &str) -> Result<String, TestingError> {
        podman(&[
            "inspect",
            "--format",
            &format!("{{{{.State.{field}}}}}"),
            &self.name,
        ])
    }

    fn main_pid(&self) -> Option<u32> {
        self.state("Pid").ok()?.parse().ok().filter(|&pid| pid != 0)
    }

    fn running(&self) -> bool {
        self.state("Running").is_ok_and(|running| running == "true")
    }

    fn signal(&self, name: &str) -> Result<(), TestingError> {
        let pid = self.pid.ok_or_else(|| TestingError::NotRunning {
            what: format!("sending SIG{name} to container {}", self.name),
        })?;
        send_signal(pid, name, &format!("container {} (pid {pid})", self.name))
    }

    /// `podman stop`: SIGTERM, then SIGKILL after `grace_secs`; returns once it has exited.
    pub fn stop(&mut self, grace_secs: u32) -> Result<(), TestingError> {
        podman(&["stop", "-t", &grace_secs.to_string(), &self.name])?;
        self.pid = None;
        Ok(())
    }
}

impl NodeProcess for Container {
    fn kill(&mut self) -> Result<(), TestingError> {
        self.signal("KILL")?;
        self.pid = None;
        Ok(())
    }

    fn terminate(&self) -> Result<(), TestingError> {
        self.signal("TERM")
    }

    fn restart(&mut self) -> Result<(), TestingError> {
        let old = self.pid;
        if old.is_some() {
            self.kill()?;
        }
        // podman must have seen the exit before the container starts again;
        // its restart policy (on-failure) may have started it by itself.
        let deadline = std::time::Duration::from_secs(30);
        let since = std::time::Instant::now();
        loop {
            if !self.running() {
                podman(&["start", &self.name])?;
                break;
            }
            let pid = self.main_pid();
            if pid.is_some() && pid != old {
                break;
            }
            if since.elapsed() > deadline {
                return Err(TestingError::TimedOut {
                    what: format!("container {} to exit", self.name),
                    deadline,
                    last: None,
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        self.pid = self.main_pid();
        Ok(())
    }

    fn try_exit_status(&mut self) -> Option<ExitStatus> {
        if self.running() {
            return None;
        }
        let code: i32 = self.state("ExitCode").ok()?.parse().ok()?;
        Some(ExitStatus::from_raw(code << 8))
    }

    fn log(&self) -> String {
        Command::new("podman")
            .args(["logs", &self.name])
            .output()
            .map(|output| {
                let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
                text.push_str(&String::from_utf8_lossy(&output.stderr));
                text
            })
            .unwrap_or_default()
    }

    fn pid(&self) -> Option<u32> {
        self.pid
    }
}
