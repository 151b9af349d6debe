//! The core crate's layering: every module imports only from the folders its row of the
//! map in `lib.rs`'s crate docs allows, and no two files import each other, directly or
//! through others.
//!
//! The scan reads every `crate::`, `$crate::` and `super::` path in the code of
//! `openlayer-trace/src` (comments are skipped), resolves it to the module it names, and
//! checks it against the map. A path is resolved to the file of its longest prefix that is
//! a module; so code imports an item from the file that defines it, not through a
//! re-export of its folder (which would hide a cycle).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../openlayer-trace/src")
}

/// Every `.rs` file under `dir`, with its module path (`a/b/mod.rs` and `a/b.rs` are
/// `a::b`; `lib.rs` is the root).
fn files(dir: &Path, out: &mut Vec<(Vec<String>, PathBuf)>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path.strip_prefix(src_dir()).unwrap();
            let mut module: Vec<String> = rel
                .iter()
                .map(|c| c.to_string_lossy().into_owned())
                .collect();
            let last = module.pop().unwrap();
            match last.as_str() {
                "mod.rs" | "lib.rs" => {}
                other => module.push(other.trim_end_matches(".rs").to_string()),
            }
            out.push((module, path));
        }
    }
}

/// The allowed matrix: the rows of the table in `lib.rs`'s crate docs,
/// "| `module/` | `a/`, `b/` |" (a dash for none).
fn matrix(lib: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut rows = BTreeMap::new();
    for line in lib.lines() {
        let Some(row) = line.strip_prefix("//! | `") else {
            continue;
        };
        let mut cells = row.split('|');
        let module = cells.next().unwrap().trim().trim_matches('`');
        let module = module.trim_end_matches('/').trim_end_matches(".rs");
        let allowed = cells.next().unwrap_or("");
        let allowed: BTreeSet<String> = allowed
            .split(',')
            .map(|a| a.trim().trim_matches('`'))
            .map(|a| a.trim_end_matches('/').trim_end_matches(".rs"))
            .filter(|a| !a.is_empty() && *a != "-")
            .map(str::to_string)
            .collect();
        rows.insert(module.to_string(), allowed);
    }
    rows
}

