//! The data mover (`holdfast mover ...`) that runs inside mover pods: backup, restore,
//! check, list, forget and prune snapshots of a restic-format repository on S3 or a
//! local path.
//! Talks to object storage (through holdfast-repo/holdfast-store), never to the cluster.
//!
//! Exit codes, environment and the JSON lines of backups and restores are the contract with
//! the controllers, in [`protocol`]: 0 success, 1 failed, 2 partially failed (some files could
//! not be read or some metadata not applied), 3 nothing to do (no snapshot to restore/list, no
//! snapshot removed by forget, nothing to mark or delete for prune).

pub mod protocol;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use holdfast_repo::backup::{self, BackupOptions, BackupStats, Compression};
use holdfast_repo::check::{self, CheckOptions};
use holdfast_repo::forget::{self, ForgetOptions, GroupBy, KeepDuration, KeepPolicy};
use holdfast_repo::prune::{self, PruneOptions, PruneSummary};
use holdfast_repo::restore::{self, RestoreOptions};
use holdfast_repo::{KdfParams, RepoError, Repository};
use holdfast_store::{
    DynStore, LocalStore, Location, PayloadProtection, RetryPolicy, S3Config, S3Store,
};

use self::protocol::{
    BackupCounters, BackupEvent, MaintenanceEvent, PruneReport, RestoreEvent, env,
};

/// Exit code: some files could not be read or some metadata could not be applied.
pub const EXIT_PARTIAL: u8 = protocol::exit::PARTIAL;
/// Exit code: there was nothing to do (no snapshot).
pub const EXIT_NOTHING_TO_DO: u8 = protocol::exit::NOTHING_TO_DO;
/// Environment variable holding the repository password.
pub const PASSWORD_ENV: &str = env::PASSWORD;

/// `holdfast mover`: move data between a volume and a repository.
#[derive(clap::Args, Debug)]
pub struct MoverCommand {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Print progress and results as JSON lines on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub action: MoverAction,
}

/// Where the repository is and how to reach it.
#[derive(clap::Args, Debug)]
pub struct RepoArgs {
    /// Repository: `s3:http(s)://host[:port]/bucket[/prefix]` or a local path.
    #[arg(long, short = 'r', env = env::REPOSITORY, global = true)]
    pub repository: Option<String>,
    /// S3 region.
    #[arg(long, env = env::S3_REGION, global = true)]
    pub s3_region: Option<String>,
    /// Use virtual-hosted-style S3 addressing instead of path-style.
    #[arg(long, env = env::S3_VIRTUAL_HOSTED, global = true)]
    pub s3_virtual_hosted: bool,
    /// PEM file with extra CA certificates for the S3 endpoint.
    #[arg(long, env = env::S3_CA_BUNDLE, global = true)]
    pub s3_ca_bundle: Option<PathBuf>,
    /// Do not verify the S3 endpoint's TLS certificate (for tests only).
    #[arg(long, env = env::S3_INSECURE_SKIP_TLS_VERIFY, global = true)]
    pub s3_insecure_skip_tls_verify: bool,
    /// Storage class of written objects.
    #[arg(long, env = env::S3_STORAGE_CLASS, global = true)]
    pub s3_storage_class: Option<String>,
    /// Attempts per S3 request (including the first) on transient failures.
    #[arg(
        long,
        env = env::S3_ATTEMPTS,
        default_value_t = 10,
        global = true
    )]
    pub s3_attempts: u32,
    /// Sign every PUT body with SigV4 (a SHA-256 of each pack) instead of sending it as
    /// UNSIGNED-PAYLOAD, with a CRC32C over plain http. Not needed for integrity: every
    /// file of the repository is encrypted and authenticated. For S3-compatible servers
    /// that refuse unsigned payloads or the `x-amz-checksum-crc32c` header.
    #[arg(long, env = env::S3_SIGNED_PAYLOADS, global = true)]
    pub s3_signed_payloads: bool,
}

/// Mover actions.
#[derive(clap::Subcommand, Debug)]
pub enum MoverAction {
    /// Create a new repository.
    Init,
    /// Back up a directory into a new snapshot.
    Backup(BackupArgs),
    /// Restore a snapshot into a directory.
    Restore(RestoreArgs),
    /// Check the repository's structure, and with --read-data all its data.
    Check(CheckArgs),
    /// List snapshots.
    Snapshots,
    /// Remove snapshots by id or by a retention policy (restic's `forget`).
    Forget(ForgetArgs),
    /// Two-phase garbage collection: mark unneeded packs, delete or repack packs
    /// marked at least --grace ago that are still unneeded.
    Prune(PruneArgs),
}

