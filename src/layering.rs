//! The module layering, checked on the source: every `crate::` path (and every `super::` path that
//! climbs to the crate root) in `src/` may only name a module of a lower layer. Without this test
//! a convenient import upwards (`host` reading the registry, the store borrowing a type from
//! `host`, an API shape taken from the store) compiles fine and goes unnoticed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The top-level modules, lowest layer first. A module may name only modules of a lower layer,
/// never one of its own layer or above. A new module goes into the layer it belongs to.
const LAYERS: &[&[&str]] = &[
    &["model"],
    // Running commands and keeping state, neither knowing the other. `host` knows nothing of the
    // registry either: `HostSpec` is its own, the registry produces one. `metrics` counts what it is
    // told (by the store's end hook, the API) and knows nothing else.
    &["host", "store", "metrics"],
    &["config", "git", "docker"],
    // The runtime an app runs on, over the docker wrappers; the pipeline and the self-deploy use it.
    &["target"],
    &["selfupdate"],
    &["pipeline"],
    &["api"],
    // The web page: server-rendered over the API's state (queue, store), wired by `app`.
    &["web"],
    // Told by the store's hooks, reads the registry; only `app` wires it.
    &["notify"],
    &["app"],
    &["cli"],
];

/// Finer rules for single files or folders, on top of the layers: `(path under src/, modules it
/// must not name, why)`.
const FORBIDDEN: &[(&str, &[&str], &str)] = &[
    (
        "api/types.rs",
        &["config", "host", "git", "docker", "store", "selfupdate", "pipeline", "app"],
        "the API's request and response shapes are shared with the client and come from `model` only",
    ),
    ("config/", &["store"], "the registry is read and checked on its own; what becomes of it is recorded above it"),
    ("git.rs", &["store"], "the command wrappers report to their caller, which records what it needs"),
    ("docker/", &["store"], "the command wrappers report to their caller, which records what it needs"),
    (
        "cli/",
        &["store", "pipeline", "git", "docker"],
        "the client commands reach the server's state through the API client, never directly",
    ),
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// Every top-level module a Rust source names, given the module path of its file (`["store",
/// "logs"]` for `src/store/logs.rs`): `crate::x`, `crate::{x, y::z}`, and `super::…::x` where the
/// `super`s reach the crate root. Comment lines are skipped.
fn named_modules(source: &str, file_module: &[String]) -> BTreeSet<String> {
    let code: String = source
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .map(|l| match l.find(" //") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut names = BTreeSet::new();
    let bytes = code.as_bytes();
    let mut i = 0;
    while i < code.len() {
        let rest = &code[i..];
        let at_word_start = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if at_word_start && rest.starts_with("crate::") {
            i += "crate::".len();
            i = root_items(&code, i, &mut names);
            continue;
        }
        if at_word_start && rest.starts_with("super::") {
            let mut supers = 0;
            while code[i..].starts_with("super::") {
                supers += 1;
                i += "super::".len();
            }
            if supers >= file_module.len() {
                i = root_items(&code, i, &mut names);
            }
            continue;
        }
        i += rest.chars().next().map_or(1, char::len_utf8);
    }
    names
}

/// Reads the item(s) named at the crate root from `at` (`x`, or `{x, y::z, …}` over any number of
/// lines) into `names`; returns where reading stopped.
fn root_items(code: &str, at: usize, names: &mut BTreeSet<String>) -> usize {
    let rest = code[at..].trim_start();
    let at = code.len() - rest.len();
    if let Some(group) = rest.strip_prefix('{') {
        let mut depth = 0usize;
        let mut expecting_name = true;
        for (k, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => return at + 1 + k + 1,
                '}' => depth -= 1,
                ',' if depth == 0 => expecting_name = true,
                c if depth == 0 && expecting_name && (c.is_alphabetic() || c == '_') => {
                    let word: String = group[k..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                    names.insert(word);
                    expecting_name = false;
                }
                c if c.is_whitespace() => {}
                _ if depth == 0 => expecting_name = false,
                _ => {}
            }
        }
        code.len()
    } else {
        let word: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        let end = at + word.len();
        if !word.is_empty() {
            names.insert(word);
        }
        end.max(at + 1)
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `["store", "logs"]` for `store/logs.rs`, `["host"]` for `host/mod.rs`, `[]` for `lib.rs`.
fn module_path(relative: &Path) -> Vec<String> {
    let mut parts: Vec<String> = relative.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let file = parts.pop().unwrap_or_default();
    let stem = file.trim_end_matches(".rs");
    if !matches!(stem, "mod" | "lib" | "main") {
        parts.push(stem.to_owned());
    }
    parts
}

#[test]
fn every_module_names_only_modules_of_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let top_modules: BTreeSet<String> = LAYERS.iter().flat_map(|l| l.iter().map(|m| m.to_string())).collect();
    let mut problems = Vec::new();
    let mut checked = 0;
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap();
        let shown = relative.to_string_lossy().into_owned();
        let path = module_path(relative);
        // The crate root and the binaries sit above every module; this file names them all.
        let Some(own) = path.first() else { continue };
        if relative.starts_with("bin") || own == "layering" {
            continue;
        }
        let Some(own_layer) = layer_of(own) else {
            problems.push(format!("{shown}: module `{own}` is in no layer; add it to LAYERS in src/layering.rs"));
            continue;
        };
        let source = std::fs::read_to_string(file).unwrap();
        checked += 1;
        for named in named_modules(&source, &path) {
            if &named == own || !top_modules.contains(&named) {
                continue;
            }
            if layer_of(&named).is_some_and(|l| l >= own_layer) {
                problems.push(format!("{shown}: `{own}` names `{named}`, which is not below it"));
            }
            for (scope, forbidden, why) in FORBIDDEN {
                if shown.starts_with(scope) && forbidden.contains(&named.as_str()) {
                    problems.push(format!("{shown}: names `{named}`: {why}"));
                }
            }
        }
    }
    assert!(checked > 30, "only {checked} source files were checked in {}", src.display());
    assert!(problems.is_empty(), "layering broken:\n{}", problems.join("\n"));
}

#[test]
fn the_scan_sees_every_way_a_path_can_name_a_module() {
    let at = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let source = "use crate::config::{HostSpec, SshHost};\n\
                  use crate::{\n    store::Store,\n    pipeline::{queue, runtime},\n    api,\n};\n\
                  // use crate::app; a comment names nothing\n\
                  let x = crate::docker::Docker::new(); // crate::cli in a comment\n\
                  fn f(_: &dyn crate::host::LogSink) {}\n\
                  use super::super::git::Git;\n\
                  use super::Store;\n\
                  let y = notcrate::selfupdate::X;";
    let names = named_modules(source, &at(&["store", "logs"]));
    let want = ["api", "config", "docker", "git", "host", "pipeline", "store"];
    assert_eq!(names, want.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>());
    assert_eq!(module_path(Path::new("store/logs.rs")), at(&["store", "logs"]));
    assert_eq!(module_path(Path::new("host/mod.rs")), at(&["host"]));
    assert_eq!(module_path(Path::new("git.rs")), at(&["git"]));
}
