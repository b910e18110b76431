//! The layers of the crate, checked: every top-level module sits in one layer, and imports
//! (`crate::` paths in non-test code) run from a layer to the same one or one below, never up,
//! and never round a cycle. A new module must be placed here; an import that would make the
//! crate's parts depend on each other both ways fails the build's tests, naming the files.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// From the bottom up. The names match `lib.rs`'s map.
const LAYERS: &[&[&str]] = &[
    // Value types, the few libc calls, held bodies, the access-log writer.
    &["values", "sys", "spool", "access_log"],
    // HTTP/1.x framing both sides share; the config model.
    &["http1", "config"],
    // The request path's error; pools and workers; TLS set-up; the connection cap; heap trim;
    // what a listener answers itself; client certificates; certificates weir obtained.
    &[
        "error",
        "pool",
        "tls",
        "limit",
        "heap",
        "edge",
        "client_cert",
        "certs",
    ],
    // Metrics and alert counters; weir's client for workers.
    &["telemetry", "upstream"],
    // Probes; the route table.
    &["health", "routing"],
    // How workers join and leave pools; the data plane's shared state.
    &["membership", "state"],
    // The fleet, per-pool history, where workers come from, the request path.
    &["fleet", "history", "provider", "proxy", "acme"],
    // The autoscaler; the serving threads.
    &["scale", "server"],
    // Alert rules and their webhook; the demo worker.
    &["alerts", "demo"],
    // The control plane.
    &["control"],
    // The admin API.
    &["admin"],
    // Start-up and shutdown.
    &["app"],
];

/// Test-only modules: they may import anything.
const TEST_ONLY: &[&str] = &["fuzz", "layers"];

