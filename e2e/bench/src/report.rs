//! Medians, ratios, and the two outputs: `docs/benchmarks.md` and `docs/benchmarks.json`.

use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::run::{
    CEILING_B, CEILING_B_SIGNED, CEILING_MIXED, PHASE_CHANGED, PHASE_FIRST, PHASE_FIRST_B,
    PHASE_FIRST_C, PHASE_FIRST_E, PHASE_RESTORE, PHASE_RESTORE_E, PHASE_UNCHANGED,
    PHASE_UNCHANGED_E, Raw, RunArgs,
};

const US: &str = "holdfast";
const PEERS: [&str; 3] = ["restic", "kopia", "rustic"];
/// The phases with a target of their own in PERFORMANCE.md.
pub const RATIO_PHASES: [&str; 4] = [PHASE_FIRST, PHASE_UNCHANGED, PHASE_CHANGED, PHASE_RESTORE];
/// The other phases of the ratio table (in the JSON's `ratios` too).
const EXTRA_PHASES: [&str; 5] = [
    PHASE_FIRST_B,
    PHASE_FIRST_C,
    PHASE_FIRST_E,
    PHASE_UNCHANGED_E,
    PHASE_RESTORE_E,
];
/// Dataset (e)'s phases: their peak RSS is reported apart.
const MANY_FILES_PHASES: [&str; 3] = [PHASE_FIRST_E, PHASE_UNCHANGED_E, PHASE_RESTORE_E];
/// Peak RSS allowed to holdfast on dataset (e) (issue 17: 1,000,000 files in ≤ 256 MiB).
const MANY_FILES_RSS_MIB: f64 = 256.0;

/// The machine and its load.
#[derive(Clone, Debug, Default)]
pub struct Machine {
    /// Model name and the hashing/crypto features that matter here, as `/proc/cpuinfo` says.
    pub cpu: String,
    /// Whether the CPU has the SHA extensions (`sha_ni`); `None` when cpuinfo was unreadable.
    pub sha_ni: Option<bool>,
    pub cores: usize,
    pub memory_gib: f64,
    pub kernel: String,
    pub load_before: [f64; 3],
    pub load_after: [f64; 3],
    pub page_cache_dropped: bool,
}

/// CPU model, core count, memory and kernel of this machine.
pub fn machine_info() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let flags_line = cpuinfo.lines().find(|l| l.starts_with("flags"));
    let flags = flags_line.unwrap_or("");
    let sha_ni = flags_line.map(|f| f.split_whitespace().any(|f| f == "sha_ni"));
    let mut feats = Vec::new();
    for (flag, name) in [
        ("sha_ni", "SHA-NI"),
        ("aes", "AES-NI"),
        ("avx2", "AVX2"),
        ("avx512f", "AVX-512"),
    ] {
        if flags.split_whitespace().any(|f| f == flag) {
            feats.push(name);
        }
    }
    match sha_ni {
        Some(false) => feats.push("no SHA-NI"),
        None => feats.push("CPU flags unknown"),
        Some(true) => {}
    }
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: f64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    Machine {
        cpu: format!("{cpu} ({})", feats.join(", ")),
        sha_ni,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        memory_gib: (mem_kib / 1048576.0 * 10.0).round() / 10.0,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
        ..Machine::default()
    }
}

/// Marks the start of hand-written sections at the end of `docs/benchmarks.md` (focused
/// measurements between full runs): a regenerated report keeps them.
pub const APPENDIX_MARKER: &str =
    "<!-- Hand-written below this line (kept when the report is regenerated) -->";

/// `generated`, followed by the hand-written appendix of the `previous` report, if it has one.
pub fn with_appendix(generated: String, previous: Option<&str>) -> String {
    match previous.and_then(|p| p.find(APPENDIX_MARKER).map(|i| &p[i..])) {
        Some(appendix) => format!("{}\n\n{appendix}", generated.trim_end()),
        None => generated,
    }
}

pub fn median(v: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn num(x: Option<f64>) -> Value {
    x.map_or(Value::Null, |x| json!(round3(x)))
}

/// Aggregated results.
pub struct Report<'a> {
    raw: &'a Raw,
    machine: &'a Machine,
    args: &'a RunArgs,
    tools: Vec<String>,
    elapsed_s: f64,
    rounds: Vec<usize>,
}

