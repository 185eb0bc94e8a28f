//! The contract between the controllers and the mover pods, used by both sides: environment
//! variable names, exit codes, the JSON lines the mover prints for backups and restores, and
//! the builder of the mover's command line. Pure.
//!
//! The controller reads a mover's progress and result only through [`BackupEvent`],
//! [`RestoreEvent`] and [`MaintenanceEvent`]; renaming a field here changes both sides at once.

use serde::{Deserialize, Serialize};

/// Environment variables the mover reads (set by the controller on mover pods).
pub mod env {
    /// Repository URL (`s3:<endpoint>/<bucket>/<prefix>` or a local path).
    pub const REPOSITORY: &str = "HOLDFAST_REPOSITORY";
    /// Repository password.
    pub const PASSWORD: &str = "HOLDFAST_REPOSITORY_PASSWORD";
    pub const S3_REGION: &str = "HOLDFAST_S3_REGION";
    /// `true`: virtual-hosted-style addressing instead of path-style.
    pub const S3_VIRTUAL_HOSTED: &str = "HOLDFAST_S3_VIRTUAL_HOSTED";
    /// Path of a PEM file with extra CA certificates.
    pub const S3_CA_BUNDLE: &str = "HOLDFAST_S3_CA_BUNDLE";
    pub const S3_STORAGE_CLASS: &str = "HOLDFAST_S3_STORAGE_CLASS";
    /// `true`: do not verify the S3 endpoint's certificate (`insecureSkipTlsVerify`).
    pub const S3_INSECURE_SKIP_TLS_VERIFY: &str = "HOLDFAST_S3_INSECURE_SKIP_TLS_VERIFY";
    /// Attempts per S3 request.
    pub const S3_ATTEMPTS: &str = "HOLDFAST_S3_ATTEMPTS";
    /// `true`: SigV4-sign every PUT body (a SHA-256 of it) instead of sending
    /// `UNSIGNED-PAYLOAD` (with a CRC32C over plain http); for S3-compatible servers that
    /// refuse either.
    pub const S3_SIGNED_PAYLOADS: &str = "HOLDFAST_S3_SIGNED_PAYLOADS";
    /// The mover's host name: in its repository locks (the operator sets the pod's name), and
    /// in snapshots when `--host` is not given.
    pub const HOSTNAME: &str = "HOLDFAST_HOSTNAME";
    pub const AWS_ACCESS_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
    pub const AWS_SECRET_ACCESS_KEY: &str = "AWS_SECRET_ACCESS_KEY";
    pub const AWS_SESSION_TOKEN: &str = "AWS_SESSION_TOKEN";
}

/// Exit codes of `holdfast mover`.
pub mod exit {
    pub const SUCCESS: i32 = 0;
    /// Failed; the log says why.
    pub const FAILED: i32 = 1;
    /// Done, but some files could not be read or some metadata not applied.
    pub const PARTIAL: u8 = 2;
    /// Nothing to do (no snapshot to restore or list, nothing to forget or prune).
    pub const NOTHING_TO_DO: u8 = 3;
}

/// How a mover process ended, from its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Succeeded,
    /// Done with some files or metadata not handled ([`exit::PARTIAL`]).
    Partial,
    NothingToDo,
    Failed(i32),
}

impl Exit {
    pub fn from_code(code: i32) -> Self {
        match code {
            exit::SUCCESS => Exit::Succeeded,
            c if c == i32::from(exit::PARTIAL) => Exit::Partial,
            c if c == i32::from(exit::NOTHING_TO_DO) => Exit::NothingToDo,
            c => Exit::Failed(c),
        }
    }
}

/// Counters of a backup, printed while it runs and in its summary.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct BackupCounters {
    pub files_new: u64,
    pub files_changed: u64,
    pub files_unmodified: u64,
    pub dirs: u64,
    /// Bytes of all files in the source.
    pub bytes_total: u64,
    /// File bytes read (not skipped by the parent comparison).
    pub bytes_read: u64,
    /// Plaintext bytes of new blobs.
    pub bytes_new: u64,
    pub blobs_new: u64,
    /// Bytes uploaded (packs, index, snapshot).
    pub bytes_uploaded: u64,
    pub packs_uploaded: u64,
}

/// The JSON lines of `holdfast mover --json backup`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum BackupEvent {
    /// Every 2 s while the backup runs.
    Progress(BackupCounters),
    /// A file that could not be read (the backup goes on; exit code [`exit::PARTIAL`]).
    Error { message: String },
    /// The result.
    Summary {
        #[serde(flatten)]
        counters: BackupCounters,
        /// Id of the new repository snapshot.
        snapshot: String,
        parent: Option<String>,
        seconds: f64,
        /// Files that could not be read.
        errors: u64,
    },
}

/// The JSON lines of `holdfast mover --json restore`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum RestoreEvent {
    /// Every 2 s while the restore runs: bytes written (holes included).
    Progress {
        bytes: u64,
        seconds: f64,
    },
    NothingToDo {
        reason: String,
    },
    /// The result.
    Summary {
        files: u64,
        dirs: u64,
        bytes: u64,
        seconds: f64,
        warnings: Vec<String>,
    },
}