#[test]
fn imports_run_down_the_layers_without_a_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = import_graph(&src);
    let layer_of: BTreeMap<&str, usize> = LAYERS
        .iter()
        .enumerate()
        .flat_map(|(i, names)| names.iter().map(move |n| (*n, i)))
        .collect();

    let unplaced: Vec<&String> = graph
        .keys()
        .filter(|m| !layer_of.contains_key(m.as_str()) && !TEST_ONLY.contains(&m.as_str()))
        .collect();
    assert!(
        unplaced.is_empty(),
        "top-level modules missing from LAYERS in src/layers.rs: {unplaced:?}"
    );

    let mut upward = Vec::new();
    for (from, imports) in &graph {
        let Some(&from_layer) = layer_of.get(from.as_str()) else {
            continue;
        };
        for (to, files) in imports {
            let Some(&to_layer) = layer_of.get(to.as_str()) else {
                continue;
            };
            if to_layer > from_layer {
                upward.push(format!(
                    "{from} (layer {from_layer}) imports {to} (layer {to_layer}) in {files:?}"
                ));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports that run up the layers:\n{}",
        upward.join("\n")
    );

    let cycles = cycles(&graph);
    assert!(
        cycles.is_empty(),
        "import cycles among top-level modules: {cycles:?}"
    );
}

#[test]
fn the_checker_sees_imports_and_cycles() {
    let source = r#"
        //! crate::ignored in a doc comment
        use crate::pool::{Pool, WorkerState};
        use crate::{config::Config, values};
        fn f() -> &'static str { let _ = crate::telemetry::x(); "crate::not_code" }
        #[cfg(test)]
        mod tests { use crate::app::App; }
        #[cfg(test)]
        mod more;
    "#;
    let (imports, test_modules) = imports_of(source);
    let imports: Vec<&str> = imports.iter().map(String::as_str).collect();
    assert_eq!(imports, ["pool", "config", "values", "telemetry"]);
    assert_eq!(test_modules, ["more"]);

    let mut graph = Graph::new();
    for (from, to) in [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")] {
        graph
            .entry(from.to_string())
            .or_default()
            .entry(to.to_string())
            .or_default()
            .insert("x.rs".into());
    }
    assert_eq!(
        cycles(&graph),
        vec![vec!["a".to_string(), "b".into(), "c".into()]]
    );
}

/// Top-level module → the top-level modules it imports → the files that do.
type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

fn import_graph(src: &Path) -> Graph {
    let mut graph = Graph::new();
    let mut files = Vec::new();
    for entry in std::fs::read_dir(src).expect("src is readable") {
        let path = entry.expect("src entry").path();
        let Some(name) = path
            .file_stem()
            .and_then(|n| n.to_str())
            .map(str::to_string)
        else {
            continue;
        };
        if name == "lib" || name == "main" {
            continue;
        }
        if path.is_dir() || path.extension().is_some_and(|e| e == "rs") {
            graph.entry(name.clone()).or_default();
            files.push((name, path));
        }
    }
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    for (module, path) in files {
        let mut pending = vec![path];
        let mut skipped: BTreeSet<PathBuf> = BTreeSet::new();
        let mut sources = Vec::new();
        while let Some(path) = pending.pop() {
            if path.is_dir() {
                for entry in std::fs::read_dir(&path).expect("module dir is readable") {
                    pending.push(entry.expect("module dir entry").path());
                }
            } else if path.extension().is_some_and(|e| e == "rs") {
                sources.push(path);
            }
        }
        sources.sort();
        let mut parsed = Vec::new();
        for path in &sources {
            let text = std::fs::read_to_string(path).expect("source is readable");
            let (imports, test_modules) = imports_of(&text);
            let dir = if path.file_name().is_some_and(|n| n == "mod.rs") {
                path.parent().map(Path::to_path_buf)
            } else {
                path.parent()
                    .map(|p| p.join(path.file_stem().unwrap_or_default()))
            };
            if let Some(dir) = dir {
                for test_module in test_modules {
                    skipped.insert(dir.join(format!("{test_module}.rs")));
                    skipped.insert(dir.join(&test_module));
                }
            }
            parsed.push((path.clone(), imports));
        }
        for (path, imports) in parsed {
            if skipped.iter().any(|s| path.starts_with(s)) {
                continue;
            }
            let shown = path
                .strip_prefix(src)
                .unwrap_or(&path)
                .display()
                .to_string();
            for import in imports {
                if import != module && modules.contains(&import) {
                    graph
                        .entry(module.clone())
                        .or_default()
                        .entry(import)
                        .or_default()
                        .insert(shown.clone());
                }
            }
        }
    }
    graph
}

/// The top-level modules named by `crate::` paths in `source`'s non-test code, and the
/// modules it declares as test-only (`#[cfg(test)] mod name;`).
fn imports_of(source: &str) -> (Vec<String>, Vec<String>) {
    let code = without_tests(&blank_comments_and_literals(source));
    let test_modules = code.1;
    let code = code.0;
    let mut imports = Vec::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        let preceded_by_ident = rest[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_');
        rest = &rest[at + "crate::".len()..];
        if preceded_by_ident {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut item_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 1 => item_start = true,
                    c if c.is_whitespace() => continue,
                    _ if item_start && depth == 1 => {
                        imports.push(ident_at(&group[i..]));
                        item_start = false;
                    }
                    _ => {}
                }
                if depth == 0 {
                    break;
                }
            }
        } else {
            imports.push(ident_at(rest));
        }
    }
    imports.retain(|i| !i.is_empty());
    let mut seen = BTreeSet::new();
    imports.retain(|i| seen.insert(i.clone()));
    (imports, test_modules)
}

