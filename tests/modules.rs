//! The library's modules depend on each other one way: no module reaches, through the modules it uses, back
//! to itself. A cycle means two modules that can only be understood (and tested) together.
//!
//! Read from the source: each `src/*.rs` file is a module (`no_tls.rs` is the `tls` module of a build
//! without the feature), and its dependencies are the modules its code names as `crate::module`, in `use`
//! lists or paths, outside comments and its `#[cfg(test)]` module.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
};

type Graph = BTreeMap<String, BTreeSet<String>>;

#[test]
fn the_librarys_modules_import_each_other_without_a_cycle() {
    let graph = modules(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    // The reading sees what is there: a path, and items of a `use` group.
    assert!(graph["pool"].contains("room") && graph["room"].contains("books"), "{graph:#?}");
    assert!(graph["service"].contains("tls") && graph["conn"].contains("framing"), "{graph:#?}");
    if let Some(cycle) = find_cycle(&graph) {
        panic!("module imports form a cycle: {}\n{graph:#?}", cycle.join(" → "));
    }
}

#[test]
fn a_cycle_is_found() {
    let graph: Graph = [("a", "b"), ("b", "c"), ("c", "a"), ("d", "a")].into_iter().fold(
        Graph::new(),
        |mut graph, (from, to)| {
            graph.entry(from.to_owned()).or_default().insert(to.to_owned());
            graph.entry(to.to_owned()).or_default();
            graph
        },
    );
    assert_eq!(find_cycle(&graph).unwrap(), ["a", "b", "c", "a"]);
    let mut one_way = graph;
    one_way.get_mut("c").unwrap().clear();
    assert_eq!(find_cycle(&one_way), None);
}

/// Each module of `src/` with the modules it uses.
fn modules(src: &Path) -> Graph {
    let files: Vec<(String, String)> = fs::read_dir(src)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "rs"))
        .map(|path| {
            let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
            (stem, fs::read_to_string(&path).unwrap())
        })
        .filter(|(name, _)| name != "lib")
        .collect();
    let module = |file: &str| if file == "no_tls" { "tls".to_owned() } else { file.to_owned() };
    let names: BTreeSet<String> = files.iter().map(|(file, _)| module(file)).collect();
    let mut graph = Graph::new();
    for (file, text) in &files {
        let uses = graph.entry(module(file)).or_default();
        let code = without_tests(&without_comments(text));
        uses.extend(used_modules(&code).into_iter().filter(|name| names.contains(name)));
        uses.remove(&module(file));
    }
    graph
}

/// The text without `//` comments (doc comments name other modules in links, which is no dependency).
fn without_comments(text: &str) -> String {
    text.lines()
        .map(|line| line.split_once("//").map_or(line, |(code, _)| code))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The text without its `#[cfg(test)] mod ... { ... }` blocks.
fn without_tests(text: &str) -> String {
    let mut rest = text;
    let mut kept = String::new();
    while let Some(at) = rest.find("#[cfg(test)]") {
        kept.push_str(&rest[..at]);
        let after = &rest[at..];
        let is_module = after["#[cfg(test)]".len()..].trim_start().starts_with("mod ");
        match after.find('{').filter(|_| is_module) {
            Some(open) => {
                let close = matching_brace(after, open);
                rest = &after[close + 1..];
            }
            None => {
                kept.push_str("#[cfg(test)]");
                rest = &after["#[cfg(test)]".len()..];
            }
        }
    }
    kept.push_str(rest);
    kept
}

/// Where the brace that closes the one at `open` is.
fn matching_brace(text: &str, open: usize) -> usize {
    let mut depth = 0;
    for (at, c) in text.char_indices().skip_while(|&(at, _)| at < open) {
        match c {
            '{' => depth += 1,
            '}' if depth == 1 => return at,
            '}' => depth -= 1,
            _ => {}
        }
    }
    text.len() - 1
}

/// The first segment of every `crate::` path: `crate::a::B`, and each item of `crate::{a::B, c, d::{E, F}}`.
fn used_modules(code: &str) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if rest.starts_with('{') {
            let group = &rest[1..matching_brace(rest, 0)];
            used.extend(top_level_items(group).map(first_segment));
        } else {
            used.insert(first_segment(rest));
        }
    }
    used
}

/// The comma-separated items of a `use` group, not looking inside nested groups.
fn top_level_items(group: &str) -> impl Iterator<Item = &str> {
    let mut depth = 0;
    let mut start = 0;
    let mut items = Vec::new();
    for (at, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&group[start..at]);
                start = at + 1;
            }
            _ => {}
        }
    }
    items.push(&group[start..]);
    items.into_iter()
}

fn first_segment(path: &str) -> String {
    path.trim_start().chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect()
}

/// A path of modules that comes back to where it started, if there is one.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit<'a>(
        graph: &'a Graph,
        node: &'a str,
        marks: &mut BTreeMap<&'a str, Mark>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        marks.insert(node, Mark::Open);
        path.push(node);
        for next in graph.get(node).into_iter().flatten() {
            match marks.get(next.as_str()) {
                Some(Mark::Open) => {
                    let from = path.iter().position(|n| n == next).unwrap();
                    return Some(
                        path[from..].iter().chain([&next.as_str()]).map(|n| n.to_string()).collect(),
                    );
                }
                Some(Mark::Done) => {}
                None => {
                    if let Some(cycle) = visit(graph, next, marks, path) {
                        return Some(cycle);
                    }
                }
            }
        }
        path.pop();
        marks.insert(node, Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    graph.keys().find_map(|node| {
        if marks.contains_key(node.as_str()) {
            return None;
        }
        visit(graph, node, &mut marks, &mut Vec::new())
    })
}