/// What `holdfast mover prune` did.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct PruneReport {
    pub dry_run: bool,
    pub grace_seconds: u64,
    pub snapshots: u64,
    pub packs_total: u64,
    pub packs_newly_marked: u64,
    pub packs_waiting: u64,
    pub packs_deleted: u64,
    pub packs_repacked: u64,
    pub packs_written: u64,
    pub blobs_repacked: u64,
    pub bytes_repacked: u64,
    /// Bytes of packs deleted (the space reclaimed).
    pub bytes_freed: u64,
    pub bytes_unused_remaining: u64,
    pub index_files_written: u64,
    pub index_files_removed: u64,
    pub seconds: f64,
}

/// The JSON lines of `holdfast mover --json prune` and `check`, read by repository
/// maintenance.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum MaintenanceEvent {
    /// The result of a prune.
    Prune(PruneReport),
    /// A problem check found (missing or damaged data).
    Error { message: String },
    /// A harmless finding of check.
    Warning { message: String },
    /// The result of a check.
    Summary {
        ok: bool,
        errors: u64,
        warnings: u64,
        packs: u64,
        packs_read: u64,
        snapshots: u64,
        seconds: f64,
    },
}

/// A prune (`--grace` in seconds).
#[derive(Debug, Clone, PartialEq)]
pub struct PruneCommand {
    pub grace_seconds: u64,
}

impl PruneCommand {
    /// Arguments of the `holdfast` binary.
    pub fn args(&self) -> Vec<String> {
        let g = format!("{}s", self.grace_seconds);
        ["mover", "--json", "prune", "--grace", &g]
            .map(String::from)
            .into()
    }
}

/// A check reading `read_percent` of the packs (0: structure only), chosen by `seed`.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckCommand {
    pub read_percent: u8,
    pub seed: u64,
}

impl CheckCommand {
    /// Arguments of the `holdfast` binary.
    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = ["mover", "--json", "check"].map(String::from).into();
        if self.read_percent >= 100 {
            a.push("--read-data".into());
        } else if self.read_percent > 0 {
            a.extend([
                "--read-data-subset".into(),
                self.read_percent.to_string(),
                "--seed".into(),
                self.seed.to_string(),
            ]);
        }
        a
    }
}