/// `mover forget`.
#[derive(clap::Args, Debug)]
pub struct ForgetArgs {
    /// Snapshot to remove (id or unique prefix), repeatable; not combined with --keep-*.
    #[arg(long = "snapshot")]
    pub snapshots: Vec<String>,
    /// Keep the last N snapshots (-1: all).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub keep_last: i32,
    /// Keep the last N hourly snapshots.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub keep_hourly: i32,
    /// Keep the last N daily snapshots.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub keep_daily: i32,
    /// Keep the last N weekly snapshots.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub keep_weekly: i32,
    /// Keep the last N monthly snapshots.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub keep_monthly: i32,
    /// Keep the last N yearly snapshots.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub keep_yearly: i32,
    /// Keep snapshots newer than the group's latest minus this (`1y2m3d4h`).
    #[arg(long)]
    pub keep_within: Option<String>,
    /// Keep snapshots with all of these tags (comma-separated), repeatable.
    #[arg(long)]
    pub keep_tag: Vec<String>,
    /// Group snapshots by these fields (`host`, `paths`, `tags`, comma-separated, or
    /// empty for one group).
    #[arg(long, default_value = "host,paths")]
    pub group_by: String,
    /// Show what would be removed, remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Prune afterwards.
    #[arg(long)]
    pub prune: bool,
    #[command(flatten)]
    pub prune_args: PruneFlags,
}

/// Options shared by `prune` and `forget --prune`.
#[derive(clap::Args, Debug)]
pub struct PruneFlags {
    /// How long a pack stays marked before it is deleted (`24h`, `30m`, `0s`); longer
    /// than any backup.
    #[arg(long, default_value = "24h")]
    pub grace: String,
    /// Unused space tolerated in partly used packs, in percent.
    #[arg(long, default_value_t = 5.0)]
    pub max_unused: f64,
}

/// `mover prune`.
#[derive(clap::Args, Debug)]
pub struct PruneArgs {
    #[command(flatten)]
    pub flags: PruneFlags,
    /// Show what would be done, change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// What a source or target is.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A block device is `block`, anything else `dir` (restore: a snapshot tagged
    /// as a block image, or a block device target, is `block`).
    Auto,
    /// A directory tree.
    Dir,
    /// A block device or an image file, stored as one file of fixed 1 MiB pieces.
    Block,
}

impl Kind {
    /// Whether `path` is treated as a block device (`Auto`: when it is one).
    fn is_block(self, path: &std::path::Path) -> bool {
        match self {
            Kind::Dir => false,
            Kind::Block => true,
            Kind::Auto => {
                use std::os::unix::fs::FileTypeExt;
                std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device())
            }
        }
    }
}

/// `mover backup`.
#[derive(clap::Args, Debug)]
pub struct BackupArgs {
    /// Directory to back up (its contents become the snapshot's root), or a block
    /// device / image file with --source-kind block.
    #[arg(long)]
    pub source: PathBuf,
    /// Whether the source is a directory or a block device/image.
    #[arg(long, value_enum, default_value = "auto")]
    pub source_kind: Kind,
    /// File name of the image inside a block snapshot (default: the source's name).
    #[arg(long)]
    pub image_name: Option<String>,
    /// Parent snapshot for skipping unchanged files: `auto` (latest of the same path
    /// and host), `none`, or a snapshot id.
    #[arg(long, default_value = "auto")]
    pub parent: String,
    /// Tags (`key=value` or any string), repeatable.
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Host name recorded in the snapshot.
    #[arg(long, env = env::HOSTNAME)]
    pub host: Option<String>,
    /// Compression: auto, off, max or a zstd level.
    #[arg(long, default_value = "auto")]
    pub compression: String,
    /// Target pack size in MiB.
    #[arg(long, default_value_t = 16)]
    pub pack_size_mib: usize,
    /// Concurrent pack uploads.
    #[arg(long, default_value_t = 4)]
    pub uploads: usize,
    /// Worker threads (default: number of CPUs).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Record every uploaded pack under `holdfast/journal/<NAME>/` until the snapshot is
    /// saved (the operator passes its DataUpload's name).
    #[arg(long, value_name = "NAME")]
    pub journal: Option<String>,
    /// Resume an interrupted attempt of `--journal`: take over the packs it uploaded, remove
    /// the locks it left (same host name).
    #[arg(long, requires = "journal")]
    pub resume: bool,
    /// Create the repository if it does not exist yet.
    #[arg(long)]
    pub init: bool,
}

