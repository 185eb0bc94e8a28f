//! The image map: which local executable stands in for which container image,
//! and how a container's `command` picks the program to run. Pure; no IO except
//! [`ImageMap::load`].
//!
//! File format: one `image=executable` per line, optionally followed by the
//! word `no-entrypoint`; blank lines and lines starting with `#` are ignored;
//! whitespace around both sides is trimmed; the executable must be an absolute
//! path. `no-entrypoint` marks images that have no ENTRYPOINT (busybox-like):
//! for them a pod's `args` are its command when it gives no `command`.
//!
//! Matching rule: both the keys of the file and the pod's `image` are reduced to
//! their repository path (registry host, `:tag` and `@digest` removed; the first
//! path component counts as a registry host when it contains `.` or `:` or is
//! `localhost`). A pod image matches a key with the same repository path first,
//! else a key equal to the last path component of the pod image. So
//! `ghcr.io/holdfast-dev/holdfast:v1` matches a key `holdfast-dev/holdfast` and
//! otherwise a key `holdfast`; `docker.io/library/busybox:1.37` matches `busybox`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ImageMapError {
    #[error("line {line}: expected `image=executable`, got {text:?}")]
    Syntax { line: usize, text: String },
    #[error("line {line}: executable {path:?} is not an absolute path")]
    RelativeExecutable { line: usize, path: String },
    #[error("line {line}: image {image:?} is listed twice")]
    Duplicate { line: usize, image: String },
    #[error("reading image map {path}: {message}")]
    Io { path: String, message: String },
}

/// The parsed image map: repository path → executable.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImageMap {
    entries: BTreeMap<String, PathBuf>,
    /// Keys marked `no-entrypoint`: images without an ENTRYPOINT, whose `args`
    /// are the command when the pod gives no `command` (busybox-like images).
    no_entrypoint: std::collections::BTreeSet<String>,
}

/// Reduces an image reference to its repository path: no registry host, no tag,
/// no digest. `registry.example:5000/a/b:tag@sha256:..` → `a/b`.
pub fn repository_path(image: &str) -> String {
    let image = image.trim();
    let without_digest = image.split('@').next().unwrap_or(image);
    let mut parts: Vec<&str> = without_digest.split('/').collect();
    if parts.len() > 1 {
        let first = parts[0];
        if first.contains('.') || first.contains(':') || first == "localhost" {
            parts.remove(0);
        }
    }
    if let Some(last) = parts.last_mut()
        && let Some((name, _tag)) = last.split_once(':')
    {
        *last = name;
    }
    parts.join("/")
}

/// The last path component of the repository path: `library/busybox` → `busybox`.
pub fn short_name(image: &str) -> String {
    let repo = repository_path(image);
    repo.rsplit('/').next().unwrap_or(&repo).to_string()
}

impl ImageMap {
    pub fn parse(text: &str) -> Result<Self, ImageMapError> {
        let mut entries = BTreeMap::new();
        let mut no_entrypoint = std::collections::BTreeSet::new();
        for (idx, raw) in text.lines().enumerate() {
            let line = idx + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let Some((image, exe)) = trimmed.split_once('=') else {
                return Err(ImageMapError::Syntax {
                    line,
                    text: raw.to_string(),
                });
            };
            let (image, mut exe) = (image.trim(), exe.trim());
            let mut flag = false;
            if let Some(rest) = exe.strip_suffix("no-entrypoint")
                && rest.ends_with(char::is_whitespace)
            {
                exe = rest.trim_end();
                flag = true;
            }
            if image.is_empty() || exe.is_empty() {
                return Err(ImageMapError::Syntax {
                    line,
                    text: raw.to_string(),
                });
            }
            if !exe.starts_with('/') {
                return Err(ImageMapError::RelativeExecutable {
                    line,
                    path: exe.to_string(),
                });
            }
            let key = repository_path(image);
            if flag {
                no_entrypoint.insert(key.clone());
            }
            if entries.insert(key.clone(), PathBuf::from(exe)).is_some() {
                return Err(ImageMapError::Duplicate { line, image: key });
            }
        }
        Ok(Self {
            entries,
            no_entrypoint,
        })
    }

