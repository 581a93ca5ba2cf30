//! The README and docs/ as a reader meets them: every relative link between them (and into the repository)
//! leads somewhere, anchors included; the README stays a front door; and the outputs the docs show are what
//! the binary prints today.

mod support;

use std::{
    collections::HashSet,
    fs,
    path::{Path, PathBuf},
};

use support::{WAIT, command, output};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// README.md and every docs/*.md.
fn pages() -> Vec<PathBuf> {
    let mut pages = vec![Path::new(ROOT).join("README.md")];
    for entry in fs::read_dir(Path::new(ROOT).join("docs")).expect("docs/") {
        let path = entry.expect("docs/ entry").path();
        if path.extension().is_some_and(|e| e == "md") {
            pages.push(path);
        }
    }
    pages.sort();
    assert!(pages.len() >= 8, "README.md and the seven pages of docs/: {pages:?}");
    pages
}

/// The page's lines outside fenced code blocks.
fn prose(text: &str) -> Vec<&str> {
    let mut fenced = false;
    text.lines()
        .filter(|line| {
            if line.trim_start().starts_with("```") {
                fenced = !fenced;
                return false;
            }
            !fenced
        })
        .collect()
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens; repeats get `-1`, ...
fn anchors(text: &str) -> HashSet<String> {
    let mut seen = HashSet::new();
    for line in prose(text) {
        let Some(heading) = line.strip_prefix('#').map(|h| h.trim_start_matches('#')) else { continue };
        let slug: String = heading
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let mut unique = slug.clone();
        let mut n = 0;
        while !seen.insert(unique.clone()) {
            n += 1;
            unique = format!("{slug}-{n}");
        }
    }
    seen
}

/// The targets of the inline links `[text](target)` in the page's prose.
fn links(text: &str) -> Vec<String> {
    let mut targets = Vec::new();
    for line in prose(text) {
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            let tail = &rest[at + 2..];
            let end = tail.find(')').unwrap_or(tail.len());
            targets.push(tail[..end].to_owned());
            rest = &tail[end..];
        }
    }
    targets
}

#[test]
fn every_relative_link_in_the_readme_and_docs_resolves() {
    let mut checked = 0;
    for page in pages() {
        let text = fs::read_to_string(&page).unwrap();
        for target in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (path, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let file = if path.is_empty() { page.clone() } else { page.parent().unwrap().join(path) };
            let name = page.strip_prefix(ROOT).unwrap().display();
            assert!(
                file.exists(),
                "{name}: link ({target}) leads to {}, which does not exist",
                file.display()
            );
            if !anchor.is_empty() {
                let there = fs::read_to_string(&file).unwrap();
                assert!(
                    anchors(&there).contains(anchor),
                    "{name}: link ({target}): no heading #{anchor} there"
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 50, "only {checked} links found");
}

#[test]
fn the_readme_is_a_front_door() {
    let readme = fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    assert!(
        readme.lines().count() <= 250,
        "README.md has {} lines; move detail to docs/",
        readme.lines().count()
    );
    let first_section = readme.split("\n## ").next().unwrap();
    for command in ["cargo run --release -- serve", "cargo test"] {
        assert!(first_section.contains(command), "README's first section lacks `{command}`");
    }
    for page in pages().iter().skip(1) {
        let name = page.strip_prefix(ROOT).unwrap().to_str().unwrap().to_owned();
        assert!(readme.contains(&format!("]({name})")), "README.md does not link to {name}");
    }
}

/// The lines of the ```text block in `page` that starts with `$ COMMAND`, up to the next `$ ` line.
fn shown_output(page: &str, command: &str) -> Vec<String> {
    let text = fs::read_to_string(Path::new(ROOT).join(page)).unwrap();
    let start = format!("$ {command}\n");
    let at = text.find(&start).unwrap_or_else(|| panic!("{page} does not show `$ {command}`"));
    text[at + start.len()..]
        .lines()
        .take_while(|l| !l.starts_with("$ ") && !l.starts_with("```"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_check_output_in_the_docs_is_what_check_prints() {
    let args = "serve --check --config config/poolserver.toml --workers 4";
    let shown = shown_output("docs/configuration.md", &format!("poolserver {args}"));
    let mut cmd = command(&args.split(' ').collect::<Vec<_>>(), &[]);
    let out = output(cmd.current_dir(ROOT), WAIT);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed: Vec<String> = String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).collect();
    assert_eq!(shown, printed, "docs/configuration.md shows another `poolserver {args}`");
}

#[test]
fn the_socket_units_backlog_in_the_docs_is_the_units_and_the_default() {
    let unit = fs::read_to_string(Path::new(ROOT).join("config/poolserver.socket")).unwrap();
    let backlog =
        unit.lines().find_map(|l| l.strip_prefix("Backlog=")).expect("Backlog= in poolserver.socket");
    assert_eq!(
        backlog,
        poolserver::Config::default().backlog.to_string(),
        "the unit's backlog is the default"
    );
    let mut mentioned = 0;
    for page in pages() {
        let text = fs::read_to_string(&page).unwrap();
        for (at, _) in text.match_indices("Backlog=") {
            let value: String =
                text[at + "Backlog=".len()..].chars().take_while(char::is_ascii_digit).collect();
            assert_eq!(value, backlog, "{} says Backlog={value}; the unit has {backlog}", page.display());
            mentioned += 1;
        }
    }
    assert!(mentioned >= 1, "no page mentions the unit's Backlog=");
}