/// `mover restore`.
#[derive(clap::Args, Debug)]
pub struct RestoreArgs {
    /// Snapshot: `latest`, an id or a unique id prefix.
    #[arg(long, default_value = "latest")]
    pub snapshot: String,
    /// Target directory, or a block device / image file for a block snapshot.
    #[arg(long)]
    pub target: PathBuf,
    /// Whether to restore a directory tree or write a block image in place.
    #[arg(long, value_enum, default_value = "auto")]
    pub target_kind: Kind,
    /// Worker threads.
    #[arg(long)]
    pub threads: Option<usize>,
}

/// `mover check`.
#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// Also download and verify every pack.
    #[arg(long)]
    pub read_data: bool,
    /// Download and verify this percentage of the packs.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=100), conflicts_with = "read_data")]
    pub read_data_subset: Option<u8>,
    /// Which packs the subset takes (default: from the clock, so runs differ).
    #[arg(long, requires = "read_data_subset")]
    pub seed: Option<u64>,
}

fn password() -> anyhow::Result<String> {
    match std::env::var(PASSWORD_ENV) {
        Ok(p) if !p.is_empty() => Ok(p),
        _ => bail!(
            "the repository password must be given in the environment variable {PASSWORD_ENV}"
        ),
    }
}

async fn open_store(args: &RepoArgs) -> anyhow::Result<DynStore> {
    let Some(repository) = &args.repository else {
        bail!("--repository (or HOLDFAST_REPOSITORY) is required");
    };
    let loc = Location::parse(repository)?;
    Ok(match loc {
        Location::Local(p) => Arc::new(LocalStore::new(p)),
        Location::S3 {
            endpoint,
            bucket,
            prefix,
        } => {
            let cfg = S3Config {
                endpoint: Some(endpoint),
                region: args.s3_region.clone(),
                bucket,
                prefix,
                path_style: !args.s3_virtual_hosted,
                ca_bundle: args.s3_ca_bundle.clone(),
                insecure_skip_tls_verify: args.s3_insecure_skip_tls_verify,
                access_key_id: std::env::var(env::AWS_ACCESS_KEY_ID).ok(),
                secret_access_key: std::env::var(env::AWS_SECRET_ACCESS_KEY).ok(),
                session_token: std::env::var(env::AWS_SESSION_TOKEN)
                    .ok()
                    .filter(|t| !t.is_empty()),
                storage_class: args.s3_storage_class.clone(),
                retry: RetryPolicy {
                    max_attempts: args.s3_attempts.max(1),
                    ..RetryPolicy::default()
                },
                // Every file of a restic repository authenticates itself (encrypted and
                // MAC'd, or, for key files, MAC'd by the password's key): no SHA-256 of the
                // bodies is needed on the way.
                payload: if args.s3_signed_payloads {
                    PayloadProtection::Signed
                } else {
                    PayloadProtection::SelfAuthenticated
                },
            };
            Arc::new(S3Store::new(cfg).await?)
        }
    })
}

/// Prints one event, as a JSON line or a human line.
fn emit(json: bool, event: &str, value: serde_json::Value, human: impl FnOnce() -> String) {
    if json {
        let mut v = value;
        if let Some(o) = v.as_object_mut() {
            o.insert("event".into(), event.into());
        }
        println!("{v}");
    } else {
        eprintln!("{}", human());
    }
}

fn mib(n: u64) -> f64 {
    n as f64 / (1024.0 * 1024.0)
}

/// Prints one event of the mover protocol, as a JSON line or a human line.
fn emit_event<E: serde::Serialize>(json: bool, event: &E, human: impl FnOnce() -> String) {
    if json {
        println!("{}", protocol::line(event));
    } else {
        eprintln!("{}", human());
    }
}

