//! `scalewise run --config` as a child process, for end-to-end tests that
//! need what only a real process has: its own environment (AWS credentials,
//! `KUBECONFIG`), signals, its own log.
//!
//! The binary's path is the caller's `env!("CARGO_BIN_EXE_scalewise-cli")`
//! (cargo gives it to test targets, not to this library).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context as _, bail};

/// The file in the daemon's folder its stderr (the log) goes to.
pub const LOG_FILE: &str = "daemon.log";
/// The config file the daemon runs, in its folder.
pub const CONFIG_FILE: &str = "scalewise.toml";

/// A running `scalewise run --config scalewise.toml`; killed when dropped.
#[derive(Debug)]
pub struct DaemonProcess {
    child: Child,
    binary: PathBuf,
    dir: PathBuf,
}

impl DaemonProcess {
    /// Writes `config` to `dir/scalewise.toml` and runs `binary` on it in
    /// `dir`, its stderr in `dir/daemon.log`. `environment` adjusts the
    /// child's environment (`.env(...)`, `.env_remove(...)`).
    pub fn start(
        binary: &str,
        dir: &Path,
        config: &str,
        environment: impl FnOnce(&mut Command),
    ) -> anyhow::Result<DaemonProcess> {
        std::fs::write(dir.join(CONFIG_FILE), config)?;
        let mut command = Command::new(binary);
        command
            .args(["run", "--config", CONFIG_FILE])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(LOG_FILE))?);
        environment(&mut command);
        let child = command
            .spawn()
            .with_context(|| format!("starting {binary}"))?;
        Ok(DaemonProcess {
            child,
            binary: binary.into(),
            dir: dir.into(),
        })
    }

    /// What the daemon has logged so far.
    pub fn log(&self) -> String {
        log_in(&self.dir)
    }

    /// The API's address, once the daemon has logged it.
    pub fn api_addr(&self) -> Option<String> {
        self.log()
            .lines()
            .find_map(|l| l.split("The HTTP API is listening. addr=").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_owned)
    }

    /// Stops the daemon as an operator would (SIGTERM) and fails unless it
    /// exits cleanly.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.signal("TERM")?;
        let status = self.child.wait()?;
        if !status.success() {
            bail!("the daemon stopped with {status}:\n{}", self.log());
        }
        Ok(())
    }

    /// Sends the daemon the signal `name` (`TERM`, `INT`, `HUP`).
    pub fn signal(&self, name: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -{name} failed: {status}");
        }
        Ok(())
    }

    /// The daemon's exit status if it exits within `timeout`; `None` if it
    /// still runs then.
    pub fn exited_within(
        &mut self,
        timeout: std::time::Duration,
    ) -> anyhow::Result<Option<std::process::ExitStatus>> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            if std::time::Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// The journal's records of `scaler` as `scalewise journal export`
    /// prints them (JSON lines).
    pub fn journal_export(&self, scaler: &str) -> anyhow::Result<String> {
        journal_export(&self.binary, &self.dir, scaler)
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the daemon that ran in `dir` logged (also after it stopped).
pub fn log_in(dir: &Path) -> String {
    std::fs::read_to_string(dir.join(LOG_FILE)).unwrap_or_default()
}

/// `scalewise journal export --config scalewise.toml --scaler <scaler>` in
/// `dir`.
pub fn journal_export(binary: &Path, dir: &Path, scaler: &str) -> anyhow::Result<String> {
    let out = Command::new(binary)
        .args([
            "journal",
            "export",
            "--config",
            CONFIG_FILE,
            "--scaler",
            scaler,
        ])
        .current_dir(dir)
        .output()?;
    if !out.status.success() {
        bail!(
            "journal export failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// `scalewise run` (at `binary`) in a new folder, scaling the simulated
/// service `web` (2 replicas) with `target-tracking` on the metric `queue`,
/// the PromQL `query` on a Prometheus source at `url` (`source_extra`:
/// more lines of its table, `timeout = "60s"`, say); `metric_extra`: more
/// lines of the metric's table. The folder goes with the returned handle.
pub fn queue_daemon_on_prometheus(
    binary: &str,
    url: &str,
    source_extra: &str,
    query: &str,
    metric_extra: &str,
) -> anyhow::Result<(tempfile::TempDir, DaemonProcess)> {
    let dir = tempfile::tempdir()?;
    std::fs::create_dir(dir.path().join("policies"))?;
    std::fs::copy(
        crate::artifacts::TARGET_TRACKING,
        dir.path().join("policies/target-tracking.wasm"),
    )?;
    let scaler = crate::running::queue_scaler("web", "prom", query);
    let scaler = match metric_extra {
        "" => scaler,
        extra => scaler.replace(
            &format!("query = '{query}'"),
            &format!("query = '{query}'\n{extra}"),
        ),
    };
    let config = format!(
        "policy_dir = \"policies\"\n\n[api]\nlisten = \"127.0.0.1:0\"\n\n\
         [journal]\npath = \"journal.db\"\n\n\
         [sources.prom]\nkind = \"prometheus\"\nurl = \"{url}\"\n{source_extra}\n\n{}{scaler}",
        crate::running::simulation("web", 2),
    );
    let daemon = DaemonProcess::start(binary, dir.path(), &config, |_| {})?;
    Ok((dir, daemon))
}
