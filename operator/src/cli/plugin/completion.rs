//! `completion bash|zsh|fish|elvish|powershell`: the shell completion script of the whole
//! binary, for the name it was called by (`holdfast` or `kubectl-holdfast`). Pure but for
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

#[cfg(test)]
mod tests {
    use super::*;

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