fn counters(s: &BackupStats) -> BackupCounters {
    let g = BackupStats::get;
    BackupCounters {
        files_new: g(&s.files_new),
        files_changed: g(&s.files_changed),
        files_unmodified: g(&s.files_unmodified),
        dirs: g(&s.dirs),
        bytes_total: g(&s.bytes_total),
        bytes_read: g(&s.bytes_read),
        bytes_new: g(&s.bytes_new),
        blobs_new: g(&s.blobs_new),
        bytes_uploaded: g(&s.bytes_uploaded),
        packs_uploaded: g(&s.packs_uploaded),
    }
}

/// Runs a mover command; the error is printed by the caller (anyhow at the edge).
pub async fn run(cmd: MoverCommand) -> anyhow::Result<ExitCode> {
    let store = open_store(&cmd.repo).await?;
    let json = cmd.json;
    match cmd.action {
        MoverAction::Init => run_init(store, json).await,
        MoverAction::Backup(a) => run_backup(store, a, json).await,
        MoverAction::Forget(a) => run_forget(store, a, json).await,
        MoverAction::Prune(a) => {
            let repo = Repository::open(store, &password()?).await?;
            let s = run_prune(&repo, &a.flags, a.dry_run, json).await?;
            Ok(if s.nothing_to_do() {
                ExitCode::from(EXIT_NOTHING_TO_DO)
            } else {
                ExitCode::SUCCESS
            })
        }
        MoverAction::Restore(a) => run_restore(store, a, json).await,
        MoverAction::Check(a) => run_check(store, a, json).await,
        MoverAction::Snapshots => run_snapshots(store, json).await,
    }
}

async fn run_init(store: DynStore, json: bool) -> anyhow::Result<ExitCode> {
    let repo = Repository::init(store.clone(), &password()?, KdfParams::default()).await?;
    emit(
        json,
        "init",
        serde_json::json!({"repository": store.describe(), "id": repo.config().id}),
        || {
            format!(
                "created repository {} at {}",
                &repo.config().id[..8],
                store.describe()
            )
        },
    );
    Ok(ExitCode::SUCCESS)
}

async fn run_restore(store: DynStore, a: RestoreArgs, json: bool) -> anyhow::Result<ExitCode> {
    let repo = Repository::open(store, &password()?).await?;
    let mut opts = RestoreOptions::default();
    if let Some(t) = a.threads {
        opts.threads = t.max(1);
    }
    let started = Instant::now();
    let written = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    opts.progress = Some(written.clone());
    let reporter = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        tick.tick().await;
        loop {
            tick.tick().await;
            let secs = started.elapsed().as_secs_f64();
            let bytes = written.load(std::sync::atomic::Ordering::Relaxed);
            emit_event(
                json,
                &RestoreEvent::Progress {
                    bytes,
                    seconds: secs,
                },
                || {
                    format!(
                        "[{secs:.0}s] {:.1} MiB written ({:.1} MiB/s)",
                        mib(bytes),
                        mib(bytes) / secs.max(0.001)
                    )
                },
            );
        }
    });
    let block = match a.target_kind {
        Kind::Dir => false,
        Kind::Block => true,
        Kind::Auto => {
            use std::os::unix::fs::FileTypeExt;
            std::fs::metadata(&a.target).is_ok_and(|m| m.file_type().is_block_device())
                || matches!(
                    repo.find_snapshot(&a.snapshot).await,
                    Ok((_, s)) if s.tags.iter().any(|t| t == backup::BLOCK_TAG)
                )
        }
    };
    let result = if block {
        restore::restore_block(&repo, &a.snapshot, &a.target, opts).await
    } else {
        restore::restore(&repo, &a.snapshot, &a.target, opts).await
    };
    reporter.abort();
    let s = match result {
        Ok(s) => s,
        Err(RepoError::SnapshotNotFound { spec }) => {
            emit_event(
                json,
                &RestoreEvent::NothingToDo {
                    reason: format!("no snapshot matches {spec:?}"),
                },
                || format!("nothing to do: no snapshot matches {spec:?}"),
            );
            return Ok(ExitCode::from(EXIT_NOTHING_TO_DO));
        }
        Err(e) => {
            return Err(e)
                .with_context(|| format!("restoring {} into {}", a.snapshot, a.target.display()));
        }
    };
    let secs = started.elapsed().as_secs_f64();
    emit_event(
        json,
        &RestoreEvent::Summary {
            files: s.files,
            dirs: s.dirs,
            bytes: s.bytes,
            seconds: secs,
            warnings: s.warnings.clone(),
        },
        || {
            format!(
                "restored {} files, {} dirs, {:.1} MiB in {secs:.1} s ({} warnings)",
                s.files,
                s.dirs,
                mib(s.bytes),
                s.warnings.len()
            )
        },
    );
    Ok(if s.warnings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_PARTIAL)
    })
}

