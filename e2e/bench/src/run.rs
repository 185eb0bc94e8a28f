//! The benchmark run: datasets, MinIO, the rounds, the report.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::dataset::{self, Changes, Scale};
use crate::measure::{Cmd, Usage};
use crate::minio::Minio;
use crate::report::{self, Machine, Report};
use crate::tools::{Binaries, Repo, Tool};

pub const DEFAULT_SEED: u64 = 20_261_122;

/// Phases measured for every tool, in the order of a round.
pub const PHASE_FIRST: &str = "first_backup";
pub const PHASE_UNCHANGED: &str = "unchanged_backup";
pub const PHASE_CHANGED: &str = "changed_backup";
pub const PHASE_RESTORE: &str = "restore";
pub const PHASE_FIRST_B: &str = "first_backup_incompressible";
pub const PHASE_FIRST_C: &str = "first_backup_sparse";
/// Dataset (e), many small files, in a repository of its own per tool.
pub const PHASE_FIRST_E: &str = "first_backup_many_files";
pub const PHASE_UNCHANGED_E: &str = "unchanged_backup_many_files";
pub const PHASE_RESTORE_E: &str = "restore_many_files";
/// Ceiling measurements (tool name `ceiling`).
pub const CEILING_MIXED: &str = "ceiling_mixed";
pub const CEILING_B: &str = "ceiling_incompressible";
pub const CEILING_B_SIGNED: &str = "ceiling_incompressible_signed";

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Rounds; every phase runs once per tool per round, tools interleaved.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Dataset scale: 1.0 is about 2 GiB of data (1 GiB mixed tree, 768 MiB
    /// incompressible file, 64 MiB in a 1 GiB sparse file); 0.1 for a quick run.
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    #[arg(long, default_value_t = DEFAULT_SEED)]
    pub seed: u64,
    /// Files of dataset (e), the many-small-files tree (0–512 bytes each); default
    /// 1,000,000 × scale; 0 leaves its phases out.
    #[arg(long)]
    pub many_files: Option<u64>,
    /// Work directory (datasets, MinIO data, restores, logs). Its data is removed at
    /// the end unless --keep; logs and raw.json stay.
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    #[arg(long)]
    pub keep: bool,
    /// Tools to run (holdfast is always run).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "holdfast,restic,kopia,rustic"
    )]
    pub tools: Vec<String>,
    #[arg(long, default_value = "target/release/holdfast")]
    pub holdfast: PathBuf,
    #[arg(long, default_value = "restic")]
    pub restic: PathBuf,
    #[arg(long, default_value = "kopia")]
    pub kopia: PathBuf,
    #[arg(long, default_value = "rustic")]
    pub rustic: PathBuf,
    #[arg(long)]
    pub minio: Option<PathBuf>,
    /// Do not `sync; echo 3 > /proc/sys/vm/drop_caches` before each measured command.
    #[arg(long)]
    pub no_drop_caches: bool,
    /// Markdown report.
    #[arg(long, default_value = "docs/benchmarks.md")]
    pub md: PathBuf,
    /// JSON summary.
    #[arg(long, default_value = "docs/benchmarks.json")]
    pub json: PathBuf,
    /// The command line to print in the report (the run script passes its own).
    #[arg(long, default_value = "")]
    pub command_line: String,
    /// Version control description of the benchmarked tree (the run script passes it).
    #[arg(long, default_value = "")]
    pub commit: String,
}

/// One measured command.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sample {
    pub round: usize,
    pub tool: String,
    pub phase: String,
    pub usage: Usage,
    /// CPU seconds MinIO used meanwhile.
    pub server_cpu_s: f64,
    /// Bytes of file content in the source (apparent size) or restored.
    pub bytes: u64,
    /// 1-minute load average just before the command.
    pub load1: f64,
}

/// Bytes a tool's repository held.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Stored {
    pub round: usize,
    pub tool: String,
    /// After the first backup of the mixed tree.
    pub after_first: u64,
    pub objects_after_first: u64,
    /// At the end of the round: (a), (d), (b) and (c) backed up.
    pub total: u64,
    pub objects_total: u64,
}

