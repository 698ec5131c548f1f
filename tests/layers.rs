//! The layering ARCHITECTURE.md promises, checked on the sources: each
//! layer uses only the layers below it, and no two modules of one layer
//! import each other (directly or through a longer loop).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Layers from the bottom up, and those each may use.
const LAYERS: &[(&str, &[&str])] = &[
    ("runtime", &[]),
    ("protocol", &[]),
    ("storage", &["runtime", "protocol"]),
    ("shard", &["runtime", "protocol", "storage"]),
    ("server", &["runtime", "protocol", "storage", "shard", "config"]),
    ("client", &["runtime", "protocol"]),
];

/// The code of a module without its tests (they may use anything) and
/// without comments (a doc link is not an import).
fn source_without_tests(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let code = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => &text,
    };
    code.lines().filter(|line| !line.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
}

fn module_files(dir: &Path) -> Vec<(String, String)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_str().unwrap().to_string();
        if path.extension().is_some_and(|ext| ext == "rs") && name != "mod" {
            files.push((name, source_without_tests(&path)));
        }
    }
    files
}

/// Whether `source` names module `module` of its own layer: `super::module`
/// (alone or inside a `super::{...}` list) or `crate::<layer>::module`.
fn names_sibling(source: &str, layer: &str, module: &str) -> bool {
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    let direct = [format!("super::{module}"), format!("crate::{layer}::{module}")];
    let found_direct = direct.iter().any(|needle| {
        source.match_indices(needle.as_str()).any(|(at, _)| {
            let after = source[at + needle.len()..].chars().next();
            !after.is_some_and(is_ident)
        })
    });
    let in_list = source.match_indices("super::{").any(|(at, _)| {
        let list = &source[at + 8..];
        let list = &list[..list.find('}').unwrap_or(list.len())];
        list.split(|c: char| !is_ident(c)).any(|word| word == module)
    });
    found_direct || in_list
}

#[test]
fn each_layer_uses_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let all: Vec<&str> = LAYERS.iter().map(|(layer, _)| *layer).chain(["config"]).collect();
    let mut broken = Vec::new();
    for (layer, allowed) in LAYERS {
        for (module, source) in module_files(&src.join(layer)) {
            for other in all.iter().filter(|other| *other != layer && !allowed.contains(other)) {
                if source.contains(&format!("crate::{other}::")) || source.contains(&format!("crate::{other}::{{")) {
                    broken.push(format!("{layer}/{module}.rs uses {other}"));
                }
            }
        }
    }
    assert!(broken.is_empty(), "layering broken: {broken:?}");
}

#[test]
fn no_modules_of_one_layer_import_each_other_in_a_loop() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for (layer, _) in LAYERS {
        let files = module_files(&src.join(layer));
        let names: BTreeSet<String> = files.iter().map(|(name, _)| name.clone()).collect();
        let edges: BTreeMap<String, BTreeSet<String>> = files
            .iter()
            .map(|(module, source)| {
                let uses = names.iter().filter(|other| *other != module && names_sibling(source, layer, other));
                (module.clone(), uses.cloned().collect())
            })
            .collect();
        // A module reaches itself only through a loop.
        for start in &names {
            let mut seen = BTreeSet::new();
            let mut stack: Vec<&String> = edges[start].iter().collect();
            while let Some(next) = stack.pop() {
                assert_ne!(next, start, "{layer}: {start} reaches itself through {seen:?}");
                if seen.insert(next.clone()) {
                    stack.extend(edges[next].iter());
                }
            }
        }
    }
}
