//! Writes shell completions (bash, zsh, fish) and man pages (one per command and subcommand)
//! for `enforcer`, from its real command line, into a directory:
//! `cargo xtask dist-docs --out DIR` runs it. An example rather than part of the binary or of
//! xtask: the binary need not carry the generators, and xtask must build before the eBPF
//! toolchain is installed (`cargo xtask setup`), which building `enforcer` needs.

use std::{
    fs, io,
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap_complete::Shell;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(out), None) = (args.next(), args.next()) else {
        eprintln!("usage: dist-docs OUT_DIR");
        return ExitCode::from(2);
    };
    match generate(Path::new(&out)) {
        Ok(files) => {
            for file in files {
                println!("{}", file.display());
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("dist-docs: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Writes `OUT/man/*.1` and `OUT/completions/{enforcer.bash,_enforcer,enforcer.fish}`;
/// returns every file written.
fn generate(out: &Path) -> io::Result<Vec<PathBuf>> {
    let man = out.join("man");
    let completions = out.join("completions");
    for dir in [&man, &completions] {
        // A page of a subcommand since removed must not linger.
        if dir.exists() {
            fs::remove_dir_all(dir)?;
        }
        fs::create_dir_all(dir)?;
    }
    clap_mangen::generate_to(enforcer::cli::command(), &man)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(
            shell,
            &mut enforcer::cli::command(),
            "enforcer",
            &completions,
        )?;
    }
    let mut files = Vec::new();
    for dir in [&man, &completions] {
        for entry in fs::read_dir(dir)? {
            files.push(entry?.path());
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every visible subcommand, as the words after `enforcer` (`["policy", "check"]`).
    fn subcommands(cmd: &clap::Command, above: &[String], all: &mut Vec<Vec<String>>) {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            let path = [above, &[sub.get_name().to_owned()]].concat();
            subcommands(sub, &path, all);
            all.push(path);
        }
    }

    #[test]
    fn every_subcommand_has_a_man_page_and_completions() {
        let out = std::env::temp_dir().join(format!("enforcer-dist-docs-{}", std::process::id()));
        let files = generate(&out).expect("generating");
        let read = |path: PathBuf| {
            fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        };
        let mut all = Vec::new();
        subcommands(&enforcer::cli::command(), &[], &mut all);
        assert!(all.len() > 10, "{all:?}");
        let main_page = read(out.join("man/enforcer.1"));
        let bash = read(out.join("completions/enforcer.bash"));
        let zsh = read(out.join("completions/_enforcer"));
        let fish = read(out.join("completions/enforcer.fish"));
        for path in &all {
            let page = read(out.join(format!("man/enforcer-{}.1", path.join("-"))));
            assert!(page.contains(".TH enforcer-"), "{path:?}: {page}");
            let name = path.last().expect("a subcommand has a name");
            for (what, text) in [("bash", &bash), ("zsh", &zsh), ("fish", &fish)] {
                assert!(text.contains(name.as_str()), "{what} lacks {path:?}");
            }
            if let [top] = path.as_slice() {
                assert!(
                    main_page.contains(&format!("enforcer\\-{top}(1)")),
                    "enforcer.1 does not name {top}:\n{main_page}"
                );
            }
        }
        // The daemon's page names its environment variables and the flags' defaults.
        let daemon = read(out.join("man/enforcer-daemon.1"));
        assert!(daemon.contains("ENFORCER_POLICY"), "{daemon}");
        assert_eq!(files.len(), all.len() + 1 + 3, "{files:?}");
        fs::remove_dir_all(&out).expect("removing the scratch directory");
    }
}