/// Sizes of the datasets.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Sizes {
    pub a_bytes: u64,
    pub a_files: u64,
    pub d_bytes: u64,
    pub d_files: u64,
    pub modified: u64,
    pub modified_large_bytes: u64,
    pub renamed: u64,
    pub added: u64,
    pub b_bytes: u64,
    pub c_apparent: u64,
    pub c_allocated: u64,
    #[serde(default)]
    pub e_files: u64,
    #[serde(default)]
    pub e_bytes: u64,
}

/// Everything measured, as written to `raw.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Raw {
    pub samples: Vec<Sample>,
    pub stored: Vec<Stored>,
    pub sizes: Sizes,
    pub versions: Vec<(String, String)>,
    pub load_samples: Vec<f64>,
}

pub fn loadavg() -> [f64; 3] {
    let s = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = s.split_whitespace().map(|x| x.parse().unwrap_or(0.0));
    [
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
    ]
}

/// `sync` and, when allowed, drop the page cache. Returns whether it was dropped.
fn settle(drop_caches: bool) -> bool {
    let _ = std::process::Command::new("sync").status();
    drop_caches && std::fs::write("/proc/sys/vm/drop_caches", "3\n").is_ok()
}

struct Bench {
    self_exe: PathBuf,
    bins: Binaries,
    work: PathBuf,
    minio: Minio,
    rt: tokio::runtime::Runtime,
    raw: Raw,
    drop_caches: bool,
    dropped_ok: bool,
}

impl Bench {
    /// Makes each repository's state dir and bucket and initialises the repository.
    fn open_repos(&self, repos: &[Repo]) -> anyhow::Result<()> {
        for r in repos {
            r.prepare()?;
            self.rt.block_on(self.minio.create_bucket(&r.bucket))?;
            r.init().output(&r.log("init")).map(|_| ())?;
        }
        Ok(())
    }

    /// Removes each repository's bucket and its tool's caches and configs (logs stay).
    fn close_repos(&self, repos: &[Repo]) -> anyhow::Result<()> {
        for r in repos {
            self.rt.block_on(self.minio.remove_bucket(&r.bucket))?;
            for d in ["home", "cache", "config", "kopia"] {
                let _ = std::fs::remove_dir_all(r.state.join(d));
            }
        }
        Ok(())
    }

    /// Restores the latest snapshot of `source` from `r` into an empty `target`, measured as
    /// `phase`; returns where the restored tree's root is.
    fn measure_restore(
        &mut self,
        round: usize,
        r: &Repo,
        phase: &str,
        source: &Path,
        target: &Path,
        bytes: u64,
    ) -> anyhow::Result<PathBuf> {
        if target.exists() {
            std::fs::remove_dir_all(target)?;
        }
        let cmd = r.restore(source, target)?;
        self.measure(round, r.tool.name(), phase, &cmd, &r.log(phase), bytes)?;
        Ok(r.restored_root(source, target))
    }

    fn measure(
        &mut self,
        round: usize,
        tool: &str,
        phase: &str,
        cmd: &Cmd,
        log: &Path,
        bytes: u64,
    ) -> anyhow::Result<Usage> {
        let dropped = settle(self.drop_caches);
        if self.drop_caches && !dropped {
            self.dropped_ok = false;
        }
        let load1 = loadavg()[0];
        self.raw.load_samples.push(load1);
        let server0 = self.minio.cpu_seconds();
        let usage = cmd.measure(&self.self_exe, log)?;
        let server_cpu_s = self.minio.cpu_seconds() - server0;
        println!(
            "  r{} {:<30} {:<8} {:>7.2} s wall {:>7.2} s CPU {:>6} MiB RSS {:>6.2} s MinIO CPU{}",
            round + 1,
            phase,
            tool,
            usage.wall_s,
            usage.cpu_s(),
            usage.max_rss_kib / 1024,
            server_cpu_s,
            if bytes > 0 {
                format!(" {:>7.1} MB/s", bytes as f64 / 1e6 / usage.wall_s.max(1e-9))
            } else {
                String::new()
            }
        );
        self.raw.samples.push(Sample {
            round,
            tool: tool.into(),
            phase: phase.into(),
            usage: usage.clone(),
            server_cpu_s,
            bytes,
            load1,
        });
        Ok(usage)
    }

