//! The module boundaries of docs/architecture.md, enforced.
//!
//! The tables under `## Module boundaries (enforced by tests/architecture.rs)` are the
//! allow-list: this test parses them, walks `src/**.rs`, finds every reference to a crate
//! module (`use crate::x`, `use crate::{x, y::z}`, inline `crate::x::y` paths; `omnistock::x`
//! in the binary's modules; bare child-module paths in `lib.rs` and `main.rs`) and every
//! reference to a restricted external crate or path, and fails listing each violation with
//! its file and line. Comments, doc comments, string and character literals are skipped.
//! It also checks that the allowed imports form no loop and that every module of `src/` has
//! a row. The unit tests at the end run the same checker over fabricated files, so a checker
//! that cannot fail would fail them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

const HEADING: &str = "## Module boundaries (enforced by tests/architecture.rs)";

/// What a pure module may not name: no runtime, actors, storage, sockets or clocks.
const PURE_FORBIDDEN_PATHS: &[&str] = &[
    "tokio",
    "actix",
    "sled",
    "std::net",
    "std::time::SystemTime",
    "std::time::Instant",
];
/// Identifiers a pure module may not name however they were imported.
const PURE_FORBIDDEN_IDENTS: &[&str] = &["SystemTime", "Instant"];

/// The allow-list, as read from the doc.
#[derive(Debug, Default)]
struct Rules {
    /// module → the crate modules it may import.
    allowed: BTreeMap<String, BTreeSet<String>>,
    /// Modules that may not use a runtime, sockets, storage or clocks.
    pure: BTreeSet<String>,
    /// (external path, the modules that alone may use it).
    external: Vec<(Vec<String>, BTreeSet<String>)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Violation {
    file: String,
    line: usize,
    module: String,
    what: String,
    allowed: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: module `{}` uses {}; allowed: {}",
            self.file, self.line, self.module, self.what, self.allowed
        )
    }
}

// ---- the doc's tables ------------------------------------------------------------------

/// The rows of every markdown table in `text` (cells trimmed), header and separator dropped,
/// one `Vec` per table.
fn tables(text: &str) -> Vec<Vec<Vec<String>>> {
    let mut out: Vec<Vec<Vec<String>>> = Vec::new();
    let mut current: Option<Vec<Vec<String>>> = None;
    let mut seen_header = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('|') {
            let cells: Vec<String> = t
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect();
            let rows = current.get_or_insert_with(Vec::new);
            if !seen_header {
                seen_header = true; // the header row
            } else if cells.iter().all(|c| c.chars().all(|ch| "-: ".contains(ch))) {
                // the separator row
            } else {
                rows.push(cells);
            }
        } else {
            if let Some(rows) = current.take() {
                out.push(rows);
            }
            seen_header = false;
        }
    }
    if let Some(rows) = current.take() {
        out.push(rows);
    }
    out
}

