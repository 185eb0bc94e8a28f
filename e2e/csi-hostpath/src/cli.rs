//! Command line, identical to the Go stand-in's (Go `flag` package syntax):
//! `-name value`, `-name=value`, `--name value` and `--name=value` all work;
//! boolean flags take no separate value (`-version`, `-version=true`); parsing
//! stops at `--` or at the first non-flag argument (the rest is ignored).

use std::path::PathBuf;

use clap::Parser;

#[derive(Debug, Clone, PartialEq, Eq, Parser)]
#[command(
    name = "hostpathplugin",
    about = "Hostpath CSI driver for the Holdfast testbed: volumes are directories <statedir>/<volumeID>, \
             snapshots gzipped tarballs <statedir>/<snapshotID>.snap, bookkeeping in <statedir>/state.json",
    disable_version_flag = true
)]
pub struct Args {
    /// CSI endpoint (unix://PATH)
    #[arg(long, default_value = "unix:///csi/csi.sock")]
    pub endpoint: String,
    /// driver name
    #[arg(long, default_value = "hostpath.csi.k8s.io")]
    pub drivername: String,
    /// node id (required)
    #[arg(long, default_value = "")]
    pub nodeid: String,
    /// directory for volumes, snapshots and state.json
    #[arg(long, default_value = "/csi-data-dir")]
    pub statedir: PathBuf,
    /// directory for snapshot tarballs (default: the statedir); group snapshots need
    /// it on another filesystem than the statedir, which they freeze
    #[arg(long)]
    pub snapshotdir: Option<PathBuf>,
    /// seconds a group snapshot may keep the statedir's filesystem frozen while it
    /// copies the member volumes; longer and it gives up, thaws and fails
    #[arg(long, default_value_t = 20)]
    pub freezetimeout: u64,
    /// limit of volumes per node (0 = none)
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub maxvolumespernode: i64,
    /// print version and exit
    #[arg(long, num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub version: bool,
}

/// Flags that take no separate value argument.
const BOOL_FLAGS: &[&str] = &["version", "help", "h"];

/// Rewrites Go `flag`-style arguments (after the program name) into canonical
/// `--name` / `--name=value` form for clap; positional arguments, and
/// everything after `--`, are dropped (Go's `flag.Parse` leaves them unused).
pub fn normalize_go_flags<I: IntoIterator<Item = String>>(args: I) -> Vec<String> {
    let mut it = args.into_iter();
    let mut out: Vec<String> = it.next().into_iter().collect();
    while let Some(arg) = it.next() {
        if arg == "--" || arg == "-" || !arg.starts_with('-') {
            break;
        }
        let body = arg.strip_prefix("--").unwrap_or(&arg[1..]);
        let (name, value) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (body, None),
        };
        let name = if name == "h" { "help" } else { name };
        match value {
            Some(v) => out.push(format!("--{name}={v}")),
            None if BOOL_FLAGS.contains(&name) => out.push(format!("--{name}")),
            None => match it.next() {
                Some(v) => out.push(format!("--{name}={v}")),
                None => out.push(format!("--{name}")),
            },
        }
    }
    out
}

pub fn parse() -> Args {
    Args::parse_from(normalize_go_flags(std::env::args()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        let v = std::iter::once("hostpathplugin")
            .chain(args.iter().copied())
            .map(String::from);
        Args::try_parse_from(normalize_go_flags(v))
    }

    #[test]
    fn defaults() {
        let a = parse(&[]).unwrap();
        assert_eq!(a.endpoint, "unix:///csi/csi.sock");
        assert_eq!(a.drivername, "hostpath.csi.k8s.io");
        assert_eq!(a.nodeid, "");
        assert_eq!(a.statedir, PathBuf::from("/csi-data-dir"));
        assert_eq!(a.maxvolumespernode, 0);
        assert_eq!(a.snapshotdir, None);
        assert_eq!(a.freezetimeout, 20);
        assert!(!a.version);
    }

    #[test]
    fn testbed_command_line() {
        let a = parse(&[
            "--endpoint",
            "unix:///t/csi/csi.sock",
            "--nodeid",
            "holdfast-node-1",
            "--drivername",
            "hostpath.csi.k8s.io",
            "--statedir",
            "/t/csi/data",
            "--snapshotdir",
            "/t/csi/snapshots",
            "--freezetimeout=15",
        ])
        .unwrap();
        assert_eq!(a.snapshotdir, Some(PathBuf::from("/t/csi/snapshots")));
        assert_eq!(a.freezetimeout, 15);
        assert_eq!(a.endpoint, "unix:///t/csi/csi.sock");
        assert_eq!(a.nodeid, "holdfast-node-1");
        assert_eq!(a.statedir, PathBuf::from("/t/csi/data"));
    }

    #[test]
    fn go_flag_syntax() {
        let a = parse(&[
            "-nodeid=n1",
            "-statedir",
            "/s",
            "--maxvolumespernode=-1",
            "-endpoint",
            "-weird",
        ])
        .unwrap();
        assert_eq!(
            (a.nodeid.as_str(), a.maxvolumespernode, a.endpoint.as_str()),
            ("n1", -1, "-weird")
        );
        assert_eq!(a.statedir, PathBuf::from("/s"));
        assert!(parse(&["-version"]).unwrap().version);
        assert!(parse(&["--version=true"]).unwrap().version);
        assert!(!parse(&["-version=false"]).unwrap().version);
        // bool flags do not consume the next argument; parsing stops at a positional
        let a = parse(&["-version", "-nodeid", "x", "positional", "-nodeid", "y"]).unwrap();
        assert!(a.version && a.nodeid == "x");
        assert_eq!(parse(&["--", "-nodeid", "x"]).unwrap().nodeid, "");
        assert!(parse(&["-nosuchflag=1"]).is_err());
        assert!(parse(&["-maxvolumespernode", "many"]).is_err());
        assert_eq!(
            parse(&["-h"]).unwrap_err().kind(),
            clap::error::ErrorKind::DisplayHelp
        );
    }
}