async fn run_check(store: DynStore, a: CheckArgs, json: bool) -> anyhow::Result<ExitCode> {
    let repo = Repository::open(store, &password()?).await?;
    let started = Instant::now();
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    });
    let r = check::check(
        &repo,
        CheckOptions {
            read_data: a.read_data,
            read_subset: a
                .read_data_subset
                .map(|percent| check::Subset { percent, seed }),
        },
    )
    .await?;
    for w in &r.warnings {
        let e = MaintenanceEvent::Warning { message: w.clone() };
        emit_event(json, &e, || format!("warning: {w}"));
    }
    for e in &r.errors {
        let ev = MaintenanceEvent::Error { message: e.clone() };
        emit_event(json, &ev, || format!("error: {e}"));
    }
    let summary = MaintenanceEvent::Summary {
        ok: r.ok(),
        errors: r.errors.len() as u64,
        warnings: r.warnings.len() as u64,
        packs: r.packs as u64,
        packs_read: r.packs_read as u64,
        snapshots: r.snapshots as u64,
        seconds: started.elapsed().as_secs_f64(),
    };
    emit_event(json, &summary, || {
        format!(
            "check: {} packs, {} blobs, {} snapshots, {} trees: {}",
            r.packs,
            r.blobs,
            r.snapshots,
            r.trees,
            if r.ok() {
                "no errors".to_string()
            } else {
                format!("{} errors", r.errors.len())
            }
        )
    });
    Ok(if r.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn run_snapshots(store: DynStore, json: bool) -> anyhow::Result<ExitCode> {
    let repo = Repository::open(store, &password()?).await?;
    let snaps = repo.snapshots().await?;
    for (id, s) in &snaps {
        emit(
            json,
            "snapshot",
            serde_json::json!({"id": id.to_hex(), "short_id": id.short(), "time": s.time, "hostname": s.hostname, "paths": s.paths, "tags": s.tags, "tree": s.tree.to_hex(), "parent": s.parent.map(|p| p.to_hex())}),
            || {
                format!(
                    "{}  {}  {}  {}  {}",
                    id.short(),
                    s.time,
                    s.hostname,
                    s.tags.join(","),
                    s.paths.join(" ")
                )
            },
        );
    }
    Ok(if snaps.is_empty() {
        ExitCode::from(EXIT_NOTHING_TO_DO)
    } else {
        ExitCode::SUCCESS
    })
}

async fn run_backup(store: DynStore, a: BackupArgs, json: bool) -> anyhow::Result<ExitCode> {
    let password = password()?;
    let repo = match Repository::open(store.clone(), &password).await {
        Ok(r) => r,
        Err(RepoError::NotARepository { .. }) if a.init => {
            Repository::init(store.clone(), &password, KdfParams::default()).await?
        }
        Err(e) => return Err(e.into()),
    };
    let compression = Compression::parse(&a.compression).with_context(|| {
        format!(
            "--compression {:?}: expected auto, off, max or a number",
            a.compression
        )
    })?;
    let mut opts = BackupOptions {
        compression,
        tags: a.tags.clone(),
        pack_size: a.pack_size_mib.clamp(1, 128) * 1024 * 1024,
        uploads_in_flight: a.uploads.max(1),
        journal: a.journal.clone(),
        resume: a.resume,
        ..BackupOptions::default()
    };
    if let Some(h) = a.host.clone() {
        opts.hostname = h;
    }
    if let Some(t) = a.threads {
        opts.threads = t.max(1);
    }
    let source = std::fs::canonicalize(&a.source)
        .with_context(|| format!("source {}", a.source.display()))?;
    let block = a.source_kind.is_block(&source);
    opts.parent = match a.parent.as_str() {
        _ if block => None,
        "none" => None,
        "auto" => {
            backup::find_parent(&repo, &[source.display().to_string()], &opts.hostname).await?
        }
        id => Some(repo.find_snapshot(id).await?.0),
    };
    let stats = opts.stats.clone();
    let started = Instant::now();
    let reporter = spawn_backup_progress(stats.clone(), json, started);
    let result = if block {
        let name = match &a.image_name {
            Some(n) => n.clone(),
            None => source
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "image".into()),
        };
        backup::backup_block(&repo, &source, &name, opts).await
    } else {
        backup::backup(&repo, &source, opts).await
    };
    reporter.abort();
    let s = result
        .with_context(|| format!("backing up {} to {}", source.display(), store.describe()))?;
    for e in &s.errors {
        emit_event(
            json,
            &BackupEvent::Error {
                message: e.to_string(),
            },
            || format!("error: {e}"),
        );
    }
    let secs = started.elapsed().as_secs_f64();
    let summary = BackupEvent::Summary {
        counters: counters(&stats),
        snapshot: s.snapshot_id.to_hex(),
        parent: s.snapshot.parent.map(|p| p.to_hex()),
        seconds: secs,
        errors: s.errors.len() as u64,
    };
    emit_event(json, &summary, || {
        format!(
            "snapshot {} saved: {} new, {} changed, {} unmodified files; {:.1} MiB read, {:.1} MiB new, {:.1} MiB uploaded in {secs:.1} s{}",
            s.snapshot_id.short(),
            BackupStats::get(&stats.files_new),
            BackupStats::get(&stats.files_changed),
            BackupStats::get(&stats.files_unmodified),
            mib(BackupStats::get(&stats.bytes_read)),
            mib(BackupStats::get(&stats.bytes_new)),
            mib(BackupStats::get(&stats.bytes_uploaded)),
            if s.errors.is_empty() {
                String::new()
            } else {
                format!(" ({} files could not be read)", s.errors.len())
            }
        )
    });
    Ok(if s.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_PARTIAL)
    })
}

