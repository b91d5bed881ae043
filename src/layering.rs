//! The layering test: no module imports from a layer above its own.
//!
//! The crate is built in layers, bottom to top (the crate root's doc mirrors this table):
//! leaves (error, config, time, memory, net, logging, shutdown, limits) → storage (no domain
//! types) → the actor runtime → the domain (accounts, rooms, presence, keys, push, media,
//! federation, sync, appservices) → `Services` → the front doors `http` and `admin` (peers
//! that never import each other) → the root (server, lib, main). A module may use another
//! whose layer is lower than its own, or one of its own layer unless that layer is the front
//! doors.
//!
//! The test reads every file under `src/`, blanks out comments and literals, and follows
//! each `crate::` and `$crate::` path, and each `super::` chain that climbs to the crate
//! root, to the top-level module it names. It fails on an upward import that is not in
//! [`KNOWN_VIOLATIONS`], and on a listed one that no longer occurs, so the list only
//! shrinks as the refactor of issue 21 removes them.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
};

/// Every top-level module and its layer. A module missing here fails the test.
const LAYERS: &[(&str, u8)] = &[
    ("error", 0),
    ("config", 0),
    ("time", 0),
    ("memory", 0),
    ("net", 0),
    ("logging", 0),
    ("shutdown", 0),
    ("limits", 0),
    ("storage", 1),
    ("actors", 2),
    ("accounts", 3),
    ("rooms", 3),
    ("presence", 3),
    ("keys", 3),
    ("push", 3),
    ("media", 3),
    ("federation", 3),
    ("sync", 3),
    ("appservices", 3),
    ("services", 4),
    ("http", 5),
    ("admin", 5),
    ("server", 6),
    ("lib", 6),
    ("main", 6),
    // This test itself.
    ("layering", 6),
];

/// The front doors: peers of one another, so neither may import the other.
const FRONT: u8 = 5;

/// The crate root's re-exports and the modules they come from.
const ROOT_EXPORTS: &[(&str, &str)] = &[
    ("Error", "error"),
    ("Result", "error"),
    ("Config", "config"),
    ("Services", "services"),
    ("Server", "server"),
];

/// Upward imports tolerated for now, as (file, target module): none since issue 21 removed
/// the last. The test fails on an upward import not listed here, and on a listed pair that no
/// longer occurs.
const KNOWN_VIOLATIONS: &[(&str, &str)] = &[];

#[test]
fn no_module_imports_from_a_layer_above_its_own() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    assert!(files.len() > 50, "found only {} files under src/", files.len());

    let mut problems = Vec::new();
    let mut found = BTreeSet::new();
    for file in &files {
        let relative = file.strip_prefix(root).expect("under the crate root");
        let relative = relative.to_string_lossy().replace('\\', "/");
        let text = fs::read_to_string(file).expect("readable source file");
        let path = module_path(&relative);
        let module = path.first().map_or_else(|| root_module(&relative), String::clone);
        let Some(own) = layer(&module) else {
            problems.push(format!("add `{module}` to LAYERS (for {relative})"));
            continue;
        };
        for (target, line) in imports(&text, &path) {
            let target = ROOT_EXPORTS
                .iter()
                .find(|(name, _)| *name == target)
                .map_or(target.as_str(), |(_, module)| module);
            let Some(theirs) = layer(target) else {
                problems.push(format!("add `{target}` to LAYERS (used at {relative}:{line})"));
                continue;
            };
            if target != module && (theirs > own || (theirs == own && own == FRONT)) {
                if !found.contains(&(relative.clone(), target.to_owned())) {
                    let known = KNOWN_VIOLATIONS
                        .iter()
                        .any(|(file, known)| *file == relative && *known == target);
                    if !known {
                        problems.push(format!(
                            "{relative}:{line}: `{module}` (layer {own}) imports `{target}` \
                             (layer {theirs})"
                        ));
                    }
                }
                found.insert((relative.clone(), target.to_owned()));
            }
        }
    }
    for (file, target) in KNOWN_VIOLATIONS {
        if !found.contains(&((*file).to_owned(), (*target).to_owned())) {
            problems.push(format!(
                "{file} no longer imports `{target}`: delete it from KNOWN_VIOLATIONS"
            ));
        }
    }
    assert!(problems.is_empty(), "layering problems:\n{}", problems.join("\n"));
}

