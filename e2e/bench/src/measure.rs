//! Measuring one command: wall time, CPU seconds (user + sys) and peak RSS.
//!
//! The benchmark runs every measured command through `holdfast-bench measure`, a tiny
//! wrapper process whose only child is the command: after waiting for it,
//! `getrusage(RUSAGE_CHILDREN)` in the wrapper is exactly the command's usage (its own
//! waited-for descendants included) and `ru_maxrss` is its peak RSS, not the maximum
//! over every earlier command as it would be in the long-lived benchmark process.

use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::Context;
use nix::sys::resource::{UsageWho, getrusage};
use serde::{Deserialize, Serialize};

/// What one command cost.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Usage {
    pub wall_s: f64,
    pub user_s: f64,
    pub sys_s: f64,
    pub max_rss_kib: u64,
    /// Exit code, or -1 when killed by a signal.
    pub exit_code: i32,
}

impl Usage {
    pub fn cpu_s(&self) -> f64 {
        self.user_s + self.sys_s
    }
}

fn tv(t: nix::sys::time::TimeVal) -> f64 {
    t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6
}

/// The wrapper's side: runs `program args`, inheriting stdio and environment, and
/// writes the [`Usage`] as JSON to `result`.
pub fn wrapper(result: &Path, program: &OsString, args: &[OsString]) -> anyhow::Result<()> {
    let started = Instant::now();
    let status = Command::new(program)
        .args(args)
        .status()
        .with_context(|| format!("starting {}", program.to_string_lossy()))?;
    let wall_s = started.elapsed().as_secs_f64();
    let ru = getrusage(UsageWho::RUSAGE_CHILDREN)?;
    let usage = Usage {
        wall_s,
        user_s: tv(ru.user_time()),
        sys_s: tv(ru.system_time()),
        // Linux reports ru_maxrss in KiB
        max_rss_kib: ru.max_rss().max(0) as u64,
        exit_code: status.code().unwrap_or(-1),
    };
    std::fs::write(result, serde_json::to_vec(&usage)?)?;
    Ok(())
}

/// A command to measure.
#[derive(Clone, Debug)]
pub struct Cmd {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub env: Vec<(String, String)>,
}

impl Cmd {
    pub fn new(program: impl Into<PathBuf>) -> Cmd {
        Cmd {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    pub fn arg(mut self, a: impl Into<OsString>) -> Cmd {
        self.args.push(a.into());
        self
    }

    pub fn args<I, A>(mut self, it: I) -> Cmd
    where
        I: IntoIterator<Item = A>,
        A: Into<OsString>,
    {
        self.args.extend(it.into_iter().map(Into::into));
        self
    }

    pub fn envs(mut self, env: &[(String, String)]) -> Cmd {
        self.env.extend_from_slice(env);
        self
    }

    /// A shell-like rendering for logs.
    pub fn display(&self) -> String {
        let mut s = self.program.display().to_string();
        for a in &self.args {
            s.push(' ');
            s.push_str(&a.to_string_lossy());
        }
        s
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.program);
        c.args(&self.args);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    /// Runs the command unmeasured; stdout is returned, stderr appended to `log`.
    pub fn output(&self, log: &Path) -> anyhow::Result<String> {
        let err = File::options().create(true).append(true).open(log)?;
        let out = self
            .command()
            .stdin(Stdio::null())
            .stderr(err)
            .output()
            .with_context(|| format!("starting {}", self.display()))?;
        if !out.status.success() {
            anyhow::bail!(
                "{} failed ({}); see {}",
                self.display(),
                out.status,
                log.display()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs the command through the measuring wrapper (`self_exe measure`), output
    /// appended to `log`.
    pub fn measure(&self, self_exe: &Path, log: &Path) -> anyhow::Result<Usage> {
        let result = log.with_extension("usage.json");
        let _ = std::fs::remove_file(&result);
        {
            use std::io::Write;
            let mut f = File::options().create(true).append(true).open(log)?;
            writeln!(f, "$ {}", self.display())?;
        }
        let out = File::options().append(true).open(log)?;
        let err = out.try_clone()?;
        let mut c = Command::new(self_exe);
        c.arg("measure")
            .arg("--result")
            .arg(&result)
            .arg("--")
            .arg(&self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        let status = c.status().context("starting the measuring wrapper")?;
        if !status.success() {
            anyhow::bail!("measuring wrapper failed ({status}); see {}", log.display());
        }
        let usage: Usage = serde_json::from_slice(
            &std::fs::read(&result).with_context(|| format!("reading {}", result.display()))?,
        )?;
        if usage.exit_code != 0 {
            anyhow::bail!(
                "{} exited with {}; see {}",
                self.display(),
                usage.exit_code,
                log.display()
            );
        }
        Ok(usage)
    }
}