/// One path found in the code: the line it is on, and its segments made absolute.
struct Use {
    line: usize,
    path: Vec<String>,
    macro_call: bool,
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The code of a line without its comment (a `//` outside a string literal).
fn code_of(line: &str) -> &str {
    let mut in_str = false;
    let mut prev = ' ';
    for (i, c) in line.char_indices() {
        if c == '"' && prev != '\\' {
            in_str = !in_str;
        }
        if !in_str && c == '/' && prev == '/' {
            return &line[..i - 1];
        }
        prev = c;
    }
    line
}

/// The `crate::`, `$crate::` and `super::` paths of a file whose module path is `module`.
fn uses(text: &str, module: &[String]) -> Vec<Use> {
    let mut found = Vec::new();
    // Inline modules opened at the start of a line (`mod tests {`), which `super::`
    // inside them starts from.
    let mut inline: Option<String> = None;
    for (n, line) in text.lines().enumerate() {
        let item = line
            .strip_prefix("pub(crate) ")
            .or_else(|| line.strip_prefix("pub "))
            .unwrap_or(line);
        if let Some(name) = item
            .strip_prefix("mod ")
            .and_then(|r| r.strip_suffix(" {"))
            .filter(|name| name.chars().all(is_ident))
        {
            inline = Some(name.to_string());
            continue;
        }
        if line == "}" {
            inline = None;
        }
        let code = code_of(line);
        let mut here: Vec<String> = module.to_vec();
        if let Some(name) = &inline {
            here.push(name.clone());
        }
        let bytes: Vec<char> = code.chars().collect();
        let mut i = 0;
        while i < bytes.len() {
            let rest: String = bytes[i..].iter().collect();
            let starts_word = i == 0 || !is_ident(bytes[i - 1]);
            let (base, skip) = if starts_word && rest.starts_with("crate::") {
                (Some(Vec::new()), "crate::".len())
            } else if starts_word && rest.starts_with("super::") {
                let mut base = here.clone();
                let mut skip = 0;
                while rest[skip..].starts_with("super::") {
                    base.pop();
                    skip += "super::".len();
                }
                (Some(base), skip)
            } else {
                (None, 1)
            };
            let Some(mut path) = base else {
                i += 1;
                continue;
            };
            let mut j = i + skip;
            let mut macro_call = false;
            loop {
                let start = j;
                while j < bytes.len() && is_ident(bytes[j]) {
                    j += 1;
                }
                if j == start {
                    break;
                }
                path.push(bytes[start..j].iter().collect());
                if j < bytes.len() && bytes[j] == '!' {
                    macro_call = true;
                }
                if bytes[j..].starts_with(&[':', ':']) {
                    j += 2;
                } else {
                    break;
                }
            }
            found.push(Use {
                line: n + 1,
                path,
                macro_call,
            });
            i = j.max(i + 1);
        }
    }
    found
}

#[test]
fn the_core_crate_is_layered_as_its_map_says() {
    let src = src_dir();
    let lib = fs::read_to_string(src.join("lib.rs")).unwrap();
    let matrix = matrix(&lib);
    let mut all = Vec::new();
    files(&src, &mut all);
    let modules: BTreeMap<Vec<String>, PathBuf> = all.iter().cloned().collect();
    let top: BTreeSet<String> = all.iter().filter_map(|(m, _)| m.first().cloned()).collect();
    for t in &top {
        assert!(
            matrix.contains_key(t),
            "`{t}` is not in the map in lib.rs's crate docs"
        );
    }
    for (m, allowed) in &matrix {
        assert!(
            top.contains(m),
            "the map names `{m}`, which is not a module"
        );
        for a in allowed {
            assert!(
                top.contains(a),
                "the map lets `{m}` import `{a}`, which is not a module"
            );
        }
    }

    // `#[macro_export]` macros live at the crate root wherever they are defined.
    let mut exported_macros = BTreeSet::new();
    for (_, path) in &all {
        let text = fs::read_to_string(path).unwrap();
        let mut lines = text.lines();
        while let Some(line) = lines.next() {
            if line.trim() == "#[macro_export]"
                && let Some(name) = lines
                    .next()
                    .and_then(|l| l.trim().strip_prefix("macro_rules! "))
            {
                exported_macros.insert(name.trim_end_matches(" {").to_string());
            }
        }
    }
    // Modules the crate root re-exports under another name (`pub use a::b as c;`): the
    // macros' expansions reach the macro support as `$crate::__private`. A name may have
    // one target per build (`api::macro_support` with `enable`, `noop::macro_support`
    // without): a module's macros name the target in its own folder.
    let mut aliases: BTreeMap<String, Vec<Vec<String>>> = BTreeMap::new();
    for (path, name) in lib
        .lines()
        .filter_map(|l| l.strip_prefix("pub use ")?.strip_suffix(';'))
        .filter_map(|l| l.split_once(" as "))
    {
        let path: Vec<String> = path.split("::").map(str::to_string).collect();
        if modules.contains_key(&path) {
            aliases.entry(name.to_string()).or_default().push(path);
        }
    }
    let mut problems = Vec::new();
    let mut edges: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
    for (module, path) in &all {
        if module.is_empty() {
            continue; // lib.rs: the map itself, and the re-exports
        }
        let rel = path.strip_prefix(&src).unwrap().display().to_string();
        let text = fs::read_to_string(path).unwrap();
        let from = &module[0];
        for mut u in uses(&text, module) {
            if let Some(targets) = u.path.first().and_then(|f| aliases.get(f)) {
                let target = targets
                    .iter()
                    .find(|t| &t[0] == from)
                    .unwrap_or(&targets[0]);
                u.path.splice(..1, target.iter().cloned());
            }
            let Some(first) = u.path.first() else {
                continue;
            };
            if !top.contains(first) {
                if !u.macro_call && !exported_macros.contains(first) {
                    problems.push(format!(
                        "{rel}:{}: `crate::{}` names an item through the crate root; import it from its module",
                        u.line,
                        u.path.join("::")
                    ));
                }
                continue;
            }
            if first != from && !matrix[from].contains(first) {
                problems.push(format!(
                    "{rel}:{}: `{from}` may not import from `{first}` (`{}`); see the map in lib.rs",
                    u.line,
                    u.path.join("::")
                ));
            }
            // The file of the longest prefix that is a module.
            let target = (1..=u.path.len())
                .rev()
                .find_map(|n| modules.get(&u.path[..n]))
                .unwrap();
            if target != path {
                edges
                    .entry(path.clone())
                    .or_default()
                    .insert(target.clone());
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // No cycles between files: a depth-first search that reports the first cycle found.
    fn visit(
        node: &PathBuf,
        edges: &BTreeMap<PathBuf, BTreeSet<PathBuf>>,
        state: &mut BTreeMap<PathBuf, u8>,
        stack: &mut Vec<PathBuf>,
    ) -> Option<Vec<PathBuf>> {
        state.insert(node.clone(), 1);
        stack.push(node.clone());
        for next in edges.get(node).into_iter().flatten() {
            match state.get(next).copied().unwrap_or(0) {
                1 => {
                    let at = stack.iter().position(|p| p == next).unwrap();
                    let mut cycle = stack[at..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(next, edges, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(node.clone(), 2);
        None
    }
    // Every cycle is reported: each one found is cut at its last edge, and the search
    // runs again.
    let mut cycles = Vec::new();
    'search: while cycles.len() < 100 {
        let mut state = BTreeMap::new();
        let nodes: Vec<PathBuf> = edges.keys().cloned().collect();
        for node in &nodes {
            if state.get(node).copied().unwrap_or(0) == 0 {
                let mut stack = Vec::new();
                if let Some(cycle) = visit(node, &edges, &mut state, &mut stack) {
                    let n = cycle.len();
                    edges.get_mut(&cycle[n - 2]).unwrap().remove(&cycle[n - 1]);
                    let names: Vec<String> = cycle
                        .iter()
                        .map(|p| p.strip_prefix(&src).unwrap().display().to_string())
                        .collect();
                    cycles.push(names.join(" -> "));
                    continue 'search;
                }
            }
        }
        break;
    }
    assert!(
        cycles.is_empty(),
        "files import each other:\n{}",
        cycles.join("\n")
    );
}

#[test]
fn the_scan_reads_paths_as_the_compiler_does() {
    let module = vec!["export".to_string(), "spool".to_string()];
    let text = "use crate::record::sink::TraceSink; // crate::runtime in a comment\n\
                // crate::api is a comment\n\
                let x = super::budget::Budget::new(1);\n\
                let s = \"// not a comment\"; let t = $crate::util::diag::warn!();\n\
                mod tests {\n    use super::*;\n}\n";
    let found: Vec<(usize, String)> = uses(text, &module)
        .into_iter()
        .map(|u| (u.line, u.path.join("::")))
        .collect();
    assert_eq!(
        found,
        vec![
            (1, "record::sink::TraceSink".to_string()),
            (3, "export::budget::Budget::new".to_string()),
            (4, "util::diag::warn".to_string()),
            (6, "export::spool".to_string()),
        ]
    );
    let map = matrix("//! | `util/` | - |\n//! | `record/` | `util/` |\n//! | `error.rs` | - |\n");
    assert_eq!(map["util"], BTreeSet::new());
    assert_eq!(map["record"], BTreeSet::from(["util".to_string()]));
    assert!(map.contains_key("error"));
}