fn layer(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(name, _)| *name == module).map(|(_, layer)| *layer)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .expect("readable source directory")
        .map(|entry| entry.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a file: `src/rooms/actor/build.rs` → `[rooms, actor, build]`,
/// `src/rooms/mod.rs` → `[rooms]`, `src/lib.rs` → `[]`.
fn module_path(relative: &str) -> Vec<String> {
    let inner = relative.strip_prefix("src/").unwrap_or(relative);
    let mut parts: Vec<String> = inner.split('/').map(str::to_owned).collect();
    if let Some(last) = parts.pop() {
        let stem = last.strip_suffix(".rs").unwrap_or(&last);
        let at_root = parts.is_empty() && matches!(stem, "lib" | "main");
        if stem != "mod" && !at_root {
            parts.push(stem.to_owned());
        }
    }
    parts
}

/// The name a crate-root file goes by in [`LAYERS`] (`lib` or `main`).
fn root_module(relative: &str) -> String {
    let name = relative.rsplit('/').next().unwrap_or(relative);
    name.strip_suffix(".rs").unwrap_or(name).to_owned()
}

/// Every top-level module a file refers to, with the line: `crate::` and `$crate::` paths,
/// and `super::` chains that climb to the crate root. `file_path` is the file's module path.
fn imports(text: &str, file_path: &[String]) -> Vec<(String, usize)> {
    let code: Vec<char> = strip(text).chars().collect();
    let inline = inline_modules(&code);
    let mut found = Vec::new();
    let mut at = 0;
    while at < code.len() {
        if !starts_path(&code, at) {
            at += 1;
            continue;
        }
        if matches_at(&code, at, "crate::") {
            let start = at + "crate::".len();
            found.extend(items(&code, start));
            at = start;
        } else if matches_at(&code, at, "$crate::") {
            let start = at + "$crate::".len();
            found.extend(items(&code, start));
            at = start;
        } else if matches_at(&code, at, "super::") {
            let mut supers = 0;
            let mut end = at;
            while matches_at(&code, end, "super::") {
                supers += 1;
                end += "super::".len();
            }
            let depth = file_path.len()
                + inline.iter().filter(|(open, close)| (*open..*close).contains(&at)).count();
            if supers == depth {
                found.extend(items(&code, end));
            }
            at = end;
        } else {
            at += 1;
        }
    }
    found
        .into_iter()
        .map(|(name, offset)| (name, 1 + code[..offset].iter().filter(|c| **c == '\n').count()))
        .collect()
}

/// Whether a path (`crate::`, `$crate::`, `super::`) may start here: not in the middle of an
/// identifier or of another path.
fn starts_path(code: &[char], at: usize) -> bool {
    at == 0 || !(is_ident(code[at - 1]) || code[at - 1] == ':' || code[at - 1] == '$')
}

fn matches_at(code: &[char], at: usize, word: &str) -> bool {
    word.chars().enumerate().all(|(offset, expected)| code.get(at + offset) == Some(&expected))
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The first identifier at `start`, or each top-level item of a `{…}` group there.
fn items(code: &[char], start: usize) -> Vec<(String, usize)> {
    let ident =
        |from: usize| -> String { code[from..].iter().take_while(|c| is_ident(**c)).collect() };
    if code.get(start) != Some(&'{') {
        let name = ident(start);
        return if name.is_empty() { Vec::new() } else { vec![(name, start)] };
    }
    let mut found = Vec::new();
    let mut depth = 0;
    let mut expecting = false;
    for (index, c) in code.iter().enumerate().skip(start) {
        match c {
            '{' => {
                depth += 1;
                if depth == 1 {
                    expecting = true;
                }
            }
            '}' => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            ',' if depth == 1 => expecting = true,
            c if depth == 1 && expecting && (c.is_alphabetic() || *c == '_') => {
                found.push((ident(index), index));
                expecting = false;
            }
            c if depth == 1 && !c.is_whitespace() => expecting = false,
            _ => {}
        }
    }
    found
}

/// The spans of inline `mod name { … }` blocks, as (open brace, close brace) offsets.
fn inline_modules(code: &[char]) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut open: Vec<(usize, bool)> = Vec::new();
    for (index, c) in code.iter().enumerate() {
        match c {
            '{' => open.push((index, opens_module(code, index))),
            '}' => {
                if let Some((start, true)) = open.pop() {
                    spans.push((start, index));
                }
            }
            _ => {}
        }
    }
    spans
}

/// Whether the brace at `brace` opens `mod name {`.
fn opens_module(code: &[char], brace: usize) -> bool {
    let skip_space = |mut at: usize| {
        while at > 0 && code[at - 1].is_whitespace() {
            at -= 1;
        }
        at
    };
    let name_end = skip_space(brace);
    let mut name_start = name_end;
    while name_start > 0 && is_ident(code[name_start - 1]) {
        name_start -= 1;
    }
    let keyword_end = skip_space(name_start);
    name_start < name_end
        && keyword_end < name_start
        && keyword_end >= 3
        && code[keyword_end - 3..keyword_end] == ['m', 'o', 'd']
        && (keyword_end == 3 || !is_ident(code[keyword_end - 4]))
}

/// The text with comments (doc comments included), strings and char literals blanked out,
/// newlines kept so lines still count.
fn strip(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |out: &mut String, span: &[char]| {
        out.extend(span.iter().map(|c| if *c == '\n' { '\n' } else { ' ' }));
    };
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        let after_ident = i > 0 && is_ident(chars[i - 1]);
        if c == '/' && next == Some('/') {
            let end = chars[i..].iter().position(|c| *c == '\n').map_or(chars.len(), |p| i + p);
            blank(&mut out, &chars[i..end]);
            i = end;
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            let mut j = i;
            while j < chars.len() {
                if chars[j] == '/' && chars.get(j + 1) == Some(&'*') {
                    depth += 1;
                    j += 2;
                } else if chars[j] == '*' && chars.get(j + 1) == Some(&'/') {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            blank(&mut out, &chars[i..j]);
            i = j;
        } else if !after_ident && let Some((prefix, hashes)) = raw_string_start(&chars, i) {
            // r"…", r#"…"#, br"…": no escapes; ends at a quote followed by as many hashes.
            let body = i + prefix;
            let mut j = body;
            while j < chars.len() {
                if chars[j] == '"' && (1..=hashes).all(|k| chars.get(j + k) == Some(&'#')) {
                    break;
                }
                j += 1;
            }
            let end = (j + 1 + hashes).min(chars.len());
            blank(&mut out, &chars[i..end]);
            i = end;
        } else if c == '"' {
            let mut j = i + 1;
            while j < chars.len() && chars[j] != '"' {
                j += if chars[j] == '\\' { 2 } else { 1 };
            }
            let end = (j + 1).min(chars.len());
            blank(&mut out, &chars[i..end]);
            i = end;
        } else if c == '\''
            && let Some(end) = char_literal_end(&chars, i)
        {
            blank(&mut out, &chars[i..=end]);
            i = end + 1;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// At `r"`, `r#"`, `br"`, `br#"`…: the length up to and including the opening quote, and
/// the number of hashes.
fn raw_string_start(chars: &[char], at: usize) -> Option<(usize, usize)> {
    let mut j = at;
    if chars.get(j) == Some(&'b') {
        j += 1;
    }
    if chars.get(j) != Some(&'r') {
        return None;
    }
    j += 1;
    let hashes = chars[j..].iter().take_while(|c| **c == '#').count();
    j += hashes;
    (chars.get(j) == Some(&'"')).then_some((j + 1 - at, hashes))
}

/// At a `'`: the offset of the closing quote if a char literal starts here (`'a'`, `'"'`,
/// `'\''`, `'\u{1F600}'`), or `None` for a lifetime or label (`'a`, `'static`).
fn char_literal_end(chars: &[char], at: usize) -> Option<usize> {
    match chars.get(at + 1)? {
        '\\' => (at + 3..(at + 12).min(chars.len())).find(|j| chars[*j] == '\''),
        _ => (chars.get(at + 2) == Some(&'\'')).then_some(at + 2),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(text: &str, path: &[&str]) -> Vec<String> {
        let path: Vec<String> = path.iter().map(|part| (*part).to_owned()).collect();
        imports(text, &path).into_iter().map(|(name, _)| name).collect()
    }

    #[test]
    fn reads_plain_and_grouped_paths() {
        assert_eq!(targets("use crate::rooms::Pdu;", &["http"]), ["rooms"]);
        assert_eq!(
            targets("use crate::{Error, rooms::{Pdu, state}, sync::{hub::{SyncHub}}};", &["http"]),
            ["Error", "rooms", "sync"]
        );
        assert_eq!(
            targets("use crate::{\n    admin,\n    http::{a,\n b},\n};", &["rooms"]),
            ["admin", "http"]
        );
        assert_eq!(targets("let x = crate::time::now();", &["rooms"]), ["time"]);
    }

    #[test]
    fn lines_are_counted() {
        let found = imports("\n// crate::a\nuse crate::rooms;\n", &["http".to_owned()]);
        assert_eq!(found, [("rooms".to_owned(), 3)]);
    }

    #[test]
    fn skips_comments_strings_and_chars() {
        let text = "// crate::admin\n/* crate::admin /* nested */ crate::admin */\n\
                    /// crate::admin\nlet a = \"crate::admin\"; let b = \"\\\"crate::admin\";\n\
                    let c = r#\"crate::admin \" crate::admin\"#; let d = '\"'; \
                    let e = '\\''; fn f<'a>(x: &'a str) {} use crate::rooms;";
        assert_eq!(targets(text, &["http"]), ["rooms"]);
    }

    #[test]
    fn macro_crate_paths_are_read() {
        let text = "macro_rules! m { () => { $crate::storage::Table::new() }; }";
        assert_eq!(targets(text, &["rooms"]), ["storage"]);
    }

    #[test]
    fn same_module_restriction_is_a_path() {
        assert_eq!(targets("pub(in crate::http) fn f() {}", &["http", "client"]), ["http"]);
        assert!(targets("pub(crate) fn f() {}", &["http"]).is_empty());
    }

    #[test]
    fn super_chains_resolve_against_the_file_and_inline_modules() {
        // Climbing to the crate root names the next identifier.
        assert_eq!(targets("use super::super::admin::x;", &["http", "client"]), ["admin"]);
        assert_eq!(
            targets("use super::super::{admin, rooms};", &["http", "x"]),
            ["admin", "rooms"]
        );
        // Staying inside the top-level module names nothing.
        assert!(targets("use super::x;", &["http", "client"]).is_empty());
        // Inside `mod tests { … }` one more `super` is needed.
        assert!(targets("mod tests { use super::super::x; }", &["http", "client"]).is_empty());
        assert_eq!(targets("mod tests { use super::super::admin; }", &["http"]), ["admin"]);
        assert_eq!(targets("mod tests { }\nuse super::admin;", &["http"]), ["admin"]);
        // Not a module: a function body named like one.
        assert_eq!(targets("fn module() { use super::admin; }", &["http"]), ["admin"]);
    }

    #[test]
    fn module_paths_of_files() {
        assert_eq!(module_path("src/rooms/actor/build.rs"), ["rooms", "actor", "build"]);
        assert_eq!(module_path("src/rooms/mod.rs"), ["rooms"]);
        assert_eq!(module_path("src/error.rs"), ["error"]);
        assert!(module_path("src/lib.rs").is_empty());
        assert_eq!(root_module("src/main.rs"), "main");
    }
}
