//! Shell completion: `completion bash|zsh|fish|elvish|powershell` prints the script of the
//! whole binary for the name it was called by (`holdfast` or `kubectl-holdfast`), and called
//! as `kubectl_complete-holdfast` the binary answers kubectl's own completion of
//! `kubectl holdfast …` (kubectl ≥ 1.26 runs it with the words typed so far). Pure but for
//! writing to stdout.

use clap_complete::Shell;

use super::Error;

/// `completion SHELL`.
#[derive(clap::Args, Debug, Clone)]
#[command(
    after_help = "Load it in the current shell:\n  bash: source <(kubectl-holdfast completion bash)\n  zsh:  source <(kubectl-holdfast completion zsh)\n  fish: kubectl-holdfast completion fish | source\nThe script completes the command it was made for (`kubectl-holdfast` or `holdfast`)."
)]
pub struct CompletionArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// The script for `shell`, completing `bin`.
pub fn script(shell: Shell, mut root: clap::Command, bin: &str) -> Vec<u8> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut root, bin, &mut out);
    out
}

/// Writes the script to stdout. The command completed is the executable's own name.
pub fn run(args: &CompletionArgs, root: clap::Command) -> Result<(), Error> {
    use std::io::Write;
    let bin = std::env::args_os()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "holdfast".to_string());
    let text = script(args.shell, root, &bin);
    std::io::stdout()
        .write_all(&text)
        .map_err(|e| Error::Output(e.to_string()))
}

/// Cobra's "no file completion" directive, the last line of an answer to kubectl.
const NO_FILE_COMP: &str = ":4";

/// The argument of `cmd` that flag word `w` (`--name`, `--name=v`, `-n`) names.
fn flag<'a>(cmd: &'a clap::Command, w: &str) -> Option<&'a clap::Arg> {
    if let Some(long) = w.strip_prefix("--") {
        let long = long.split_once('=').map_or(long, |(l, _)| l);
        return cmd.get_arguments().find(|a| a.get_long() == Some(long));
    }
    let short = w.strip_prefix('-')?.chars().next()?;
    cmd.get_arguments().find(|a| a.get_short() == Some(short))
}

/// Whether `a` takes a value in the next word.
fn takes_value(a: &clap::Arg) -> bool {
    matches!(
        a.get_action(),
        clap::ArgAction::Set | clap::ArgAction::Append
    ) && a.get_num_args().is_none_or(|n| n.min_values() > 0)
}

fn possible_values(a: &clap::Arg) -> Vec<String> {
    a.get_possible_values()
        .iter()
        .filter(|v| !v.is_hide_set())
        .map(|v| v.get_name().to_string())
        .collect()
}

/// What completes the last of `words` (the words after `kubectl holdfast`; the last one is
/// being typed, possibly empty): subcommands, flags or a flag's values, with descriptions
/// after a tab, as kubectl expects from a plugin. Pure.
pub fn kubectl_completions(root: &clap::Command, words: &[String]) -> Vec<String> {
    let (partial, typed) = match words.split_last() {
        Some((p, t)) => (p.as_str(), t),
        None => ("", &[][..]),
    };
    let mut cmd = root;
    let mut value_of: Option<&clap::Arg> = None;
    for w in typed {
        // The value of the flag before it.
        if value_of.take().is_some() {
            continue;
        }
        if w.starts_with('-') {
            value_of = flag(cmd, w).filter(|a| takes_value(a) && !w.contains('='));
            continue;
        }
        if let Some(sub) = cmd.find_subcommand(w) {
            cmd = sub;
        }
    }
    let about = |c: Option<&clap::builder::StyledStr>| {
        c.map(|s| format!("\t{}", s.to_string().lines().next().unwrap_or_default()))
            .unwrap_or_default()
    };
    let mut out: Vec<String> = Vec::new();
    if let Some(a) = value_of {
        out.extend(
            possible_values(a)
                .into_iter()
                .filter(|v| v.starts_with(partial)),
        );
    } else if partial.starts_with('-') {
        for a in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
            if let Some(long) = a.get_long() {
                let f = format!("--{long}");
                if f.starts_with(partial) {
                    out.push(format!("{f}{}", about(a.get_help())));
                }
            }
        }
    } else {
        for sub in cmd.get_subcommands().filter(|c| !c.is_hide_set()) {
            if sub.get_name().starts_with(partial) {
                out.push(format!("{}{}", sub.get_name(), about(sub.get_about())));
            }
        }
        // The next positional's values (`completion SHELL`).
        if let Some(p) = cmd.get_positionals().next() {
            out.extend(
                possible_values(p)
                    .into_iter()
                    .filter(|v| v.starts_with(partial)),
            );
        }
    }
    out.push(NO_FILE_COMP.to_string());
    out
}

/// Answers kubectl's completion request for `words` on stdout.
pub fn kubectl_complete(root: clap::Command, words: &[String]) -> Result<(), Error> {
    use std::io::Write;
    let mut root = root;
    root.build();
    let text = kubectl_completions(&root, words).join("\n") + "\n";
    std::io::stdout()
        .write_all(text.as_bytes())
        .map_err(|e| Error::Output(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(w: &[&str]) -> Vec<String> {
        w.iter().map(|s| s.to_string()).collect()
    }

    #[derive(clap::Parser)]
    struct Root {
        #[command(subcommand)]
        cmd: Sub,
    }

    #[derive(clap::Subcommand)]
    enum Sub {
        /// Backups.
        #[command(subcommand)]
        Backup(BackupSub),
        /// Scripts.
        Completion(CompletionArgs),
    }

    #[derive(clap::Subcommand)]
    enum BackupSub {
        /// Create one.
        Create {
            name: String,
            /// Namespace.
            #[arg(short, long)]
            namespace: Option<String>,
            /// Format.
            #[arg(short, long, value_parser = ["yaml", "json"])]
            output: Option<String>,
            /// Wait.
            #[arg(long)]
            wait: bool,
        },
        /// Describe one.
        Describe { name: String },
    }

    #[test]
    fn kubectl_gets_subcommands_flags_and_values() {
        use clap::CommandFactory;
        let mut root = Root::command();
        root.build();
        assert_eq!(
            kubectl_completions(&root, &words(&["backup", "cr"])),
            ["create\tCreate one", ":4"]
        );
        assert_eq!(
            kubectl_completions(&root, &words(&["backup", ""])).len(),
            4,
            "create, describe, help and the directive"
        );
        let flags = kubectl_completions(&root, &words(&["backup", "create", "x", "--w"]));
        assert_eq!(flags, ["--wait\tWait", ":4"]);
        assert_eq!(
            kubectl_completions(
                &root,
                &words(&["backup", "create", "-n", "ns", "x", "-o", "j"])
            ),
            ["json", ":4"]
        );
        let shells = kubectl_completions(&root, &words(&["completion", "f"]));
        assert_eq!(shells, ["fish", ":4"]);
    }

    #[test]
    fn scripts_name_the_binary_and_its_commands() {
        let root = clap::Command::new("holdfast")
            .subcommand(clap::Command::new("backup").subcommand(clap::Command::new("create")));
        let bash =
            String::from_utf8(script(Shell::Bash, root.clone(), "kubectl-holdfast")).expect("utf8");
        assert!(bash.contains("complete -F"), "{bash}");
        assert!(bash.contains("kubectl-holdfast"), "{bash}");
        assert!(bash.contains("create"), "{bash}");
        let fish = String::from_utf8(script(Shell::Fish, root, "holdfast")).expect("utf8");
        assert!(fish.contains("complete -c holdfast"), "{fish}");
    }
}
