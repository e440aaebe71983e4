//! The arrows point down: every `crate::` path in `src/` (outside `#[cfg(test)]` modules) names
//! a module in the same layer of [`reflow_agent::LAYERS`] or a lower one, no two modules import
//! each other, and every module of `src/lib.rs` has a layer.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use reflow_agent::LAYERS;

/// The layer of each module.
fn layer_of() -> BTreeMap<&'static str, usize> {
    let mut m = BTreeMap::new();
    for (i, layer) in LAYERS.iter().enumerate() {
        for name in *layer {
            assert!(m.insert(*name, i).is_none(), "{name} is in two layers");
        }
    }
    m
}

/// The top-level module a file under `src/` belongs to (`control/job.rs` -> `control`).
fn top_module(rel: &Path) -> String {
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// The text of a file without its unit-test module (tests may reach anywhere).
fn without_tests(text: &str) -> &str {
    text.find("#[cfg(test)]\nmod tests")
        .map_or(text, |i| &text[..i])
}

/// Module -> the modules it names as `crate::X`.
fn imports(layers: &BTreeMap<&str, usize>) -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let from = top_module(path.strip_prefix(&src).unwrap());
            if !layers.contains_key(from.as_str()) {
                continue; // lib.rs, main.rs
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let text = without_tests(&text);
            for (i, _) in text.match_indices("crate::") {
                let to: String = text[i + "crate::".len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if to != from && layers.contains_key(to.as_str()) {
                    out.entry(from.clone()).or_default().insert(to);
                }
            }
        }
    }
    out
}

#[test]
fn every_module_has_a_layer() {
    let layers = layer_of();
    let lib = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/lib.rs")).unwrap();
    let declared: BTreeSet<&str> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("pub mod "))
        .map(|l| l.trim_end_matches(';'))
        .collect();
    let layered: BTreeSet<&str> = layers.keys().copied().collect();
    assert_eq!(declared, layered, "src/lib.rs modules vs LAYERS");
}

#[test]
fn no_module_imports_one_above_it() {
    let layers = layer_of();
    let mut up = Vec::new();
    for (from, tos) in imports(&layers) {
        for to in tos {
            if layers[to.as_str()] > layers[from.as_str()] {
                up.push(format!(
                    "{from} (layer {}) imports {to} (layer {})",
                    layers[from.as_str()],
                    layers[to.as_str()]
                ));
            }
        }
    }
    assert!(up.is_empty(), "imports pointing up:\n{}", up.join("\n"));
}

#[test]
fn no_two_modules_import_each_other() {
    let layers = layer_of();
    let graph = imports(&layers);
    // Depth-first search for a cycle; reports the first one found.
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == n) {
            let mut cycle = path[i..].to_vec();
            cycle.push(n.to_string());
            return Some(cycle);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_string());
        for next in graph.get(n).into_iter().flatten() {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for n in graph.keys() {
        if let Some(cycle) = visit(n, &graph, &mut Vec::new(), &mut done) {
            panic!("a circle of imports: {}", cycle.join(" -> "));
        }
    }
}