    pub fn load(path: &Path) -> Result<Self, ImageMapError> {
        let text = std::fs::read_to_string(path).map_err(|e| ImageMapError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::parse(&text)
    }

    fn key(&self, image: &str) -> Option<String> {
        let repo = repository_path(image);
        if self.entries.contains_key(&repo) {
            return Some(repo);
        }
        let short = repo.rsplit('/').next().unwrap_or(&repo).to_string();
        self.entries.contains_key(&short).then_some(short)
    }

    /// The executable for a pod's `image`, per the matching rule in the module docs.
    pub fn resolve(&self, image: &str) -> Option<&Path> {
        self.key(image)
            .and_then(|k| self.entries.get(&k))
            .map(PathBuf::as_path)
    }

    /// Whether the image's line is marked `no-entrypoint`.
    pub fn has_no_entrypoint(&self, image: &str) -> bool {
        self.key(image)
            .is_some_and(|k| self.no_entrypoint.contains(&k))
    }
}

/// The program a container runs, after applying the command rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Program {
    /// File to execute.
    pub path: PathBuf,
    /// `argv[0]` as the process sees it.
    pub argv0: String,
    /// `argv[1..]`.
    pub args: Vec<String>,
}

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The command rule. With no `command`, the image's executable runs with
/// `args`. With a `command`, `c = command[0]` and the arguments are
/// `command[1..] ++ args`; `c` resolves to
/// 1. the image's executable when `c`'s file name equals the executable's file
///    name or the image's short name (`/holdfast` with image `holdfast`);
/// 2. else `c` itself when it contains `/` and exists on this machine;
/// 3. else the first `PATH` entry (the container's `PATH`, else [`DEFAULT_PATH`])
///    holding an executable named `c`, when `c` has no `/`;
/// 4. else it is an error (the container fails to start, like
///    `executable file not found`).
///
/// `argv[0]` is always `c` (so multi-call binaries such as busybox work).
pub fn resolve_program(
    image: &str,
    image_exe: &Path,
    command: &[String],
    args: &[String],
    path_env: Option<&str>,
    is_executable: impl Fn(&Path) -> bool,
) -> Result<Program, String> {
    let Some(c) = command.first() else {
        return Ok(Program {
            path: image_exe.to_path_buf(),
            argv0: image_exe.display().to_string(),
            args: args.to_vec(),
        });
    };
    let mut rest: Vec<String> = command[1..].to_vec();
    rest.extend(args.iter().cloned());
    let c_name = c.rsplit('/').next().unwrap_or(c);
    let exe_name = image_exe
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let path = if !c_name.is_empty() && (c_name == exe_name || c_name == short_name(image)) {
        image_exe.to_path_buf()
    } else if c.contains('/') {
        let p = PathBuf::from(c);
        if !is_executable(&p) {
            return Err(format!("exec: {c:?}: no such file or directory"));
        }
        p
    } else {
        let search = path_env.unwrap_or(DEFAULT_PATH);
        match search
            .split(':')
            .filter(|d| !d.is_empty())
            .map(|d| Path::new(d).join(c))
            .find(|p| is_executable(p))
        {
            Some(p) => p,
            None => return Err(format!("exec: {c:?}: executable file not found in $PATH")),
        }
    };
    Ok(Program {
        path,
        argv0: c.clone(),
        args: rest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn repository_paths() {
        assert_eq!(repository_path("busybox"), "busybox");
        assert_eq!(repository_path("busybox:1.37"), "busybox");
        assert_eq!(
            repository_path("docker.io/library/busybox:1.37"),
            "library/busybox"
        );
        assert_eq!(
            repository_path("ghcr.io/holdfast-dev/holdfast:v1@sha256:abc"),
            "holdfast-dev/holdfast"
        );
        assert_eq!(repository_path("localhost:5000/x/y"), "x/y");
        assert_eq!(repository_path("localhost/x"), "x");
        assert_eq!(
            repository_path("holdfast-dev/holdfast"),
            "holdfast-dev/holdfast"
        );
        assert_eq!(short_name("quay.io/a/b/c:1"), "c");
    }

    #[test]
    fn parse_and_resolve() {
        let map = ImageMap::parse(
            "# comment\n\nholdfast=/work/main/target/debug/holdfast\n busybox = /bin/busybox \nexample.com/team/tool:v2=/usr/bin/tool\n",
        )
        .expect("parses");
        assert_eq!(
            map.resolve("holdfast:latest"),
            Some(Path::new("/work/main/target/debug/holdfast"))
        );
        assert_eq!(
            map.resolve("ghcr.io/holdfast-dev/holdfast:v1"),
            Some(Path::new("/work/main/target/debug/holdfast"))
        );
        assert_eq!(
            map.resolve("docker.io/library/busybox"),
            Some(Path::new("/bin/busybox"))
        );
        assert_eq!(map.resolve("team/tool"), Some(Path::new("/usr/bin/tool")));
        assert_eq!(
            map.resolve("other.io/team/tool"),
            Some(Path::new("/usr/bin/tool"))
        );
        assert_eq!(
            map.resolve("tool"),
            None,
            "short name does not match a longer key"
        );
        assert_eq!(map.resolve("nginx"), None);
    }

    #[test]
    fn no_entrypoint_flag() {
        let map = ImageMap::parse("busybox=/bin/sh no-entrypoint\nholdfast=/x/holdfast\n")
            .expect("parses");
        assert_eq!(
            map.resolve("docker.io/library/busybox:1.37"),
            Some(Path::new("/bin/sh"))
        );
        assert!(map.has_no_entrypoint("busybox:1.37"));
        assert!(!map.has_no_entrypoint("holdfast"));
        assert!(!map.has_no_entrypoint("nginx"));
    }

    #[test]
    fn parse_errors() {
        assert_eq!(
            ImageMap::parse("a=/x\nnonsense\n"),
            Err(ImageMapError::Syntax {
                line: 2,
                text: "nonsense".into()
            })
        );
        assert_eq!(
            ImageMap::parse("a=bin/x"),
            Err(ImageMapError::RelativeExecutable {
                line: 1,
                path: "bin/x".into()
            })
        );
        assert_eq!(
            ImageMap::parse("a=/x\ndocker.io/a:1=/y"),
            Err(ImageMapError::Duplicate {
                line: 2,
                image: "a".into()
            })
        );
    }

    #[test]
    fn command_rule() {
        let exe = Path::new("/opt/bin/holdfast");
        let exists = |p: &Path| p == Path::new("/bin/sh") || p == Path::new("/usr/bin/env");
        // no command: image executable with args
        let p = resolve_program("holdfast", exe, &[], &s(&["mover"]), None, exists).expect("ok");
        assert_eq!(
            p,
            Program {
                path: exe.into(),
                argv0: "/opt/bin/holdfast".into(),
                args: s(&["mover"])
            }
        );
        // command naming the entrypoint (not existing here) maps to the image executable
        let p = resolve_program(
            "reg.io/x/holdfast:1",
            exe,
            &s(&["/holdfast", "run"]),
            &s(&["--x"]),
            None,
            exists,
        )
        .expect("ok");
        assert_eq!(p.path, exe);
        assert_eq!(p.argv0, "/holdfast");
        assert_eq!(p.args, s(&["run", "--x"]));
        // absolute path that exists
        let p = resolve_program(
            "holdfast",
            exe,
            &s(&["/bin/sh", "-c", "true"]),
            &[],
            None,
            exists,
        )
        .expect("ok");
        assert_eq!(p.path, Path::new("/bin/sh"));
        // PATH lookup
        let p = resolve_program("holdfast", exe, &s(&["env"]), &[], None, exists).expect("ok");
        assert_eq!(p.path, Path::new("/usr/bin/env"));
        assert_eq!(p.argv0, "env");
        let e = resolve_program("holdfast", exe, &s(&["env"]), &[], Some("/nowhere"), exists);
        assert!(e.is_err());
        assert!(resolve_program("holdfast", exe, &s(&["/nope/x"]), &[], None, exists).is_err());
    }
}