impl<'a> Report<'a> {
    pub fn new(
        raw: &'a Raw,
        machine: &'a Machine,
        args: &'a RunArgs,
        tools: Vec<String>,
        elapsed_s: f64,
    ) -> Report<'a> {
        let mut rounds: Vec<usize> = raw.samples.iter().map(|s| s.round).collect();
        rounds.sort_unstable();
        rounds.dedup();
        Report {
            raw,
            machine,
            args,
            tools,
            elapsed_s,
            rounds,
        }
    }

    fn sample(&self, round: usize, tool: &str, phase: &str) -> Option<&crate::run::Sample> {
        self.raw
            .samples
            .iter()
            .find(|s| s.round == round && s.tool == tool && s.phase == phase)
    }

    fn wall(&self, round: usize, tool: &str, phase: &str) -> Option<f64> {
        self.sample(round, tool, phase).map(|s| s.usage.wall_s)
    }

    /// Per-round values of `f`, for rounds where it is defined.
    fn per_round(&self, f: impl Fn(usize) -> Option<f64>) -> Vec<f64> {
        self.rounds.iter().filter_map(|r| f(*r)).collect()
    }

    /// Ratios `peer wall / our wall` in each round.
    pub fn ratios(&self, phase: &str, peer: &str) -> Vec<f64> {
        self.per_round(|r| Some(self.wall(r, peer, phase)? / self.wall(r, US, phase)?))
    }

    /// Ceiling time / our time for the same bytes, per round.
    fn ceiling_fractions(&self, ceiling: &str, phase: &str) -> Vec<f64> {
        self.per_round(|r| Some(self.wall(r, "ceiling", ceiling)? / self.wall(r, US, phase)?))
    }

    pub fn ceiling_fraction(&self) -> Option<f64> {
        median(&self.ceiling_fractions(CEILING_B, PHASE_FIRST_B))
    }

    /// CPU seconds per GB (10^9 bytes of file content) over the first backups of (a)
    /// and (b); the sparse file is left out (its holes cost nothing to store).
    pub fn cpu_per_gb(&self, tool: &str) -> Option<f64> {
        median(&self.per_round(|r| {
            let a = self.sample(r, tool, PHASE_FIRST)?;
            let b = self.sample(r, tool, PHASE_FIRST_B)?;
            Some((a.usage.cpu_s() + b.usage.cpu_s()) / ((a.bytes + b.bytes) as f64 / 1e9))
        }))
    }

    /// Peak RSS over the phases of datasets (a)–(d) of a round, median over rounds.
    pub fn peak_rss_mib(&self, tool: &str) -> Option<f64> {
        self.peak_rss_where(tool, |p| !MANY_FILES_PHASES.contains(&p))
    }

    /// Peak RSS over the phases of dataset (e) of a round, median over rounds.
    pub fn many_files_peak_rss_mib(&self, tool: &str) -> Option<f64> {
        self.peak_rss_where(tool, |p| MANY_FILES_PHASES.contains(&p))
    }

    fn peak_rss_where(&self, tool: &str, phase: impl Fn(&str) -> bool) -> Option<f64> {
        median(&self.per_round(|r| {
            self.raw
                .samples
                .iter()
                .filter(|s| s.round == r && s.tool == tool && phase(&s.phase))
                .map(|s| s.usage.max_rss_kib as f64 / 1024.0)
                .reduce(f64::max)
        }))
    }

    fn median_of(
        &self,
        tool: &str,
        phase: &str,
        f: impl Fn(&crate::run::Sample) -> f64,
    ) -> Option<f64> {
        median(
            &self
                .raw
                .samples
                .iter()
                .filter(|s| s.tool == tool && s.phase == phase)
                .map(f)
                .collect::<Vec<_>>(),
        )
    }

    fn loads(&self) -> (f64, f64, f64) {
        let l = &self.raw.load_samples;
        if l.is_empty() {
            return (0.0, 0.0, 0.0);
        }
        let min = l.iter().copied().fold(f64::INFINITY, f64::min);
        let max = l.iter().copied().fold(0.0, f64::max);
        (min, l.iter().sum::<f64>() / l.len() as f64, max)
    }

    /// The JSON summary: exactly `ratios` (every phase of the table), `ceiling_fraction`,
    /// `cpu_seconds_per_gb`, `peak_rss_mib`, `many_files_peak_rss_mib`, `rounds`, `machine`.
    pub fn json(&self) -> Value {
        let mut ratios = serde_json::Map::new();
        for phase in RATIO_PHASES.iter().chain(EXTRA_PHASES.iter()) {
            if !self.shown(phase) {
                continue;
            }
            let mut m = serde_json::Map::new();
            for peer in PEERS {
                m.insert(peer.into(), num(median(&self.ratios(phase, peer))));
            }
            ratios.insert((*phase).into(), Value::Object(m));
        }
        let per_tool = |f: &dyn Fn(&str) -> Option<f64>| {
            let mut m = serde_json::Map::new();
            for t in std::iter::once(US).chain(PEERS) {
                m.insert(t.into(), num(f(t)));
            }
            Value::Object(m)
        };
        let (lmin, lmean, lmax) = self.loads();
        json!({
            "ratios": ratios,
            "ceiling_fraction": num(self.ceiling_fraction()),
            "cpu_seconds_per_gb": per_tool(&|t| self.cpu_per_gb(t)),
            "peak_rss_mib": per_tool(&|t| self.peak_rss_mib(t)),
            "many_files_peak_rss_mib": per_tool(&|t| self.many_files_peak_rss_mib(t)),
            "rounds": self.rounds.len(),
            "machine": {
                "cpu": self.machine.cpu,
                "sha_ni": self.machine.sha_ni,
                "cores": self.machine.cores,
                "memory_gib": self.machine.memory_gib,
                "kernel": self.machine.kernel,
                "load_average_before": self.machine.load_before,
                "load_average_after": self.machine.load_after,
                "load_average_1m_during": {"min": round3(lmin), "mean": round3(lmean), "max": round3(lmax), "samples": self.raw.load_samples.len()},
                "page_cache_dropped_before_each_command": self.machine.page_cache_dropped,
            },
        })
    }

    /// Whether the tables show `phase`: always the targeted ones, the others when measured
    /// (dataset (e) can be left out with `--many-files 0`).
    fn shown(&self, phase: &str) -> bool {
        RATIO_PHASES.contains(&phase) || self.raw.samples.iter().any(|s| s.phase == phase)
    }

    fn fmt_ratio(&self, phase: &str, peer: &str) -> String {
        let v = self.ratios(phase, peer);
        match median(&v) {
            None => "–".into(),
            Some(m) if v.len() > 1 => {
                let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = v.iter().copied().fold(0.0, f64::max);
                format!("**{m:.2}×** ({lo:.2}–{hi:.2})")
            }
            Some(m) => format!("**{m:.2}×**"),
        }
    }

    /// Target check of one phase (PERFORMANCE.md), as text.
    fn target(&self, phase: &str) -> String {
        let r = |p: &str| median(&self.ratios(phase, p));
        let fmt = |ok: bool| if ok { "met" } else { "**missed**" };
        let min_of = |ps: &[&str]| {
            ps.iter()
                .filter_map(|p| r(p))
                .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.min(x))))
        };
        match phase {
            PHASE_FIRST => {
                let ok = r("restic").is_none_or(|x| x >= 2.0)
                    && r("kopia").is_none_or(|x| x >= 1.5)
                    && r("rustic").is_none_or(|x| x >= 2.0);
                format!("≥2× restic, ≥1.5× kopia, ≥2× rustic: {}", fmt(ok))
            }
            PHASE_UNCHANGED | PHASE_CHANGED => {
                let ok = min_of(&PEERS).is_none_or(|x| x >= 1.5);
                format!("≥1.5× the fastest peer: {}", fmt(ok))
            }
            PHASE_RESTORE => {
                let ok = min_of(&["restic", "kopia"]).is_none_or(|x| x >= 1.5);
                format!("≥1.5× restic and kopia: {}", fmt(ok))
            }
            PHASE_UNCHANGED_E => {
                let ok = min_of(&PEERS).is_none_or(|x| x > 1.0);
                format!("faster than every peer: {}", fmt(ok))
            }
            PHASE_FIRST_E | PHASE_RESTORE_E => {
                match self.median_of(US, phase, |x| x.usage.max_rss_kib as f64 / 1024.0) {
                    Some(rss) => format!(
                        "holdfast peak RSS {rss:.0} MiB ≤ {MANY_FILES_RSS_MIB:.0}: {}",
                        fmt(rss <= MANY_FILES_RSS_MIB)
                    ),
                    None => String::new(),
                }
            }
            _ => String::new(),
        }
    }

    /// A few lines for the terminal.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "{}", self.ratio_table(true));
        let _ = writeln!(
            s,
            "ceiling fraction (first backup of (b) vs raw read+PUT): {}",
            self.ceiling_fraction()
                .map_or("–".into(), |x| format!("{x:.2}"))
        );
        for t in &self.tools {
            let _ = writeln!(
                s,
                "{t}: {} CPU s/GB, peak RSS {} MiB",
                self.cpu_per_gb(t).map_or("–".into(), |x| format!("{x:.2}")),
                self.peak_rss_mib(t)
                    .map_or("–".into(), |x| format!("{x:.0}"))
            );
        }
        s
    }

    fn ratio_table(&self, with_target: bool) -> String {
        let mut s = String::new();
        let _ = write!(s, "| phase | vs restic | vs kopia | vs rustic |");
        if with_target {
            s.push_str(" target (PERFORMANCE.md) |");
        }
        s.push('\n');
        s.push_str("|---|---|---|---|");
        if with_target {
            s.push_str("---|");
        }
        s.push('\n');
        for phase in RATIO_PHASES.iter().chain(EXTRA_PHASES.iter()) {
            if !self.shown(phase) {
                continue;
            }
            let _ = write!(s, "| {} |", phase_label(phase));
            for p in PEERS {
                let _ = write!(s, " {} |", self.fmt_ratio(phase, p));
            }
            if with_target {
                let _ = write!(s, " {} |", self.target(phase));
            }
            s.push('\n');
        }
        s
    }

    pub fn markdown(&self) -> String {
        let sz = &self.raw.sizes;
        let mib = |b: u64| b as f64 / 1048576.0;
        let mut s = String::new();
        let _ = writeln!(s, "# Benchmarks: holdfast mover vs restic, kopia, rustic\n");
        let _ = writeln!(
            s,
            "Generated by the benchmark command (`e2e/bench/run`, see `e2e/bench/README.md`); do not edit by hand.\n\
             Method and targets: `PERFORMANCE.md` (shared). Ratios are **peer wall time / holdfast wall time** \
             in the same round, median over rounds (min–max in parentheses): **above 1 means holdfast is faster**. \
             Absolute times depend on the machine and on its load during the run (both measured, under \
             *Machine and conditions*); the ratios are the result.\n"
        );
        let _ = writeln!(s, "Command:\n\n```\n{}\n```\n", self.command_line());
        if !self.args.commit.is_empty() {
            let _ = writeln!(s, "Tree: `{}`\n", self.args.commit);
        }
        let _ = writeln!(s, "## Ratios\n\n{}", self.ratio_table(true));
        let ceil = self.ceiling_fraction();
        let ceil_mixed = median(&self.ceiling_fractions(CEILING_MIXED, PHASE_FIRST));
        let ceil_signed = median(&self.ceiling_fractions(CEILING_B_SIGNED, PHASE_FIRST_B));
        let f2 = |x: Option<f64>| x.map_or("–".into(), |x| format!("{x:.2}"));
        let _ = writeln!(
            s,
            "**Ceiling fraction** (holdfast's first backup of the incompressible file (b) vs reading the same bytes \
             and PUTting them to the same MinIO in 32 MiB objects, 4 in flight, unsigned payloads with a CRC32C as \
             the mover sends its packs, no processing): **{}** (target ≥ 0.6: {}). Against a ceiling that signs \
             payloads (SigV4 SHA-256 of each body): {}. Mixed tree (a) vs its ceiling: {}.\n",
            f2(ceil),
            if ceil.is_none_or(|c| c >= 0.6) {
                "met"
            } else {
                "**missed**"
            },
            f2(ceil_signed),
            f2(ceil_mixed)
        );
        let _ = writeln!(
            s,
            "| tool | CPU s per GB backed up | peak RSS MiB |\n|---|---|---|"
        );
        for t in self.tools.iter() {
            let _ = writeln!(
                s,
                "| {t} | {} | {} |",
                f2(self.cpu_per_gb(t)),
                self.peak_rss_mib(t)
                    .map_or("–".into(), |x| format!("{x:.0}"))
            );
        }
        let restic_cpu = self.cpu_per_gb("restic");
        let ours_cpu = self.cpu_per_gb(US);
        let restic_rss = self.peak_rss_mib("restic");
        let ours_rss = self.peak_rss_mib(US);
        let _ = writeln!(
            s,
            "\nCPU s per GB: user+sys CPU of the first backups of (a) and (b) over their bytes (10^9); target ≤ 0.5× restic: {}. \
             Peak RSS: the largest `ru_maxrss` over the phases of (a)–(d) of a round, median of rounds; target ≤ restic's: {}. \
             The many-files phases (e) are apart: {}.\n",
            match (ours_cpu, restic_cpu) {
                (Some(o), Some(r)) => format!(
                    "{:.2}× restic, {}",
                    o / r,
                    if o <= 0.5 * r { "met" } else { "**missed**" }
                ),
                _ => "–".into(),
            },
            match (ours_rss, restic_rss) {
                (Some(o), Some(r)) => format!(
                    "{:.2}× restic, {}",
                    o / r,
                    if o <= r { "met" } else { "**missed**" }
                ),
                _ => "–".into(),
            },
            self.tools
                .iter()
                .map(|t| format!(
                    "{t} {} MiB",
                    self.many_files_peak_rss_mib(t)
                        .map_or("–".into(), |x| format!("{x:.0}"))
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );

        let m = self.machine;
        let (lmin, lmean, lmax) = self.loads();
        let _ = writeln!(s, "## Machine and conditions\n");
        let _ = writeln!(s, "- CPU: {}, {} cores (nproc)", m.cpu, m.cores);
        let _ = writeln!(s, "- Memory: {} GiB; kernel {}", m.memory_gib, m.kernel);
        let _ = writeln!(
            s,
            "- Load average (1, 5, 15 min) before the run: {:.2} {:.2} {:.2}; after: {:.2} {:.2} {:.2}; \
             1-minute load sampled before each of the {} measured commands: min {lmin:.2}, mean {lmean:.2}, max {lmax:.2} \
             (on {} cores). The load average counts every runnable process, the benchmark's own (the previous \
             command, MinIO) included; which other processes ran was not recorded. Every ratio compares tools \
             within the same round.",
            m.load_before[0],
            m.load_before[1],
            m.load_before[2],
            m.load_after[0],
            m.load_after[1],
            m.load_after[2],
            self.raw.load_samples.len(),
            m.cores
        );
        let _ = writeln!(
            s,
            "- Page cache: {}",
            if m.page_cache_dropped {
                "`sync; echo 3 > /proc/sys/vm/drop_caches` before every measured command (cold reads of the source and of MinIO's data)"
            } else if self.args.no_drop_caches {
                "not dropped (--no-drop-caches): sources are read from the page cache"
            } else {
                "could not be dropped (no permission): after `sync` only; sources are mostly read from the page cache"
            }
        );
        let _ = writeln!(
            s,
            "- Rounds: {}; scale {}; seed {}; wall time of the whole run {:.0} min",
            self.rounds.len(),
            self.args.scale,
            self.args.seed,
            self.elapsed_s / 60.0
        );
        let _ = writeln!(s, "- Versions:");
        for (t, v) in &self.raw.versions {
            let _ = writeln!(s, "  - {t}: `{v}`");
        }

        let _ = writeln!(s, "\n## Datasets (seeded)\n");
        let _ = writeln!(
            s,
            "- (a) mixed tree: {} files, {:.0} MiB — {} small files (512 B–64 KiB, log-uniform, 100 per directory) \
             and 8 large files; half of the bytes text-like (compressible about 3:1), half random\n\
             - (b) one incompressible file: {:.0} MiB\n\
             - (c) sparse file: {:.0} MiB apparent, {:.0} MiB allocated (1 MiB of random data every 16 MiB)\n\
             - (d) (a) changed in place: {} files modified ({} small files rewritten, 4×64 KiB rewritten in one \
             {:.0} MiB file), {} renamed, {} added: {} files, {:.0} MiB\n\
             - (e) many small files: {} files of 0–512 bytes (random), {:.0} MiB, 1,000 per directory",
            sz.a_files,
            mib(sz.a_bytes),
            sz.a_files.saturating_sub(8),
            mib(sz.b_bytes),
            mib(sz.c_apparent),
            mib(sz.c_allocated),
            sz.modified,
            sz.modified.saturating_sub(1),
            mib(sz.modified_large_bytes),
            sz.renamed,
            sz.added,
            sz.d_files,
            mib(sz.d_bytes),
            sz.e_files,
            mib(sz.e_bytes)
        );
        let _ = writeln!(
            s,
            "\nEach round, for each phase, runs every tool one after another (the order rotates by one tool per round), \
             each into its own bucket of one MinIO server, with its default settings (encryption is always on; \
             compression: holdfast `auto`, restic 0.14 `auto` (repository v2), rustic's default, kopia none — its \
             default policy does not compress). Phases: first backup of (a) into an empty repository; unchanged \
             re-backup of (a); backup after (a) was changed into (d) in place (same path, so each tool's parent \
             detection applies); full restore of (d) into an empty directory (verified: same files and sizes, changed \
             files byte for byte); first backups of (b) and (c) as separate paths into the same repository; then (e) \
             into a repository of its own: first backup, unchanged re-backup, full restore (verified: same files and \
             sizes). Repository creation is not timed.\n"
        );

        let _ = writeln!(s, "## Absolute figures (medians of rounds)\n");
        let _ = writeln!(
            s,
            "| phase | tool | wall s | MB/s | CPU s (user+sys) | peak RSS MiB | MinIO CPU s |\n|---|---|---|---|---|---|---|"
        );
        let mut phases: Vec<&str> = vec![CEILING_MIXED];
        phases.extend(RATIO_PHASES);
        phases.extend([CEILING_B, CEILING_B_SIGNED]);
        phases.extend(EXTRA_PHASES);
        for phase in phases {
            let tools: Vec<String> = if phase.starts_with("ceiling") {
                vec!["ceiling".into()]
            } else {
                self.tools.clone()
            };
            for t in &tools {
                let Some(wall) = self.median_of(t, phase, |x| x.usage.wall_s) else {
                    continue;
                };
                let mbs = self.median_of(t, phase, |x| {
                    x.bytes as f64 / 1e6 / x.usage.wall_s.max(1e-9)
                });
                let _ = writeln!(
                    s,
                    "| {} | {t} | {wall:.2} | {} | {:.2} | {:.0} | {:.2} |",
                    phase_label(phase),
                    mbs.map_or("–".into(), |x| format!("{x:.0}")),
                    self.median_of(t, phase, |x| x.usage.cpu_s()).unwrap_or(0.0),
                    self.median_of(t, phase, |x| x.usage.max_rss_kib as f64 / 1024.0)
                        .unwrap_or(0.0),
                    self.median_of(t, phase, |x| x.server_cpu_s).unwrap_or(0.0),
                );
            }
        }
        let _ = writeln!(
            s,
            "\nMB/s: bytes of file content (apparent size for (c); restored bytes for restore) per wall second. \
             MinIO CPU: CPU seconds the server spent during the command.\n"
        );

        let _ = writeln!(s, "## Bytes stored (median of rounds)\n");
        let _ = writeln!(
            s,
            "| tool | after first backup of (a) | objects | after (a), (d), (b), (c) | objects |\n|---|---|---|---|---|"
        );
        for t in &self.tools {
            let st: Vec<_> = self.raw.stored.iter().filter(|x| &x.tool == t).collect();
            if st.is_empty() {
                continue;
            }
            let med = |f: &dyn Fn(&crate::run::Stored) -> u64| {
                median(&st.iter().map(|x| f(x) as f64).collect::<Vec<_>>()).unwrap_or(0.0)
            };
            let _ = writeln!(
                s,
                "| {t} | {:.1} MiB | {:.0} | {:.1} MiB | {:.0} |",
                med(&|x| x.after_first) / 1048576.0,
                med(&|x| x.objects_after_first),
                med(&|x| x.total) / 1048576.0,
                med(&|x| x.objects_total)
            );
        }

        let _ = writeln!(s, "\n## Every round (wall seconds)\n");
        let mut hdr = String::from("| round | phase |");
        let mut sep = String::from("|---|---|");
        for t in &self.tools {
            let _ = write!(hdr, " {t} |");
            sep.push_str("---|");
        }
        let _ = writeln!(s, "{hdr} ceiling |\n{sep}---|");
        for r in &self.rounds {
            for phase in RATIO_PHASES.iter().chain(EXTRA_PHASES.iter()) {
                let _ = write!(s, "| {} | {} |", r + 1, phase_label(phase));
                for t in &self.tools {
                    let _ = write!(
                        s,
                        " {} |",
                        self.wall(*r, t, phase)
                            .map_or("–".into(), |x| format!("{x:.2}"))
                    );
                }
                let c = match *phase {
                    PHASE_FIRST => self.wall(*r, "ceiling", CEILING_MIXED),
                    PHASE_FIRST_B => self.wall(*r, "ceiling", CEILING_B),
                    _ => None,
                };
                let _ = writeln!(s, " {} |", c.map_or("".into(), |x| format!("{x:.2}")));
            }
        }
        s
    }

    fn command_line(&self) -> String {
        if self.args.command_line.is_empty() {
            let mut c = format!("e2e/bench/run --rounds {}", self.args.rounds);
            if self.args.scale != 1.0 {
                let _ = write!(c, " --scale {}", self.args.scale);
            }
            c
        } else {
            self.args.command_line.clone()
        }
    }
}

fn phase_label(p: &str) -> &str {
    match p {
        PHASE_FIRST => "first backup (a)",
        PHASE_UNCHANGED => "unchanged re-backup (a)",
        PHASE_CHANGED => "1%-changed backup (d)",
        PHASE_RESTORE => "full restore (d)",
        PHASE_FIRST_B => "first backup, incompressible (b)",
        PHASE_FIRST_C => "first backup, sparse (c)",
        PHASE_FIRST_E => "first backup, many files (e)",
        PHASE_UNCHANGED_E => "unchanged re-backup, many files (e)",
        PHASE_RESTORE_E => "full restore, many files (e)",
        CEILING_MIXED => "ceiling: read+PUT (a)",
        CEILING_B => "ceiling: read+PUT (b)",
        CEILING_B_SIGNED => "ceiling: read+PUT (b), signed",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::Usage;
    use crate::run::{Sample, Sizes, Stored};
    use clap::Parser;

    #[derive(Parser)]
    struct A {
        #[command(flatten)]
        run: RunArgs,
    }

    fn sample(round: usize, tool: &str, phase: &str, wall: f64) -> Sample {
        Sample {
            round,
            tool: tool.into(),
            phase: phase.into(),
            usage: Usage {
                wall_s: wall,
                user_s: wall / 2.0,
                sys_s: wall / 4.0,
                max_rss_kib: (wall * 1024.0) as u64,
                exit_code: 0,
            },
            server_cpu_s: 0.1,
            bytes: 1_000_000_000,
            load1: 1.0,
        }
    }

    fn raw() -> Raw {
        let mut samples = Vec::new();
        for r in 0..3 {
            let slow = 1.0 + r as f64; // holdfast 1, 2, 3 s; restic always 4 s
            for phase in RATIO_PHASES.iter().chain(EXTRA_PHASES.iter()) {
                samples.push(sample(r, "holdfast", phase, slow));
                samples.push(sample(r, "restic", phase, 4.0));
                samples.push(sample(r, "kopia", phase, 2.0 * slow));
            }
            samples.push(sample(r, "ceiling", CEILING_B, 0.5 * slow));
            samples.push(sample(r, "ceiling", CEILING_MIXED, 0.5));
        }
        Raw {
            samples,
            stored: vec![Stored {
                round: 0,
                tool: "holdfast".into(),
                after_first: 10,
                objects_after_first: 1,
                total: 20,
                objects_total: 2,
            }],
            sizes: Sizes::default(),
            versions: vec![("restic".into(), "restic 0.14.0".into())],
            load_samples: vec![1.0, 3.0],
        }
    }

    #[test]
    fn a_hand_written_appendix_survives_regeneration() {
        let old = format!("# old\n\nold table\n\n{APPENDIX_MARKER}\n\n## Focused\n\nnumbers\n");
        let new = with_appendix("# new\n\nnew table\n".into(), Some(&old));
        assert_eq!(
            new,
            format!("# new\n\nnew table\n\n{APPENDIX_MARKER}\n\n## Focused\n\nnumbers\n")
        );
        assert_eq!(with_appendix("# new\n".into(), Some("# old\n")), "# new\n");
        assert_eq!(with_appendix("# new\n".into(), None), "# new\n");
    }

    #[test]
    fn conditions_state_only_what_was_measured() {
        let raw = raw();
        let args = A::parse_from(["x"]).run;
        let m = Machine {
            cpu: "Some CPU (SHA-NI, AES-NI)".into(),
            sha_ni: Some(true),
            cores: 2,
            load_before: [0.5, 0.25, 0.125],
            load_after: [3.0, 2.0, 1.0],
            ..Machine::default()
        };
        let r = Report::new(
            &raw,
            &m,
            &args,
            vec!["holdfast".into(), "restic".into()],
            1.0,
        );
        let md = r.markdown();
        assert!(!md.contains("engineers"), "{md}");
        assert!(!md.contains("noise"), "{md}");
        assert!(
            md.contains("- CPU: Some CPU (SHA-NI, AES-NI), 2 cores"),
            "{md}"
        );
        assert!(
            md.contains("before the run: 0.50 0.25 0.12; after: 3.00 2.00 1.00"),
            "{md}"
        );
        assert!(
            md.contains("before each of the 2 measured commands: min 1.00, mean 2.00, max 3.00"),
            "{md}"
        );
        let j = r.json();
        assert_eq!(j["machine"]["sha_ni"], json!(true));
        assert_eq!(j["machine"]["load_average_1m_during"]["samples"], json!(2));
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }

    #[test]
    fn ratios_are_peer_over_ours_per_round_then_median() {
        let raw = raw();
        let args = A::parse_from(["x"]).run;
        let m = Machine::default();
        let tools = vec!["holdfast".into(), "restic".into(), "kopia".into()];
        let r = Report::new(&raw, &m, &args, tools, 1.0);
        // restic 4 s vs holdfast 1, 2, 3 s: ratios 4, 2, 1.33 -> median 2
        assert_eq!(median(&r.ratios(PHASE_FIRST, "restic")), Some(2.0));
        assert_eq!(median(&r.ratios(PHASE_RESTORE, "kopia")), Some(2.0));
        assert_eq!(r.ceiling_fraction(), Some(0.5));
        // two backups of 1 GB with 0.75 * wall CPU each: 0.75 * wall per GB, median wall 2 s
        assert_eq!(r.cpu_per_gb("holdfast"), Some(1.5));
        assert_eq!(r.peak_rss_mib("restic"), Some(4.0));

        let j = r.json();
        let keys: Vec<&str> = j
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        let mut want = vec![
            "ratios",
            "ceiling_fraction",
            "cpu_seconds_per_gb",
            "peak_rss_mib",
            "many_files_peak_rss_mib",
            "rounds",
            "machine",
        ];
        want.sort_unstable();
        assert_eq!(keys, want);
        assert_eq!(j["ratios"]["first_backup"]["restic"], json!(2.0));
        assert_eq!(j["ratios"]["unchanged_backup"]["rustic"], Value::Null);
        assert_eq!(j["rounds"], json!(3));
        for phase in RATIO_PHASES {
            assert_eq!(j["ratios"][phase].as_object().expect("phase").len(), 3);
        }

        let md = r.markdown();
        assert!(
            md.contains("| first backup (a) | **2.00×** (1.33–4.00) |"),
            "{md}"
        );
        assert!(md.contains("e2e/bench/run --rounds 3"));
    }
}
