//! `poolserver generate man DIR | completions SHELL` (hidden): the man pages and the shell completions, made
//! from the same clap definitions as the command line, so they can never disagree with `--help`. A packager
//! runs it (`scripts/package.sh`); a user never needs to.

use std::{
    fs,
    io::{self, Write},
    path::Path,
};

use clap::CommandFactory;

use crate::cli::{Cli, Generated};

/// Writes the man pages into their directory, or a completion script to stdout.
pub fn run(what: &Generated) -> io::Result<()> {
    let mut command = Cli::command();
    match what {
        Generated::Man { dir } => man_pages(&command, dir),
        Generated::Completions { shell } => {
            let mut out = io::stdout().lock();
            clap_complete::generate(*shell, &mut command, "poolserver", &mut out);
            out.flush()
        }
    }
}

/// `poolserver.1` (the command and its subcommands) and `poolserver-NAME.1` for each visible subcommand
/// (its options), as git and cargo ship theirs: `man poolserver-serve`.
fn man_pages(command: &clap::Command, dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    // Built, clap names each subcommand `poolserver-NAME` and its usage `poolserver NAME`. Without clap's
    // `help` subcommand: it has no page of its own, so `poolserver(1)` must not point to one.
    let mut command = command.clone().disable_help_subcommand(true);
    command.build();
    let mut pages = vec![("poolserver.1".to_owned(), command.clone())];
    for sub in command.get_subcommands().filter(|sub| !sub.is_hide_set()) {
        let name = sub.get_display_name().unwrap_or(sub.get_name());
        pages.push((format!("{name}.1"), sub.clone()));
    }
    for (file, page) in pages {
        let mut roff = Vec::new();
        clap_mangen::Man::new(page).render(&mut roff)?;
        fs::write(dir.join(file), roff)?;
    }
    Ok(())
}