/// Prints the backup's counters every 2 s until the returned task is aborted.
fn spawn_backup_progress(
    stats: Arc<BackupStats>,
    json: bool,
    started: Instant,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        tick.tick().await;
        loop {
            tick.tick().await;
            let secs = started.elapsed().as_secs_f64();
            emit_event(json, &BackupEvent::Progress(counters(&stats)), || {
                let read = BackupStats::get(&stats.bytes_read);
                format!(
                    "[{secs:.0}s] {} files, {:.1} MiB read ({:.1} MiB/s), {:.1} MiB uploaded",
                    BackupStats::get(&stats.files_new)
                        + BackupStats::get(&stats.files_changed)
                        + BackupStats::get(&stats.files_unmodified),
                    mib(read),
                    mib(read) / secs.max(0.001),
                    mib(BackupStats::get(&stats.bytes_uploaded)),
                )
            });
        }
    })
}

fn prune_options(f: &PruneFlags, dry_run: bool) -> anyhow::Result<PruneOptions> {
    let grace = prune::parse_duration(&f.grace)
        .with_context(|| format!("--grace {:?}: expected e.g. 24h, 30m, 1d2h or 0s", f.grace))?;
    if !(0.0..100.0).contains(&f.max_unused) {
        bail!(
            "--max-unused {}: expected a percentage below 100",
            f.max_unused
        );
    }
    Ok(PruneOptions {
        grace,
        max_unused_percent: f.max_unused,
        dry_run,
        ..PruneOptions::default()
    })
}

async fn run_prune(
    repo: &Repository,
    f: &PruneFlags,
    dry_run: bool,
    json: bool,
) -> anyhow::Result<PruneSummary> {
    let opts = prune_options(f, dry_run)?;
    let started = Instant::now();
    let s = prune::prune(repo, &opts)
        .await
        .with_context(|| format!("pruning {}", repo.store().describe()))?;
    let secs = started.elapsed().as_secs_f64();
    let report = PruneReport {
        dry_run,
        grace_seconds: opts.grace.as_secs(),
        snapshots: s.snapshots as u64,
        packs_total: s.packs_total as u64,
        packs_newly_marked: s.packs_newly_marked as u64,
        packs_waiting: s.packs_waiting as u64,
        packs_deleted: s.packs_deleted as u64,
        packs_repacked: s.packs_repacked as u64,
        packs_written: s.packs_written as u64,
        blobs_repacked: s.blobs_repacked as u64,
        bytes_repacked: s.bytes_repacked,
        bytes_freed: s.bytes_freed,
        bytes_unused_remaining: s.bytes_unused_remaining,
        index_files_written: s.index_files_written as u64,
        index_files_removed: s.index_files_removed as u64,
        seconds: secs,
    };
    emit_event(json, &MaintenanceEvent::Prune(report), || {
        format!(
            "prune{}: {} packs, {} newly marked, {} waiting for the grace period ({}), {} deleted, {} repacked ({} blobs); {:.1} MiB freed, {:.1} MiB unused remain, in {secs:.1} s",
            if dry_run { " (dry run)" } else { "" },
            s.packs_total,
            s.packs_newly_marked,
            s.packs_waiting,
            f.grace,
            s.packs_deleted,
            s.packs_repacked,
            s.blobs_repacked,
            mib(s.bytes_freed),
            mib(s.bytes_unused_remaining),
        )
    });
    Ok(s)
}