/// The `backticked` names of a cell (`—` or empty: none).
fn names(cell: &str) -> Vec<String> {
    cell.split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Reads the section's two tables: modules (`module | source | may import | pure`) and
/// external paths (`external | only in`).
fn parse_rules(doc: &str) -> Result<Rules, String> {
    let start = doc
        .find(HEADING)
        .ok_or_else(|| format!("docs/architecture.md has no heading {HEADING:?}"))?;
    let rest = &doc[start + HEADING.len()..];
    let section = match rest.find("\n## ") {
        Some(end) => &rest[..end],
        None => rest,
    };
    let t = tables(section);
    let [modules, external] = t.as_slice() else {
        return Err(format!(
            "the boundaries section must hold exactly two tables (modules, external paths); found {}",
            t.len()
        ));
    };
    let mut rules = Rules::default();
    for row in modules {
        let [module, _source, imports, pure, ..] = row.as_slice() else {
            return Err(format!("module row {row:?}: expected 4 cells"));
        };
        let module = match names(module).as_slice() {
            [m] => m.clone(),
            _ => return Err(format!("module row {row:?}: one `module` name expected")),
        };
        let allowed: BTreeSet<String> = names(imports).into_iter().collect();
        if rules.allowed.insert(module.clone(), allowed).is_some() {
            return Err(format!("module `{module}` has two rows"));
        }
        if pure.eq_ignore_ascii_case("yes") {
            rules.pure.insert(module);
        }
    }
    for row in external {
        let [paths, only, ..] = row.as_slice() else {
            return Err(format!("external row {row:?}: expected 2 cells"));
        };
        let only: BTreeSet<String> = names(only).into_iter().collect();
        for p in names(paths) {
            let segs = p.split("::").map(str::to_string).collect();
            rules.external.push((segs, only.clone()));
        }
    }
    for (m, allowed) in &rules.allowed {
        for a in allowed {
            if !rules.allowed.contains_key(a) {
                return Err(format!("module `{m}` may import `{a}`, which has no row"));
            }
        }
    }
    for (_, only) in &rules.external {
        for m in only {
            if !rules.allowed.contains_key(m) {
                return Err(format!("external rule names `{m}`, which has no row"));
            }
        }
    }
    Ok(rules)
}

/// A loop in the allowed imports, if there is one (`a → b → … → a`).
fn find_cycle(allowed: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        m: &str,
        allowed: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(m) {
            Some(2) => return None,
            Some(1) => {
                let from = stack.iter().position(|s| s == m).unwrap_or(0);
                let mut cycle = stack[from..].to_vec();
                cycle.push(m.to_string());
                return Some(cycle);
            }
            _ => {}
        }
        state.insert(m.to_string(), 1);
        stack.push(m.to_string());
        for next in allowed.get(m).into_iter().flatten() {
            if next != m {
                if let Some(c) = visit(next, allowed, state, stack) {
                    return Some(c);
                }
            }
        }
        stack.pop();
        state.insert(m.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for m in allowed.keys() {
        if let Some(c) = visit(m, allowed, &mut state, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}

// ---- Rust source: comments and literals out, paths in ------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    /// `::`
    Sep,
    Punct(char),
}

/// The tokens that matter for paths, each with its line; comments, strings, byte strings,
/// raw strings, character literals and lifetimes are skipped.
fn tokens(src: &str) -> Vec<(Tok, usize)> {
    let c: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    let is_ident = |ch: char| ch == '_' || ch.is_alphanumeric();
    // Skips to the end of a quoted literal starting at the opening quote `c[i]`.
    let skip_quoted = |mut i: usize, line: &mut usize| -> usize {
        let q = c[i];
        i += 1;
        while i < c.len() && c[i] != q {
            if c[i] == '\\' {
                i += 1;
            }
            if i < c.len() && c[i] == '\n' {
                *line += 1;
            }
            i += 1;
        }
        i + 1
    };
    while i < c.len() {
        let ch = c[i];
        let next = c.get(i + 1).copied();
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && next == Some('*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if c[i] == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
            }
        } else if ch == '"' {
            i = skip_quoted(i, &mut line);
        } else if ch == '\'' {
            // A character literal ('x', '\n', '\u{1F600}') or a lifetime ('a).
            if next == Some('\\') || c.get(i + 2) == Some(&'\'') {
                i = skip_quoted(i, &mut line);
            } else {
                i += 1;
            }
        } else if is_ident(ch) {
            let start = i;
            while i < c.len() && is_ident(c[i]) {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            // Raw strings and byte strings: r"..", r#".."#, b"..", br#".."#, b'x'.
            if matches!(word.as_str(), "r" | "br" | "b" | "c" | "cr")
                && i < c.len()
                && (c[i] == '"' || c[i] == '#' || (word == "b" && c[i] == '\''))
            {
                if c[i] == '\'' {
                    i = skip_quoted(i, &mut line);
                    continue;
                }
                let mut hashes = 0;
                while i < c.len() && c[i] == '#' {
                    hashes += 1;
                    i += 1;
                }
                if i < c.len() && c[i] == '"' {
                    if hashes == 0 && !word.contains('r') {
                        i = skip_quoted(i, &mut line);
                        continue;
                    }
                    i += 1;
                    loop {
                        if i >= c.len() {
                            break;
                        }
                        if c[i] == '\n' {
                            line += 1;
                        }
                        if c[i] == '"' && (1..=hashes).all(|k| c.get(i + k) == Some(&'#')) {
                            i += 1 + hashes;
                            break;
                        }
                        i += 1;
                    }
                    continue;
                }
                // `r#ident`: a raw identifier.
                let s = i;
                while i < c.len() && is_ident(c[i]) {
                    i += 1;
                }
                out.push((Tok::Ident(c[s..i].iter().collect()), line));
                continue;
            }
            out.push((Tok::Ident(word), line));
        } else if ch == ':' && next == Some(':') {
            out.push((Tok::Sep, line));
            i += 2;
        } else {
            out.push((Tok::Punct(ch), line));
            i += 1;
        }
    }
    out
}

/// A path's segments, each with its line (`crate::{\n a }`: `a` is on the second line).
type SegPath = Vec<(String, usize)>;

/// Every path in the tokens, `{..}` groups expanded (`use a::{b, c::d}` gives `a::b` and
/// `a::c::d`). Only paths of two or more segments, or a single segment followed by `!` or
/// `::`, are kept: a lone identifier is not a path.
fn paths(toks: &[(Tok, usize)]) -> Vec<SegPath> {
    // The paths after `prefix` starting at `toks[i]` and the index after them.
    fn parse(toks: &[(Tok, usize)], mut i: usize, prefix: SegPath) -> (Vec<SegPath>, usize) {
        let mut segs = prefix;
        loop {
            match toks.get(i) {
                Some((Tok::Ident(s), line)) => {
                    segs.push((s.clone(), *line));
                    i += 1;
                }
                Some((Tok::Punct('*'), line)) => {
                    segs.push(("*".into(), *line));
                    return (vec![segs], i + 1);
                }
                Some((Tok::Punct('{'), _)) => return group(toks, i, segs),
                _ => return (vec![segs], i),
            }
            if toks.get(i).map(|t| &t.0) == Some(&Tok::Sep) {
                i += 1;
            } else {
                return (vec![segs], i);
            }
        }
    }
    // `{a, b::c, self}` after `prefix`, starting at the `{`.
    fn group(toks: &[(Tok, usize)], mut i: usize, prefix: SegPath) -> (Vec<SegPath>, usize) {
        let mut all = Vec::new();
        i += 1; // `{`
        loop {
            match toks.get(i) {
                None => return (all, i),
                Some((Tok::Punct('}'), _)) => return (all, i + 1),
                Some((Tok::Punct(','), _)) => i += 1,
                Some((Tok::Ident(s), _)) if s == "self" => {
                    all.push(prefix.clone());
                    i += 1;
                }
                Some((Tok::Ident(_), _))
                | Some((Tok::Punct('*'), _))
                | Some((Tok::Punct('{'), _)) => {
                    let (mut tails, j) = parse(toks, i, prefix.clone());
                    all.append(&mut tails);
                    i = j;
                    // `x as y` and anything else up to the next item.
                    let mut depth = 0;
                    while let Some((t, _)) = toks.get(i) {
                        match t {
                            Tok::Punct('{') => depth += 1,
                            Tok::Punct('}') if depth == 0 => break,
                            Tok::Punct('}') => depth -= 1,
                            Tok::Punct(',') if depth == 0 => break,
                            _ => {}
                        }
                        i += 1;
                    }
                }
                Some(_) => i += 1,
            }
        }
    }
    let mut out = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        let prev = i.checked_sub(1).map(|p| &toks[p].0);
        let starts = matches!(toks[i].0, Tok::Ident(_))
            && !matches!(
                prev,
                Some(Tok::Sep) | Some(Tok::Punct('.')) | Some(Tok::Punct('$'))
            );
        // A leading `::` (`::tokio::net`) starts a path too.
        let leading_sep = toks[i].0 == Tok::Sep
            && !matches!(prev, Some(Tok::Ident(_)) | Some(Tok::Punct('>')))
            && matches!(toks.get(i + 1).map(|t| &t.0), Some(Tok::Ident(_)));
        if starts || leading_sep {
            let first = if leading_sep { i + 1 } else { i };
            let (tails, j) = parse(toks, first, Vec::new());
            let single_is_path = matches!(
                toks.get(first + 1).map(|t| &t.0),
                Some(Tok::Punct('!')) | Some(Tok::Sep)
            );
            out.extend(
                tails
                    .into_iter()
                    .filter(|t| t.len() >= 2 || (single_is_path && !t.is_empty())),
            );
            i = j.max(i + 1);
        } else {
            i += 1;
        }
    }
    out
}

// ---- the checker -----------------------------------------------------------------------

/// The top-level module of a file under `src/` (`src/feed/hub.rs` → `feed`).
fn module_of(path: &str) -> Option<String> {
    let rel = path.strip_prefix("src/")?;
    let first = rel.split('/').next()?;
    Some(first.strip_suffix(".rs").unwrap_or(first).to_string())
}

/// The modules `mod x;` declares in a crate root.
fn declared_modules(root: &str) -> BTreeSet<String> {
    let toks = tokens(root);
    let mut out = BTreeSet::new();
    for w in toks.windows(3) {
        if let [(Tok::Ident(m), _), (Tok::Ident(name), _), (Tok::Punct(';'), _)] = w {
            if m == "mod" {
                out.insert(name.clone());
            }
        }
    }
    out
}

fn starts_with(path: &[String], prefix: &[String]) -> bool {
    path.len() >= prefix.len() && path.iter().zip(prefix).all(|(a, b)| a == b)
}

fn list(s: &BTreeSet<String>) -> String {
    if s.is_empty() {
        "nothing".into()
    } else {
        s.iter()
            .map(|m| format!("`{m}`"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Checks `files` (path relative to the repository, contents) against `rules`. The crate
/// roots `src/lib.rs` and `src/main.rs`, when present, say which modules belong to which
/// crate. Also reports modules without a row and loops in the allowed imports.
fn check(rules: &Rules, files: &[(String, String)]) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(cycle) = find_cycle(&rules.allowed) {
        problems.push(format!(
            "docs/architecture.md allows an import loop: {}",
            cycle.join(" → ")
        ));
    }
    let root = |name: &str| {
        files
            .iter()
            .find(|(p, _)| p == name)
            .map(|(_, s)| declared_modules(s))
            .unwrap_or_default()
    };
    let (lib_mods, bin_mods) = (root("src/lib.rs"), root("src/main.rs"));
    let mut violations = Vec::new();
    for (path, src) in files {
        let Some(module) = module_of(path) else {
            continue;
        };
        let Some(allowed) = rules.allowed.get(&module) else {
            problems.push(format!(
                "{path}: module `{module}` has no row in the boundaries table of docs/architecture.md"
            ));
            continue;
        };
        let in_bin = module == "main" || bin_mods.contains(&module);
        let toks = tokens(src);
        let mut violate = |line: usize, what: String, allowed: String| {
            violations.push(Violation {
                file: path.clone(),
                line,
                module: module.clone(),
                what,
                allowed,
            })
        };
        for segs in paths(&toks) {
            let p: Vec<String> = segs.iter().map(|s| s.0.clone()).collect();
            // The line of the segment naming the module (or of the path's start).
            let line = segs.get(1).map_or(segs[0].1, |s| s.1);
            let first_line = segs[0].1;
            // Which crate module does the path name, if any?
            let (head, second) = (p[0].as_str(), p.get(1).map(String::as_str));
            let target = match (head, second) {
                ("crate", Some(m)) if in_bin => Some(if bin_mods.contains(m) { m } else { "main" }),
                ("crate", Some(m)) => Some(if lib_mods.contains(m) { m } else { "lib" }),
                ("omnistock", Some(m)) => Some(if lib_mods.contains(m) { m } else { "lib" }),
                (m, _) if module == "main" && bin_mods.contains(m) => Some(m),
                (m, _) if module == "lib" && lib_mods.contains(m) => Some(m),
                _ => None,
            };
            if let Some(t) = target {
                if t != module && !allowed.contains(t) {
                    let (line, what) = match second {
                        Some(m) if matches!(head, "crate" | "omnistock") && m == t => {
                            (line, format!("`{head}::{m}`"))
                        }
                        Some(m) if matches!(head, "crate" | "omnistock") => {
                            (line, format!("`{head}::{m}` (in the crate root `{t}`)"))
                        }
                        _ => (first_line, format!("`{t}`")),
                    };
                    violate(line, what, list(allowed));
                }
                continue;
            }
            let line = first_line;
            for (ext, only) in &rules.external {
                if starts_with(&p, ext) && !only.contains(&module) {
                    violate(
                        line,
                        format!("`{}`", ext.join("::")),
                        format!("only in {}", list(only)),
                    );
                }
            }
            if rules.pure.contains(&module) {
                for f in PURE_FORBIDDEN_PATHS {
                    let f: Vec<String> = f.split("::").map(str::to_string).collect();
                    if starts_with(&p, &f) {
                        violate(
                            line,
                            format!("`{}`", p.join("::")),
                            format!("none of {PURE_FORBIDDEN_PATHS:?} (pure module)"),
                        );
                    }
                }
            }
        }
        if rules.pure.contains(&module) {
            for (t, line) in &toks {
                if let Tok::Ident(w) = t {
                    if PURE_FORBIDDEN_IDENTS.contains(&w.as_str()) {
                        violate(*line, format!("`{w}`"), "no clocks (pure module)".into());
                    }
                }
            }
        }
    }
    violations.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
    violations.dedup();
    problems.extend(violations.iter().map(Violation::to_string));
    problems
}

fn read_tree(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            read_tree(&p, root, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            let rel = p.strip_prefix(root).expect("under root");
            let rel = rel.to_string_lossy().replace('\\', "/");
            let src = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{rel}: {e}"));
            out.push((rel, src));
        }
    }
}

#[test]
fn the_source_tree_keeps_the_documented_module_boundaries() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/architecture.md")).expect("read doc");
    let rules = parse_rules(&doc).unwrap_or_else(|e| panic!("{e}"));
    let mut files = Vec::new();
    read_tree(&root.join("src"), root, &mut files);
    assert!(files.len() > 50, "only {} files under src/", files.len());
    let mut problems = check(&rules, &files);
    // Every row names a module that exists (a stale row would allow nothing real).
    let present: BTreeSet<String> = files.iter().filter_map(|(p, _)| module_of(p)).collect();
    for m in rules.allowed.keys() {
        if !present.contains(m) {
            problems.push(format!(
                "docs/architecture.md has a row for `{m}`, which is not a module of src/"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{} module boundary problem(s) (docs/architecture.md, \"{}\"):\n{}",
        problems.len(),
        HEADING.trim_start_matches("## "),
        problems.join("\n")
    );
}

// ---- the checker checked ---------------------------------------------------------------

const FAKE_DOC: &str = "\
# x

## Module boundaries (enforced by tests/architecture.rs)

| module | source | may import | pure |
|---|---|---|---|
| `lib` | `src/lib.rs` | — | |
| `main` | `src/main.rs` | `lib`, `ctl` | |
| `ctl` | `src/ctl.rs` | `protocol` | |
| `domain` | `src/domain/` | — | yes |
| `protocol` | `src/protocol/` | `domain` | yes |
| `engine` | `src/engine/` | `domain`, `feed` | |
| `feed` | `src/feed/` | `domain`, `protocol` | |

| external | only in |
|---|---|
| `sled` | `engine` |
| `tokio::net`, `std::net::TcpStream` | `ctl` |

## Next section

| not | this |
|---|---|
| `a` | `b` |
";

const FAKE_LIB: &str = "pub mod domain;\npub mod engine;\npub mod feed;\npub mod protocol;\n";
const FAKE_MAIN: &str = "mod ctl;\nfn main() { ctl::run(); omnistock::banner(); }\n";

fn fake(extra: &[(&str, &str)]) -> Vec<String> {
    let rules = parse_rules(FAKE_DOC).expect("fake doc parses");
    let mut files = vec![
        ("src/lib.rs".to_string(), FAKE_LIB.to_string()),
        ("src/main.rs".to_string(), FAKE_MAIN.to_string()),
        (
            "src/ctl.rs".to_string(),
            "use omnistock::protocol::Frame;\n".to_string(),
        ),
    ];
    files.extend(extra.iter().map(|(p, s)| (p.to_string(), s.to_string())));
    check(&rules, &files)
}

#[test]
fn the_fake_tree_without_violations_passes() {
    let ok = fake(&[
        (
            "src/feed/mod.rs",
            "use crate::domain::SkuId;\nuse crate::protocol::{self, PushItem};\nuse super::hub;\nuse crate::feed::x;\n",
        ),
        ("src/engine/mod.rs", "use crate::feed::{hub::Hub, FeedRecord};\nuse sled::Db;\n"),
        ("src/domain/mod.rs", "use std::time::Duration;\nfn f(x: Instant2) {}\n"),
    ]);
    assert_eq!(ok, Vec::<String>::new());
}

#[test]
fn a_forbidden_use_is_reported_with_file_line_and_allowed_list() {
    let v = fake(&[(
        "src/feed/subscription.rs",
        "//! Feed.\n\nuse crate::domain::SkuId;\nuse crate::engine::Engine;\n",
    )]);
    assert_eq!(
        v,
        vec![
            "src/feed/subscription.rs:4: module `feed` uses `crate::engine`; allowed: `domain`, `protocol`"
                .to_string()
        ]
    );
}

#[test]
fn groups_inline_paths_and_the_binary_crate_are_seen() {
    let v = fake(&[
        (
            "src/feed/a.rs",
            "use crate::{domain, engine::{Engine, Failure}};\n",
        ),
        (
            "src/feed/b.rs",
            "fn f() {\n    let _ = crate::engine::Failure::Rejected;\n    crate :: engine::go();\n}\n",
        ),
        ("src/protocol/c.rs", "use crate::{\n    domain::X,\n    feed,\n};\n"),
    ]);
    let want = [
        "src/feed/a.rs:1: module `feed` uses `crate::engine`",
        "src/feed/b.rs:2: module `feed` uses `crate::engine`",
        "src/feed/b.rs:3: module `feed` uses `crate::engine`",
        "src/protocol/c.rs:3: module `protocol` uses `crate::feed`",
    ];
    assert_eq!(v.len(), want.len(), "{v:#?}");
    for (got, w) in v.iter().zip(want) {
        assert!(got.starts_with(w), "{got} / {w}");
    }
    // `omnistock::engine` from the binary's `ctl`, which may only use `protocol`.
    let v = fake(&[("src/ctl.rs", "use omnistock::engine::Engine;\n")]);
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(
        v[0].contains("module `ctl` uses `omnistock::engine`"),
        "{v:?}"
    );
}

#[test]
fn comments_strings_and_chars_are_not_imports() {
    let v = fake(&[(
        "src/feed/mod.rs",
        concat!(
            "//! See crate::engine::Engine.\n",
            "/// [`Engine`](crate::engine::Engine)\n",
            "/* crate::engine /* nested crate::engine */ still crate::engine */\n",
            "const A: &str = \"crate::engine::X\";\n",
            "const B: &str = r#\"a \"quoted\" crate::engine\"#;\n",
            "const C: char = '\"';\n",
            "fn f<'a>(x: &'a str) -> &'a str { x } // crate::engine\n",
            "const D: &[u8] = b\"crate::engine\";\n",
        ),
    )]);
    assert_eq!(v, Vec::<String>::new());
    // ... but code after them still counts.
    let v = fake(&[(
        "src/feed/mod.rs",
        "const C: char = '\"'; use crate::engine::X;\n",
    )]);
    assert_eq!(v.len(), 1, "{v:?}");
}

#[test]
fn external_crates_and_pure_modules_are_checked() {
    let v = fake(&[
        (
            "src/feed/a.rs",
            "use sled::Db;\nuse tokio::net::TcpStream;\n",
        ),
        (
            "src/feed/b.rs",
            "fn f() { let _ = std::net::TcpStream::connect(\"x\"); }\n",
        ),
        ("src/domain/c.rs", "use std::time::{Duration, Instant};\n"),
        (
            "src/protocol/d.rs",
            "use tokio::sync::mpsc;\nfn f() -> std::time::SystemTime { todo!() }\n",
        ),
        (
            "src/ctl.rs",
            "use tokio::net::TcpStream;\nuse omnistock::protocol::X;\n",
        ),
    ]);
    let joined = v.join("\n");
    for want in [
        "src/feed/a.rs:1: module `feed` uses `sled`; allowed: only in `engine`",
        "src/feed/a.rs:2: module `feed` uses `tokio::net`",
        "src/feed/b.rs:1: module `feed` uses `std::net::TcpStream`",
        "src/domain/c.rs:1: module `domain` uses `std::time::Instant`",
        "src/domain/c.rs:1: module `domain` uses `Instant`",
        "src/protocol/d.rs:1: module `protocol` uses `tokio::sync::mpsc`",
        "src/protocol/d.rs:2: module `protocol` uses `std::time::SystemTime`",
    ] {
        assert!(joined.contains(want), "missing {want:?} in:\n{joined}");
    }
    assert!(!joined.contains("src/ctl.rs"), "{joined}");
}

#[test]
fn modules_without_a_row_and_loops_are_reported() {
    let v = fake(&[("src/newthing.rs", "pub fn x() {}\n")]);
    assert!(
        v.iter().any(|p| p.contains("module `newthing` has no row")),
        "{v:?}"
    );
    let looped = FAKE_DOC.replace(
        "| `domain` | `src/domain/` | — | yes |",
        "| `domain` | `src/domain/` | `engine` | yes |",
    );
    let rules = parse_rules(&looped).expect("parses");
    let v = check(&rules, &[]);
    assert!(
        v.iter()
            .any(|p| p.contains("import loop") && p.contains("domain → engine → domain")),
        "{v:?}"
    );
}

#[test]
fn the_doc_tables_are_read_strictly() {
    let rules = parse_rules(FAKE_DOC).expect("parses");
    assert_eq!(
        rules.allowed.len(),
        7,
        "the next section's table is not read"
    );
    assert_eq!(
        rules.allowed["feed"],
        ["domain", "protocol"].map(String::from).into()
    );
    assert!(rules.pure.contains("domain") && !rules.pure.contains("feed"));
    assert_eq!(rules.external.len(), 3);
    assert!(parse_rules("# nothing").is_err());
    let unknown = FAKE_DOC.replace("`domain`, `feed` |", "`domain`, `fedd` |");
    assert!(parse_rules(&unknown)
        .unwrap_err()
        .contains("`fedd`, which has no row"));
}