fn ident_at(text: &str) -> String {
    text.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// `source` with comments, string and character literals replaced by spaces (lengths and
/// line breaks kept), so only code is searched.
fn blank_comments_and_literals(source: &str) -> String {
    let chars: Vec<char> = source.chars().collect();
    let mut out = String::with_capacity(source.len());
    let mut i = 0;
    let blank = |out: &mut String, c: char| out.push(if c == '\n' { '\n' } else { ' ' });
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                blank(&mut out, chars[i]);
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, chars[i]);
                    i += 1;
                }
            }
        } else if c == 'r' && (next == Some('#') || next == Some('"')) && !ident_before(&chars, i) {
            // A raw string: r"..." or r#"..."#.
            let hashes = chars[i + 1..].iter().take_while(|c| **c == '#').count();
            if chars.get(i + 1 + hashes) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            let end: String = std::iter::once('"')
                .chain(std::iter::repeat_n('#', hashes))
                .collect();
            let body_start = i + 2 + hashes;
            let rest: String = chars[body_start..].iter().collect();
            let body_len = rest
                .find(&end)
                .map_or(rest.chars().count(), |b| rest[..b].chars().count());
            let total = 2 + hashes + body_len + end.chars().count();
            for &c in chars.iter().skip(i).take(total) {
                blank(&mut out, c);
            }
            i += total;
        } else if c == '"' {
            blank(&mut out, c);
            i += 1;
            while i < chars.len() {
                let c = chars[i];
                blank(&mut out, c);
                i += 1;
                if c == '\\' {
                    if let Some(&escaped) = chars.get(i) {
                        blank(&mut out, escaped);
                        i += 1;
                    }
                } else if c == '"' {
                    break;
                }
            }
        } else if c == '\'' {
            // A character literal ('x', '\n', '\u{..}'), or else a lifetime.
            let close = if next == Some('\\') {
                chars
                    .get(i + 3..)
                    .and_then(|rest| rest.iter().position(|c| *c == '\''))
                    .map(|p| i + 3 + p)
            } else if chars.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            match close {
                Some(end) => {
                    for &c in &chars[i..=end] {
                        blank(&mut out, c);
                    }
                    i = end + 1;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn ident_before(chars: &[char], i: usize) -> bool {
    i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_')
}

/// `code` without the items marked `#[cfg(test)]`, and the names of the test-only modules it
/// declares in files of their own.
fn without_tests(code: &str) -> (String, Vec<String>) {
    const MARK: &str = "#[cfg(test)]";
    let mut out = String::with_capacity(code.len());
    let mut test_modules = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find(MARK) {
        out.push_str(&rest[..at]);
        let item = &rest[at + MARK.len()..];
        // The item ends at its first `;` outside braces, or with the brace block it opens.
        let mut depth = 0usize;
        let mut end = item.len();
        for (i, c) in item.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        end = i + 1;
                        break;
                    }
                }
                ';' if depth == 0 => {
                    end = i + 1;
                    let words: Vec<&str> = item[..i].split_whitespace().collect();
                    if let ["mod", name] | ["pub", "mod", name] | ["pub(crate)", "mod", name] =
                        words.as_slice()
                    {
                        test_modules.push((*name).to_string());
                    }
                    break;
                }
                _ => {}
            }
        }
        rest = &item[end..];
    }
    out.push_str(rest);
    (out, test_modules)
}

/// Every cycle (strongly connected set of two or more modules), each sorted.
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    let names: Vec<&String> = graph.keys().collect();
    let reaches = |from: &String| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut pending = vec![from.clone()];
        while let Some(m) = pending.pop() {
            for next in graph.get(&m).into_iter().flat_map(|i| i.keys()) {
                if seen.insert(next.clone()) {
                    pending.push(next.clone());
                }
            }
        }
        seen
    };
    let reach: BTreeMap<&String, BTreeSet<String>> =
        names.iter().map(|n| (*n, reaches(n))).collect();
    let mut found: Vec<Vec<String>> = Vec::new();
    for name in &names {
        if found.iter().any(|c| c.contains(name)) {
            continue;
        }
        let mut cycle: Vec<String> = names
            .iter()
            .filter(|other| {
                reach[*name].contains(other.as_str()) && reach[**other].contains(name.as_str())
            })
            .map(|n| (*n).clone())
            .collect();
        if cycle.len() >= 2 {
            cycle.sort();
            found.push(cycle);
        }
    }
    found
}
