//! The in-namespace launcher: `holdfast-node-agent __shim <json>` runs as the
//! first process of a container, already inside a private mount namespace made
//! by `unshare --mount --propagation private`. It bind-mounts the pod's volumes
//! onto their mount paths, creates the working directory, drops to the
//! container's user/group and `exec`s the container program (same pid, so the
//! agent can `nsenter` it later for exec). For `kubectl exec` the same shim runs
//! under `nsenter --mount --target <pid>` with no mounts.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub const SHIM_ARG: &str = "__shim";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MountSpec {
    pub source: PathBuf,
    pub target: PathBuf,
    pub read_only: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct ShimSpec {
    pub mounts: Vec<MountSpec>,
    pub program: PathBuf,
    pub argv0: String,
    pub args: Vec<String>,
    pub cwd: Option<PathBuf>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub groups: Vec<u32>,
    /// Where to record why the program could not be started.
    pub error_file: Option<PathBuf>,
}

fn do_mounts(mounts: &[MountSpec]) -> Result<(), String> {
    use nix::mount::{MsFlags, mount};
    use std::os::fd::AsRawFd;
    let mut sorted: Vec<&MountSpec> = mounts.iter().collect();
    sorted.sort_by_key(|m| m.target.components().count());
    // Open every source before mounting anything: a volume mounted over a parent of another
    // volume's source (an emptyDir at /tmp while the agent's state lives under /tmp) would
    // otherwise hide that source. Mounting from /proc/self/fd/N binds the opened inode itself.
    let mut sources = Vec::with_capacity(sorted.len());
    for m in &sorted {
        let f = std::fs::File::open(&m.source)
            .map_err(|e| format!("opening mount source {}: {e}", m.source.display()))?;
        sources.push(f);
    }
    for (m, src) in sorted.iter().zip(&sources) {
        let src_is_dir = src.metadata().map(|md| md.is_dir()).unwrap_or(false);
        if src_is_dir {
            std::fs::create_dir_all(&m.target)
                .map_err(|e| format!("creating mount point {}: {e}", m.target.display()))?;
        } else {
            if let Some(parent) = m.target.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| format!("creating {}: {e}", parent.display()))?;
            }
            if !m.target.exists() {
                std::fs::File::create(&m.target)
                    .map_err(|e| format!("creating mount point {}: {e}", m.target.display()))?;
            }
        }
        let fd_path = PathBuf::from(format!("/proc/self/fd/{}", src.as_raw_fd()));
        mount(
            Some(&fd_path),
            &m.target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| {
            format!(
                "bind-mounting {} on {}: {e}",
                m.source.display(),
                m.target.display()
            )
        })?;
        if m.read_only {
            mount(
                None::<&str>,
                &m.target,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            )
            .map_err(|e| format!("remounting {} read-only: {e}", m.target.display()))?;
        }
    }
    Ok(())
}

fn drop_privileges(spec: &ShimSpec) -> Result<(), String> {
    use nix::unistd::{Gid, Uid, setgid, setgroups, setuid};
    if spec.uid.is_none() && spec.gid.is_none() && spec.groups.is_empty() {
        return Ok(());
    }
    let gid = spec.gid.unwrap_or(0);
    let mut groups: Vec<Gid> = spec.groups.iter().copied().map(Gid::from_raw).collect();
    groups.dedup();
    setgroups(&groups).map_err(|e| format!("setgroups: {e}"))?;
    setgid(Gid::from_raw(gid)).map_err(|e| format!("setgid {gid}: {e}"))?;
    if let Some(uid) = spec.uid {
        setuid(Uid::from_raw(uid)).map_err(|e| format!("setuid {uid}: {e}"))?;
    }
    Ok(())
}

fn start(spec: &ShimSpec) -> String {
    if let Err(e) = do_mounts(&spec.mounts) {
        return e;
    }
    if let Some(cwd) = &spec.cwd
        && let Err(e) = std::fs::create_dir_all(cwd)
    {
        return format!("creating working directory {}: {e}", cwd.display());
    }
    // Open the program while still root: like an image's binary inside a container, it has to
    // be reachable whatever the host directories above it allow (a build under /root is mode
    // 0700 there). Executing the open file checks only the file's own permissions.
    let program = match std::fs::File::open(&spec.program) {
        Ok(f) => f,
        Err(e) => return format!("opening {:?} ({}): {e}", spec.argv0, spec.program.display()),
    };
    if let Err(e) = drop_privileges(spec) {
        return e;
    }
    if let Some(cwd) = &spec.cwd
        && let Err(e) = std::env::set_current_dir(cwd)
    {
        return format!("changing to working directory {}: {e}", cwd.display());
    }
    exec_file(&program, spec)
}

/// fexecve(2) of an open file with the shim's environment; returns only on failure.
fn exec_file(program: &std::fs::File, spec: &ShimSpec) -> String {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let cstr = |b: &[u8]| {
        CString::new(b).map_err(|_| "argument or environment contains a NUL byte".to_string())
    };
    let argv: Result<Vec<CString>, String> = std::iter::once(spec.argv0.as_bytes())
        .chain(spec.args.iter().map(|a| a.as_bytes()))
        .map(cstr)
        .collect();
    let envp: Result<Vec<CString>, String> = std::env::vars_os()
        .map(|(k, v)| cstr(&[k.as_bytes(), b"=", v.as_bytes()].concat()))
        .collect();
    let (argv, envp) = match (argv, envp) {
        (Ok(a), Ok(e)) => (a, e),
        (Err(e), _) | (_, Err(e)) => return e,
    };
    // A `#!` script's interpreter reopens /dev/fd/N, so the descriptor must survive the exec.
    let _ = nix::fcntl::fcntl(
        program,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    );
    let err = match nix::unistd::fexecve(program, &argv, &envp) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    format!("exec {:?} ({}): {err}", spec.argv0, spec.program.display())
}

/// Entry point of `__shim`; never returns.
pub fn main(arg: &str) -> ! {
    let spec: ShimSpec = match serde_json::from_str(arg) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("holdfast-node-agent shim: bad spec: {e}");
            std::process::exit(128);
        }
    };
    let message = start(&spec);
    eprintln!("holdfast-node-agent: failed to start container: {message}");
    if let Some(f) = &spec.error_file {
        let _ = std::fs::write(f, &message);
    }
    std::process::exit(128);
}
