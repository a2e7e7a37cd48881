//! The module tree is the architecture: the library's imports only point down its layers, and no modules import each other in a cycle.
//!
//! Read from the sources: every `crate::` path (and `super::` path to a
//! sibling) outside comments and test modules is an edge between the
//! modules of the two files. A module's own children (and a child's use of
//! its parent) do not count: a parent and its children are one room.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The library's top-level modules, lowest layer first: each may import
/// only from those before it.
const LAYERS: &[&str] = &[
    "task",
    "config",
    "backoff",
    "etcd",
    "telemetry",
    "fence",
    "coordinator",
    "status",
    "runtime",
    "role",
    "node",
    "service",
    "testing",
];

/// A module of the crate, as path segments below `crate`.
type Module = Vec<String>;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every library source file and the module it holds (`lib.rs`, the crate
/// root, and `main.rs`, the binary, are not modules of the tree).
fn library_files(dir: &Path, prefix: &[String], files: &mut Vec<(Module, PathBuf)>) {
    for entry in std::fs::read_dir(dir).expect("src/ is readable") {
        let path = entry.expect("a directory entry").path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let mut module = prefix.to_vec();
        module.push(name.clone());
        if path.is_dir() {
            library_files(&path, &module, files);
        } else if path.extension().is_some_and(|e| e == "rs")
            && !(prefix.is_empty() && (name == "lib" || name == "main"))
        {
            files.push((module, path));
        }
    }
}

/// The code of a file without its comments and its `#[cfg(test)]` module.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("a source file is readable");
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => &text,
    };
    text.lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The module paths a piece of code names after `crate::`, `use crate::{a::b, c}` included.
fn crate_paths(code: &str) -> Vec<Module> {
    let mut paths = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                paths.push(segments(item.trim()));
            }
        } else {
            paths.push(segments(rest));
        }
    }
    paths
}

/// The leading `a::b::c` segments of `text`.
fn segments(text: &str) -> Module {
    let mut module = Vec::new();
    let mut rest = text;
    loop {
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if end == 0 {
            break;
        }
        module.push(rest[..end].to_owned());
        match rest[end..].strip_prefix("::") {
            Some(next) => rest = next,
            None => break,
        }
    }
    module
}

/// The longest prefix of `path` that is a module with a file.
fn owning_module(path: &Module, modules: &BTreeSet<Module>) -> Option<Module> {
    (1..=path.len())
        .rev()
        .map(|len| path[..len].to_vec())
        .find(|candidate| modules.contains(candidate))
}

/// Modules are compared as rooms: a top-level module, or one of its children
/// with everything below it.
fn room(module: &Module) -> Module {
    module[..module.len().min(2)].to_vec()
}

fn is_within(inner: &Module, outer: &Module) -> bool {
    inner.len() >= outer.len() && inner[..outer.len()] == outer[..]
}

/// Every import edge between rooms.
fn edges() -> BTreeMap<Module, BTreeSet<Module>> {
    let mut files = Vec::new();
    library_files(&src(), &[], &mut files);
    let modules: BTreeSet<Module> = files.iter().map(|(m, _)| m.clone()).collect();
    let mut edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (module, path) in &files {
        let code = code(path);
        let mut targets: Vec<Module> = crate_paths(&code)
            .iter()
            .filter_map(|path| owning_module(path, &modules))
            .collect();
        // `super::sibling`: a module of the same parent.
        let parent = &module[..module.len() - 1];
        for (at, _) in code.match_indices("super::") {
            let mut sibling = parent.to_vec();
            sibling.extend(segments(&code[at + "super::".len()..]).into_iter().take(1));
            if modules.contains(&sibling) {
                targets.push(sibling);
            }
        }
        let from = room(module);
        for target in targets {
            let to = room(&target);
            // A room and its parent room are one: parent and children.
            if is_within(&from, &to) || is_within(&to, &from) {
                continue;
            }
            edges.entry(from.clone()).or_default().insert(to);
        }
    }
    edges
}

#[test]
fn imports_only_point_down_the_layers() {
    let rank = |module: &Module| {
        LAYERS
            .iter()
            .position(|layer| *layer == module[0])
            .unwrap_or_else(|| panic!("module {} is in no layer of LAYERS", module.join("::")))
    };
    let mut upward = Vec::new();
    for (from, targets) in edges() {
        for to in targets {
            if from[0] != to[0] && rank(&to) > rank(&from) {
                upward.push(format!("{} -> {}", from.join("::"), to.join("::")));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports pointing up the layers: {upward:#?}"
    );
}

#[test]
fn no_modules_import_each_other_in_a_cycle() {
    let edges = edges();
    // Depth-first search: a back edge to a module on the stack is a cycle.
    fn visit(
        module: &Module,
        edges: &BTreeMap<Module, BTreeSet<Module>>,
        stack: &mut Vec<Module>,
        done: &mut BTreeSet<Module>,
        cycles: &mut Vec<String>,
    ) {
        if done.contains(module) {
            return;
        }
        if let Some(at) = stack.iter().position(|m| m == module) {
            let mut cycle: Vec<String> = stack[at..].iter().map(|m| m.join("::")).collect();
            cycle.push(module.join("::"));
            cycles.push(cycle.join(" -> "));
            return;
        }
        stack.push(module.clone());
        for next in edges.get(module).into_iter().flatten() {
            visit(next, edges, stack, done, cycles);
        }
        stack.pop();
        done.insert(module.clone());
    }
    let mut cycles = Vec::new();
    let mut done = BTreeSet::new();
    for module in edges.keys() {
        visit(module, &edges, &mut Vec::new(), &mut done, &mut cycles);
    }
    assert!(cycles.is_empty(), "import cycles: {cycles:#?}");
}

#[test]
fn the_library_names_items_by_their_module_not_the_crate_roots_re_exports() {
    // A path through the root's re-exports would hide its edge from the checks above.
    let mut files = Vec::new();
    library_files(&src(), &[], &mut files);
    let mut through_root = Vec::new();
    for (module, path) in &files {
        for named in crate_paths(&code(path)) {
            if named
                .first()
                .is_some_and(|first| first.starts_with(char::is_uppercase))
            {
                through_root.push(format!(
                    "{}: crate::{}",
                    module.join("::"),
                    named.join("::")
                ));
            }
        }
    }
    assert!(through_root.is_empty(), "{through_root:#?}");
}

#[test]
fn the_reader_finds_the_imports_it_checks() {
    let edges = edges();
    let election = vec!["runtime".to_owned(), "election".to_owned()];
    let from_election = &edges[&election];
    assert!(from_election.contains(&vec!["runtime".to_owned(), "coordinator".to_owned()]));
    assert!(from_election.contains(&vec!["etcd".to_owned(), "recipe".to_owned()]));
    assert!(from_election.contains(&vec!["status".to_owned()]));
    assert_eq!(
        crate_paths("use crate::{a::b, c};\nlet x = crate::d::E;"),
        [vec!["a", "b"], vec!["c"], vec!["d", "E"]]
    );
}