async fn run_forget(store: DynStore, a: ForgetArgs, json: bool) -> anyhow::Result<ExitCode> {
    let repo = Repository::open(store, &password()?).await?;
    let (policy, group_by) = forget_policy(&a)?;
    if a.snapshots.is_empty() && policy.is_empty() {
        bail!("nothing to forget: give --snapshot ID or at least one --keep-* option");
    }
    let opts = ForgetOptions {
        snapshots: a.snapshots.clone(),
        policy,
        group_by,
        dry_run: a.dry_run,
    };
    let s = match forget::forget(&repo, &opts).await {
        Ok(s) => s,
        Err(RepoError::SnapshotNotFound { spec }) => {
            emit(
                json,
                "nothing_to_do",
                serde_json::json!({"reason": format!("no snapshot matches {spec:?}")}),
                || format!("nothing to do: no snapshot matches {spec:?}"),
            );
            return Ok(ExitCode::from(EXIT_NOTHING_TO_DO));
        }
        Err(e) => return Err(e).context("forgetting snapshots"),
    };
    for g in &s.groups {
        for d in &g.decisions {
            emit(
                json,
                if d.keep { "keep" } else { "remove" },
                serde_json::json!({"id": d.id.to_hex(), "short_id": d.id.short(), "host": g.host, "paths": g.paths, "tags": g.tags, "reasons": d.reasons}),
                || {
                    format!(
                        "{} {}{}",
                        if d.keep { "keep  " } else { "remove" },
                        d.id.short(),
                        if d.reasons.is_empty() {
                            String::new()
                        } else {
                            format!("  ({})", d.reasons.join(", "))
                        }
                    )
                },
            );
        }
    }
    if s.groups.is_empty() {
        for id in &s.removed {
            emit(
                json,
                "remove",
                serde_json::json!({"id": id.to_hex(), "short_id": id.short(), "reasons": []}),
                || format!("remove {}", id.short()),
            );
        }
    }
    emit(
        json,
        "summary",
        serde_json::json!({"removed": s.removed.len(), "kept": s.kept, "dry_run": a.dry_run}),
        || {
            format!(
                "{} {} snapshots, kept {}",
                if a.dry_run { "would remove" } else { "removed" },
                s.removed.len(),
                s.kept
            )
        },
    );
    let mut did_something = !s.removed.is_empty();
    if a.prune && !a.dry_run {
        let p = run_prune(&repo, &a.prune_args, false, json).await?;
        did_something |= !p.nothing_to_do();
    }
    Ok(if did_something {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_NOTHING_TO_DO)
    })
}

/// The keep policy and grouping of `holdfast mover forget`, from its flags.
fn forget_policy(a: &ForgetArgs) -> anyhow::Result<(KeepPolicy, GroupBy)> {
    let within =
        match &a.keep_within {
            Some(w) => Some(KeepDuration::parse(w).with_context(|| {
                format!("--keep-within {w:?}: expected a duration like 1y2m3d4h")
            })?),
            None => None,
        };
    let mut group_by = GroupBy {
        host: false,
        paths: false,
        tags: false,
    };
    for g in a
        .group_by
        .split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
    {
        match g {
            "host" => group_by.host = true,
            "paths" => group_by.paths = true,
            "tags" => group_by.tags = true,
            other => bail!("--group-by: unknown field {other:?} (host, paths, tags)"),
        }
    }
    let policy = KeepPolicy {
        last: a.keep_last,
        hourly: a.keep_hourly,
        daily: a.keep_daily,
        weekly: a.keep_weekly,
        monthly: a.keep_monthly,
        yearly: a.keep_yearly,
        within,
        tags: a
            .keep_tag
            .iter()
            .map(|l| {
                l.split(',')
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty())
                    .collect()
            })
            .collect(),
    };
    Ok((policy, group_by))
}