    fn ceiling(
        &mut self,
        round: usize,
        phase: &str,
        unsigned: bool,
        source: &Path,
        bytes: u64,
    ) -> anyhow::Result<()> {
        let bucket = format!("ceiling-r{}", round + 1);
        self.rt.block_on(self.minio.create_bucket(&bucket))?;
        let mut cmd = Cmd::new(&self.self_exe).args([
            "ceiling".to_string(),
            "--endpoint".into(),
            self.minio.endpoint.clone(),
            "--bucket".into(),
            bucket.clone(),
        ]);
        if unsigned {
            cmd = cmd.arg("--unsigned");
        }
        cmd = cmd.arg(source);
        let log = self
            .work
            .join("logs")
            .join(format!("r{}-{phase}.log", round + 1));
        self.measure(round, "ceiling", phase, &cmd, &log, bytes)?;
        self.rt.block_on(self.minio.remove_bucket(&bucket))?;
        Ok(())
    }
}

fn repo_for(b: &Bench, tool: Tool, round: usize) -> Repo {
    repo_named(b, tool, format!("{}-r{}", tool.name(), round + 1))
}

fn repo_named(b: &Bench, tool: Tool, name: String) -> Repo {
    Repo {
        tool,
        bin: b.bins.of(tool).to_path_buf(),
        endpoint: b.minio.endpoint.clone(),
        state: b.work.join("state").join(&name),
        bucket: name,
    }
}

/// Dataset (e) for every tool in `order`, each in a repository of its own: first backup,
/// unchanged re-backup, full restore (verified: same files and sizes).
fn many_files_round(
    b: &mut Bench,
    round: usize,
    order: &[Tool],
    edir: &Path,
    bytes: u64,
) -> anyhow::Result<()> {
    let repos: Vec<Repo> = order
        .iter()
        .map(|t| repo_named(b, *t, format!("{}-e-r{}", t.name(), round + 1)))
        .collect();
    b.open_repos(&repos)?;
    for phase in [PHASE_FIRST_E, PHASE_UNCHANGED_E] {
        for r in &repos {
            b.measure(
                round,
                r.tool.name(),
                phase,
                &r.backup(edir),
                &r.log(phase),
                bytes,
            )?;
        }
    }
    let want = dataset::manifest(edir)?;
    for r in &repos {
        let target = b.work.join("restore").join(format!("e-{}", r.tool.name()));
        let restored = b.measure_restore(round, r, PHASE_RESTORE_E, edir, &target, bytes)?;
        let got = dataset::manifest(&restored)?;
        if got != want {
            bail!(
                "{} restored {} files of (e), {} expected, or other sizes",
                r.tool.name(),
                got.len(),
                want.len()
            );
        }
        std::fs::remove_dir_all(&target)?;
    }
    b.close_repos(&repos)
}

