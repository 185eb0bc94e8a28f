//! The four tools: how to create a repository, back up and restore with each, with
//! its default settings (encryption is always on in all four).

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::measure::Cmd;
use crate::minio::{ACCESS_KEY, REGION, SECRET_KEY};

/// Repository password of every tool.
pub const PASSWORD: &str = "holdfast-bench-password";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tool {
    Holdfast,
    Restic,
    Kopia,
    Rustic,
}

impl Tool {
    pub const ALL: [Tool; 4] = [Tool::Holdfast, Tool::Restic, Tool::Kopia, Tool::Rustic];

    pub fn name(self) -> &'static str {
        match self {
            Tool::Holdfast => "holdfast",
            Tool::Restic => "restic",
            Tool::Kopia => "kopia",
            Tool::Rustic => "rustic",
        }
    }

    pub fn parse(s: &str) -> Option<Tool> {
        Tool::ALL.into_iter().find(|t| t.name() == s)
    }
}

/// Binaries of the tools.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub holdfast: PathBuf,
    pub restic: PathBuf,
    pub kopia: PathBuf,
    pub rustic: PathBuf,
}

impl Binaries {
    pub fn of(&self, t: Tool) -> &Path {
        match t {
            Tool::Holdfast => &self.holdfast,
            Tool::Restic => &self.restic,
            Tool::Kopia => &self.kopia,
            Tool::Rustic => &self.rustic,
        }
    }

    /// `--version` (or equivalent) of a tool, first line.
    pub fn version(&self, t: Tool, log: &Path) -> String {
        let cmd = match t {
            Tool::Holdfast => Cmd::new(self.of(t)).arg("--version"),
            Tool::Restic => Cmd::new(self.of(t)).arg("version"),
            Tool::Kopia => Cmd::new(self.of(t)).arg("--version"),
            Tool::Rustic => Cmd::new(self.of(t)).arg("--version"),
        };
        cmd.output(log)
            .map(|s| s.lines().next().unwrap_or("").trim().to_string())
            .unwrap_or_else(|e| format!("unknown ({e})"))
    }
}

/// One tool's repository in one round: its bucket and its private state directory
/// (caches, config, logs).
#[derive(Clone, Debug)]
pub struct Repo {
    pub tool: Tool,
    pub bin: PathBuf,
    pub endpoint: String,
    pub bucket: String,
    pub state: PathBuf,
}