/// An event line as printed: the event itself, one JSON object per line.
pub fn line<E: Serialize>(event: &E) -> String {
    serde_json::to_string(event)
        .unwrap_or_else(|e| format!(r#"{{"event":"error","message":"{e}"}}"#))
}

/// The events of type `E` in a log (other lines are skipped), oldest first.
pub fn events<'a, E: Deserialize<'a>>(log: &'a str) -> impl DoubleEndedIterator<Item = E> + 'a {
    log.lines()
        .filter_map(|l| serde_json::from_str::<E>(l.trim()).ok())
}

/// Messages of the mover's last lines that explain a failure: its `error` events and any
/// line that is not JSON (anyhow's final error), at most 3, oldest first.
pub fn failure_lines(log: &str) -> Vec<String> {
    let mut out: Vec<String> = log
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .filter_map(|l| match serde_json::from_str::<serde_json::Value>(l) {
            Ok(_) => match serde_json::from_str::<BackupEvent>(l) {
                Ok(BackupEvent::Error { message }) => Some(message),
                _ => None,
            },
            Err(_) => Some(l.to_string()),
        })
        .collect();
    let keep = out.len().saturating_sub(3);
    out.drain(..keep);
    out
}

/// Compression of new data (`--compression`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompressionArg {
    Auto,
    Off,
    Max,
}

/// What a backup mover is asked to do.
#[derive(Debug, Clone, PartialEq)]
pub struct BackupCommand {
    /// Directory or block device to read.
    pub source: String,
    /// Host recorded in the snapshot (`<namespace>/<claim>`): finds the parent next time.
    pub host: String,
    pub tags: Vec<String>,
    pub compression: CompressionArg,
    pub pack_size_mib: Option<u32>,
    pub uploads: Option<u32>,
    /// Journal name (the DataUpload's), so that a retry can take over what was uploaded.
    pub journal: Option<String>,
    /// This attempt resumes an interrupted one.
    pub resume: bool,
}

impl BackupCommand {
    /// Arguments of the `holdfast` binary.
    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = ["mover", "--json", "backup", "--source", &self.source]
            .map(String::from)
            .into();
        a.extend([
            "--parent".into(),
            "auto".into(),
            "--host".into(),
            self.host.clone(),
        ]);
        for t in &self.tags {
            a.extend(["--tag".into(), t.clone()]);
        }
        let c = match self.compression {
            CompressionArg::Auto => "auto",
            CompressionArg::Off => "off",
            CompressionArg::Max => "max",
        };
        a.extend(["--compression".into(), c.into()]);
        if let Some(p) = self.pack_size_mib {
            a.extend(["--pack-size-mib".into(), p.to_string()]);
        }
        if let Some(u) = self.uploads {
            a.extend(["--uploads".into(), u.to_string()]);
        }
        if let Some(j) = &self.journal {
            a.extend(["--journal".into(), j.clone()]);
            if self.resume {
                a.push("--resume".into());
            }
        }
        a
    }
}

/// What a restore mover is asked to do.
#[derive(Debug, Clone, PartialEq)]
pub struct RestoreCommand {
    /// Repository snapshot id.
    pub snapshot: String,
    /// Directory or block device to write.
    pub target: String,
}

impl RestoreCommand {
    /// Arguments of the `holdfast` binary.
    pub fn args(&self) -> Vec<String> {
        [
            "mover",
            "--json",
            "restore",
            "--snapshot",
            &self.snapshot,
            "--target",
            &self.target,
        ]
        .map(String::from)
        .into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        mover: super::super::MoverCommand,
    }

    fn parse(args: &[String]) -> super::super::MoverCommand {
        assert_eq!(args[0], "mover");
        let mut argv = vec!["holdfast".to_string()];
        argv.extend(args[1..].iter().cloned());
        Cli::try_parse_from(argv)
            .expect("the mover accepts the controller's command")
            .mover
    }

    #[test]
    fn maintenance_commands_parse_and_their_events_round_trip() {
        for a in [
            PruneCommand { grace_seconds: 90 }.args(),
            CheckCommand {
                read_percent: 5,
                seed: 9,
            }
            .args(),
            CheckCommand {
                read_percent: 100,
                seed: 0,
            }
            .args(),
            CheckCommand {
                read_percent: 0,
                seed: 0,
            }
            .args(),
        ] {
            parse(&a);
        }
        let e = MaintenanceEvent::Prune(PruneReport {
            bytes_freed: 7,
            packs_deleted: 1,
            ..Default::default()
        });
        let back: Vec<MaintenanceEvent> = events(&line(&e)).collect();
        assert_eq!(back, [e]);
    }

    #[test]
    fn backup_events_round_trip() {
        let counters = BackupCounters {
            bytes_total: 10,
            bytes_read: 7,
            bytes_uploaded: 3,
            ..Default::default()
        };
        let events = [
            BackupEvent::Progress(counters.clone()),
            BackupEvent::Error {
                message: "x: permission denied".into(),
            },
            BackupEvent::Summary {
                counters,
                snapshot: "ab12".into(),
                parent: None,
                seconds: 1.5,
                errors: 1,
            },
        ];
        let log: String = events.iter().map(|e| line(e) + "\n").collect();
        assert!(log.contains(r#""event":"progress""#) && log.contains(r#""bytes_read":7"#));
        let back: Vec<BackupEvent> =
            super::events::<BackupEvent>(&format!("noise\n{log}")).collect();
        assert_eq!(back, events);
        assert_eq!(
            failure_lines(&format!("{log}Error: boom\n")),
            ["x: permission denied", "Error: boom"]
        );
    }

    #[test]
    fn restore_events_round_trip() {
        let events = [
            RestoreEvent::Progress {
                bytes: 5,
                seconds: 2.0,
            },
            RestoreEvent::Summary {
                files: 1,
                dirs: 2,
                bytes: 5,
                seconds: 3.0,
                warnings: vec!["chown a: EPERM".into()],
            },
        ];
        let log: String = events.iter().map(|e| line(e) + "\n").collect();
        let back: Vec<RestoreEvent> = super::events::<RestoreEvent>(&log).collect();
        assert_eq!(back, events);
    }

    #[test]
    fn the_mover_parses_the_commands_the_controller_builds() {
        let b = BackupCommand {
            source: "/data".into(),
            host: "shop/data".into(),
            tags: vec!["holdfast.dev/backup=shop/b1".into()],
            compression: CompressionArg::Max,
            pack_size_mib: Some(32),
            uploads: Some(3),
            journal: Some("shop-b1-x".into()),
            resume: true,
        };
        let cmd = parse(&b.args());
        assert!(cmd.json);
        let super::super::MoverAction::Backup(a) = cmd.action else {
            panic!("not a backup");
        };
        assert_eq!(a.source.to_str(), Some("/data"));
        assert_eq!(a.host.as_deref(), Some("shop/data"));
        assert_eq!(a.journal.as_deref(), Some("shop-b1-x"));
        assert!(a.resume);
        assert_eq!(a.tags, ["holdfast.dev/backup=shop/b1"]);
        assert_eq!(
            (a.compression.as_str(), a.pack_size_mib, a.uploads),
            ("max", 32, 3)
        );
        let r = RestoreCommand {
            snapshot: "ab12".into(),
            target: "/data".into(),
        };
        let super::super::MoverAction::Restore(a) = parse(&r.args()).action else {
            panic!("not a restore");
        };
        assert_eq!(
            (a.snapshot.as_str(), a.target.to_str()),
            ("ab12", Some("/data"))
        );
    }

    #[test]
    fn exit_codes() {
        assert_eq!(Exit::from_code(0), Exit::Succeeded);
        assert_eq!(Exit::from_code(2), Exit::Partial);
        assert_eq!(Exit::from_code(3), Exit::NothingToDo);
        assert_eq!(Exit::from_code(137), Exit::Failed(137));
    }
}