/// Compares a restored tree with the source: same files and sizes, and the changed
/// files byte for byte.
fn verify_restore(source: &Path, restored: &Path, ch: &Changes) -> anyhow::Result<()> {
    let want = dataset::manifest(source)?;
    let got = dataset::manifest(restored)
        .with_context(|| format!("restored tree {}", restored.display()))?;
    if want != got {
        let missing = want.iter().filter(|w| !got.contains(w)).count();
        let extra = got.iter().filter(|g| !want.contains(g)).count();
        bail!(
            "restored tree {} differs from the source: {missing} files missing or of another size, {extra} unexpected",
            restored.display()
        );
    }
    let mut check: Vec<&Path> = ch.modified.iter().map(|f| f.rel.as_path()).collect();
    check.push(&ch.modified_large.0.rel);
    check.extend(ch.added.iter().map(|f| f.rel.as_path()));
    for rel in check {
        if std::fs::read(source.join(rel))? != std::fs::read(restored.join(rel))? {
            bail!("restored {} differs from the source", rel.display());
        }
    }
    Ok(())
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    if args.scale.is_nan() || args.scale <= 0.0 {
        bail!("--scale must be positive");
    }
    let mut tools = vec![Tool::Holdfast];
    for t in &args.tools {
        let tool = Tool::parse(t).with_context(|| format!("unknown tool {t:?}"))?;
        if !tools.contains(&tool) {
            tools.push(tool);
        }
    }
    let started = Instant::now();
    let load_before = loadavg();
    let machine0 = report::machine_info();
    let work = match &args.work_dir {
        Some(w) => w.clone(),
        None => std::env::temp_dir().join(format!("holdfast-bench-{}", std::process::id())),
    };
    if work.exists() {
        std::fs::remove_dir_all(&work)
            .with_context(|| format!("clearing work dir {}", work.display()))?;
    }
    std::fs::create_dir_all(work.join("logs"))?;
    let work = std::fs::canonicalize(&work)?;
    let data = work.join("data");
    let scale = Scale { factor: args.scale };
    println!(
        "holdfast-bench: scale {}, {} rounds, seed {}, tools {}, work dir {}",
        args.scale,
        args.rounds,
        args.seed,
        tools.iter().map(|t| t.name()).collect::<Vec<_>>().join(","),
        work.display()
    );
    let t0 = Instant::now();
    let files = dataset::generate(&data, args.seed, scale)?;
    let changes = Changes::new(args.seed, &files);
    let vol = data.join("vol");
    let bdir = data.join("b");
    let cdir = data.join("c");
    let mut sizes = Sizes::default();
    (sizes.a_bytes, sizes.a_files) = dataset::tree_size(&vol)?;
    sizes.b_bytes = dataset::tree_size(&bdir)?.0;
    {
        use std::os::unix::fs::MetadataExt;
        let md = std::fs::metadata(cdir.join("sparse.img"))?;
        sizes.c_apparent = md.len();
        sizes.c_allocated = md.blocks() * 512;
    }
    let edir = data.join("e");
    let many = args.many_files.unwrap_or_else(|| scale.many_files());
    if many > 0 {
        dataset::generate_many(&edir, args.seed, many)?;
        (sizes.e_bytes, sizes.e_files) = dataset::tree_size(&edir)?;
    }
    dataset::apply_changes(&vol, args.seed, &changes)?;
    (sizes.d_bytes, sizes.d_files) = dataset::tree_size(&vol)?;
    dataset::revert_changes(&vol, args.seed, &changes)?;
    sizes.modified = changes.modified.len() as u64 + 1;
    sizes.renamed = changes.renamed.len() as u64;
    sizes.modified_large_bytes = changes.modified_large.0.size;
    sizes.added = changes.added.len() as u64;
    println!(
        "datasets in {:.0} s: (a) {} files {:.0} MiB, (b) {:.0} MiB, (c) {:.0} MiB apparent / {:.0} MiB allocated, (d) {} modified {} renamed {} added, (e) {} files {:.0} MiB",
        t0.elapsed().as_secs_f64(),
        sizes.a_files,
        sizes.a_bytes as f64 / 1048576.0,
        sizes.b_bytes as f64 / 1048576.0,
        sizes.c_apparent as f64 / 1048576.0,
        sizes.c_allocated as f64 / 1048576.0,
        sizes.modified,
        sizes.renamed,
        sizes.added,
        sizes.e_files,
        sizes.e_bytes as f64 / 1048576.0
    );

    let minio_bin = match &args.minio {
        Some(m) => m.clone(),
        None => crate::minio::default_binary()
            .context("no MinIO binary: pass --minio (e2e/tools/build --path minio)")?,
    };
    let minio = Minio::start(
        &minio_bin,
        &work.join("minio"),
        &work.join("logs/minio.log"),
    )?;
    let bins = Binaries {
        holdfast: args.holdfast.clone(),
        restic: args.restic.clone(),
        kopia: args.kopia.clone(),
        rustic: args.rustic.clone(),
    };
    let vlog = work.join("logs/versions.log");
    let mut versions: Vec<(String, String)> = tools
        .iter()
        .map(|t| (t.name().to_string(), bins.version(*t, &vlog)))
        .collect();
    versions.push((
        "minio".into(),
        minio_bin
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    ));
    let drop_caches = !args.no_drop_caches;
    let mut b = Bench {
        self_exe: std::env::current_exe()?,
        bins,
        work: work.clone(),
        minio,
        rt: tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?,
        raw: Raw {
            sizes: sizes.clone(),
            versions,
            ..Raw::default()
        },
        drop_caches,
        dropped_ok: drop_caches,
    };

    for round in 0..args.rounds {
        let order: Vec<Tool> = (0..tools.len())
            .map(|i| tools[(i + round) % tools.len()])
            .collect();
        println!(
            "round {}/{} (order {}), load average {:?}",
            round + 1,
            args.rounds,
            order.iter().map(|t| t.name()).collect::<Vec<_>>().join(","),
            loadavg()
        );
        let repos: Vec<Repo> = order.iter().map(|t| repo_for(&b, *t, round)).collect();
        b.open_repos(&repos)?;
        b.ceiling(round, CEILING_MIXED, true, &vol, sizes.a_bytes)?;
        for r in &repos {
            b.measure(
                round,
                r.tool.name(),
                PHASE_FIRST,
                &r.backup(&vol),
                &r.log(PHASE_FIRST),
                sizes.a_bytes,
            )?;
        }
        let mut stored: Vec<Stored> = Vec::new();
        for r in &repos {
            let (bytes, objects) = b.rt.block_on(b.minio.bucket_size(&r.bucket))?;
            stored.push(Stored {
                round,
                tool: r.tool.name().into(),
                after_first: bytes,
                objects_after_first: objects,
                total: 0,
                objects_total: 0,
            });
        }
        for r in &repos {
            b.measure(
                round,
                r.tool.name(),
                PHASE_UNCHANGED,
                &r.backup(&vol),
                &r.log(PHASE_UNCHANGED),
                sizes.a_bytes,
            )?;
        }
        dataset::apply_changes(&vol, args.seed, &changes)?;
        for r in &repos {
            b.measure(
                round,
                r.tool.name(),
                PHASE_CHANGED,
                &r.backup(&vol),
                &r.log(PHASE_CHANGED),
                sizes.d_bytes,
            )?;
        }
        for r in &repos {
            let target = work.join("restore").join(r.tool.name());
            let restored =
                b.measure_restore(round, r, PHASE_RESTORE, &vol, &target, sizes.d_bytes)?;
            verify_restore(&vol, &restored, &changes)
                .with_context(|| format!("{} restore", r.tool.name()))?;
            std::fs::remove_dir_all(&target)?;
        }
        b.ceiling(round, CEILING_B, true, &bdir, sizes.b_bytes)?;
        b.ceiling(round, CEILING_B_SIGNED, false, &bdir, sizes.b_bytes)?;
        for r in &repos {
            b.measure(
                round,
                r.tool.name(),
                PHASE_FIRST_B,
                &r.backup(&bdir),
                &r.log(PHASE_FIRST_B),
                sizes.b_bytes,
            )?;
        }
        for r in &repos {
            b.measure(
                round,
                r.tool.name(),
                PHASE_FIRST_C,
                &r.backup(&cdir),
                &r.log(PHASE_FIRST_C),
                sizes.c_apparent,
            )?;
        }
        for (r, s) in repos.iter().zip(stored.iter_mut()) {
            let (bytes, objects) = b.rt.block_on(b.minio.bucket_size(&r.bucket))?;
            s.total = bytes;
            s.objects_total = objects;
            println!(
                "  r{} stored {:<8} {:>8.1} MiB after (a), {:>8.1} MiB after all ({} objects)",
                round + 1,
                r.tool.name(),
                s.after_first as f64 / 1048576.0,
                bytes as f64 / 1048576.0,
                objects
            );
        }
        b.raw.stored.extend(stored);
        dataset::revert_changes(&vol, args.seed, &changes)?;
        if many > 0 {
            many_files_round(&mut b, round, &order, &edir, sizes.e_bytes)?;
        }
        b.close_repos(&repos)?;
        std::fs::write(work.join("raw.json"), serde_json::to_vec_pretty(&b.raw)?)?;
    }
    let load_after = loadavg();
    let machine = Machine {
        load_before,
        load_after,
        page_cache_dropped: b.dropped_ok,
        ..machine0
    };
    let report = Report::new(
        &b.raw,
        &machine,
        &args,
        tools.iter().map(|t| t.name().to_string()).collect(),
        started.elapsed().as_secs_f64(),
    );
    for p in [&args.md, &args.json] {
        if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
    }
    let previous = std::fs::read_to_string(&args.md).ok();
    std::fs::write(
        &args.md,
        report::with_appendix(report.markdown(), previous.as_deref()),
    )?;
    std::fs::write(
        &args.json,
        serde_json::to_string_pretty(&report.json())? + "\n",
    )?;
    println!("\n{}", report.summary());
    println!(
        "wrote {} and {}; raw samples and logs in {}",
        args.md.display(),
        args.json.display(),
        work.display()
    );
    drop(b);
    if !args.keep {
        for d in ["data", "minio", "restore"] {
            let _ = std::fs::remove_dir_all(work.join(d));
        }
    }
    Ok(())
}