impl Repo {
    /// Environment for every command of this tool. HOME and the XDG directories point
    /// into the state directory so no user configuration (e.g. a rustic profile) or
    /// earlier cache leaks in.
    pub fn env(&self) -> Vec<(String, String)> {
        let st = |p: &str| self.state.join(p).display().to_string();
        let mut e: Vec<(String, String)> = vec![
            ("HOME".into(), st("home")),
            ("XDG_CACHE_HOME".into(), st("cache")),
            ("XDG_CONFIG_HOME".into(), st("config")),
            ("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), SECRET_KEY.into()),
        ];
        match self.tool {
            Tool::Holdfast => {
                e.push((
                    "HOLDFAST_REPOSITORY".into(),
                    format!("s3:{}/{}", self.endpoint, self.bucket),
                ));
                e.push(("HOLDFAST_REPOSITORY_PASSWORD".into(), PASSWORD.into()));
                e.push(("HOLDFAST_S3_REGION".into(), REGION.into()));
            }
            Tool::Restic => {
                e.push((
                    "RESTIC_REPOSITORY".into(),
                    format!("s3:{}/{}", self.endpoint, self.bucket),
                ));
                e.push(("RESTIC_PASSWORD".into(), PASSWORD.into()));
                e.push(("AWS_DEFAULT_REGION".into(), REGION.into()));
            }
            Tool::Kopia => {
                e.push(("KOPIA_PASSWORD".into(), PASSWORD.into()));
                e.push(("KOPIA_CONFIG_PATH".into(), st("kopia/repository.config")));
                e.push(("KOPIA_LOG_DIR".into(), st("kopia/logs")));
                e.push(("KOPIA_CACHE_DIRECTORY".into(), st("cache/kopia")));
                e.push(("KOPIA_CHECK_FOR_UPDATES".into(), "false".into()));
                e.push(("KOPIA_USE_KEYRING".into(), "false".into()));
            }
            Tool::Rustic => {
                e.push(("RUSTIC_REPOSITORY".into(), "opendal:s3".into()));
                e.push(("RUSTIC_PASSWORD".into(), PASSWORD.into()));
                e.push(("OPENDAL_BUCKET".into(), self.bucket.clone()));
                e.push(("OPENDAL_ENDPOINT".into(), self.endpoint.clone()));
                e.push(("OPENDAL_REGION".into(), REGION.into()));
                e.push(("OPENDAL_ACCESS_KEY_ID".into(), ACCESS_KEY.into()));
                e.push(("OPENDAL_SECRET_ACCESS_KEY".into(), SECRET_KEY.into()));
                e.push(("OPENDAL_ROOT".into(), "/".into()));
            }
        }
        e
    }

    fn cmd(&self) -> Cmd {
        Cmd::new(&self.bin).envs(&self.env())
    }

    /// Creates the state directories.
    pub fn prepare(&self) -> anyhow::Result<()> {
        for d in ["home", "cache", "config", "kopia/logs", "logs"] {
            std::fs::create_dir_all(self.state.join(d))?;
        }
        Ok(())
    }

    pub fn log(&self, what: &str) -> PathBuf {
        self.state.join("logs").join(format!("{what}.log"))
    }

    /// Creates the repository (not measured).
    pub fn init(&self) -> Cmd {
        match self.tool {
            Tool::Holdfast => self.cmd().args(["mover", "init"]),
            Tool::Restic => self.cmd().arg("init"),
            Tool::Kopia => {
                let hostport = self.endpoint.trim_start_matches("http://").to_string();
                self.cmd().args([
                    "repository".to_string(),
                    "create".into(),
                    "s3".into(),
                    format!("--bucket={}", self.bucket),
                    format!("--endpoint={hostport}"),
                    "--disable-tls".into(),
                    format!("--region={REGION}"),
                    format!("--access-key={ACCESS_KEY}"),
                    format!("--secret-access-key={SECRET_KEY}"),
                ])
            }
            Tool::Rustic => self.cmd().arg("init"),
        }
    }

    /// Backs up directory `source` (the parent snapshot is found by each tool's
    /// default rule: same host and path).
    pub fn backup(&self, source: &Path) -> Cmd {
        match self.tool {
            Tool::Holdfast => self.cmd().args(["mover", "backup", "--source"]).arg(source),
            Tool::Restic => self.cmd().arg("backup").arg(source),
            Tool::Kopia => self.cmd().args(["snapshot", "create"]).arg(source),
            Tool::Rustic => self.cmd().arg("backup").arg(source),
        }
    }

    /// Restores the latest snapshot of `source` into `target`. Kopia needs the root
    /// object id of the snapshot, looked up here (not measured).
    pub fn restore(&self, source: &Path, target: &Path) -> anyhow::Result<Cmd> {
        Ok(match self.tool {
            Tool::Holdfast => self
                .cmd()
                .args(["mover", "restore", "--snapshot", "latest", "--target"])
                .arg(target),
            Tool::Restic => self
                .cmd()
                .args(["restore", "latest", "--target"])
                .arg(target),
            Tool::Kopia => {
                let out = self
                    .cmd()
                    .args(["snapshot", "list", "--json"])
                    .arg(source)
                    .output(&self.log("kopia-snapshot-list"))?;
                let list: Vec<serde_json::Value> =
                    serde_json::from_str(&out).context("kopia snapshot list --json")?;
                let obj = list
                    .iter()
                    .filter_map(|s| {
                        Some((
                            s.get("startTime")?.as_str()?.to_string(),
                            s.get("rootEntry")?.get("obj")?.as_str()?.to_string(),
                        ))
                    })
                    .max()
                    .map(|(_, obj)| obj)
                    .context("kopia has no snapshot of the source")?;
                self.cmd()
                    .args(["snapshot", "restore"])
                    .arg(obj)
                    .arg(target)
            }
            Tool::Rustic => self.cmd().args(["restore", "latest"]).arg(target),
        })
    }

    /// Where the restored copy of `source` is under `target`: restic and rustic
    /// restore the snapshot's absolute path below the target, holdfast and kopia the
    /// source directory's contents.
    pub fn restored_root(&self, source: &Path, target: &Path) -> PathBuf {
        match self.tool {
            Tool::Holdfast | Tool::Kopia => target.to_path_buf(),
            Tool::Restic | Tool::Rustic => target.join(source.strip_prefix("/").unwrap_or(source)),
        }
    }
}
