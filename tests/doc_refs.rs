//! Citations in the documents and in code comments name things that exist.
//!
//! README.md, docs/*.md and the comments of every Rust file under src/, tests/, examples/
//! and benches/ cite repository files (`src/log/`, `tests/crash.rs`), sections of
//! docs/FORMAT.md and docs/DESIGN.md (`FORMAT.md §7.3`), and the invariants that
//! docs/DESIGN.md numbers ("invariant 3", "DESIGN invariants 3 and 4"); the markdown files
//! also link to each other. When a file is renamed, a section renumbered or an invariant
//! dropped, such a citation goes stale without anything failing. Each test below names
//! every stale citation of one kind with its file and line:
//!
//! - a cited path that starts with `src/`, `tests/`, `docs/`, `examples/`, `benches/` or
//!   `fuzz/` must exist (patterns such as `tests/*.rs` are not paths);
//! - `§N` or `§N.M` must be a numbered heading of the document it cites: the one named just
//!   before it (`FORMAT.md §9`, `docs/DESIGN.md §2`, and the rest of a list such as
//!   `FORMAT.md §3.1, §3.2`), or, inside docs/FORMAT.md and docs/DESIGN.md, that document
//!   itself; elsewhere a section must say which document it is in;
//! - an invariant number must be an item of the numbered list under the invariants heading
//!   of docs/DESIGN.md;
//! - a relative markdown link in README.md or docs/*.md must name an existing file, and its
//!   `#anchor`, if any, a heading of that file.
//!
//! In Rust files only comments are read: string literals and code may hold paths that are
//! not citations (a default output file, a directory a test creates).

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// Directories a repository path can start with.
const TOP_DIRS: [&str; 6] = ["src/", "tests/", "docs/", "examples/", "benches/", "fuzz/"];

/// Cited paths that need not exist, and why.
const MAY_BE_ABSENT: [&str; 1] = [
    // Where a fuzz run keeps the inputs that once failed; created by the first finding
    // (fuzz/README.md), and read by tests/fuzz_regressions.rs and fuzz/smoke.sh if present.
    "fuzz/regressions/",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One scanned file: its path from the repository root, and the lines to check (all of a
/// markdown file; only the comments of a Rust file), with their line numbers.
struct Text {
    file: String,
    lines: Vec<(usize, String)>,
    markdown: bool,
}

impl Text {
    /// The text of `line` (its comment part in a Rust file), if it was scanned.
    fn line(&self, line: usize) -> Option<&str> {
        self.lines
            .iter()
            .find(|(n, _)| *n == line)
            .map(|(_, t)| t.as_str())
    }
}

/// Every file whose citations are checked.
fn texts() -> Vec<Text> {
    let root = root();
    let mut files = vec![root.join("README.md")];
    files.extend(files_in(&root.join("docs"), "md", false));
    for dir in ["src", "tests", "benches"] {
        files.extend(files_in(&root.join(dir), "rs", true));
    }
    files.extend(files_in(&root.join("examples"), "rs", false));
    files
        .into_iter()
        .map(|path| {
            let src = fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
            let markdown = path.extension().is_some_and(|e| e == "md");
            let lines = if markdown {
                src.lines()
                    .enumerate()
                    .map(|(i, l)| (i + 1, l.to_string()))
                    .collect()
            } else {
                rust_comments(&src)
            };
            Text {
                file: relative(&path),
                lines,
                markdown,
            }
        })
        .collect()
}

/// Files ending in `.ext` in `dir` (and below it if `deep`), skipping build output.
fn files_in(dir: &Path, ext: &str, deep: bool) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    let mut entries: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            if deep && path.file_name().is_some_and(|n| n != "target") {
                out.extend(files_in(&path, ext, deep));
            }
        } else if path.extension().is_some_and(|e| e == ext) {
            out.push(path);
        }
    }
    out
}

fn relative(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .to_string_lossy()
        .replace('\\', "/")
}

/// The comments of Rust source `src`, one entry per line that has comment text: `//` and
/// `/* */` comments (doc comments included), never the inside of a string or char literal.
fn rust_comments(src: &str) -> Vec<(usize, String)> {
    let chars: Vec<char> = src.chars().collect();
    let at = |i: usize| chars.get(i).copied();
    let is_ident = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    let mut out: Vec<(usize, String)> = Vec::new();
    let mut push = |line: usize, c: char| match out.last_mut() {
        Some((l, text)) if *l == line => text.push(c),
        _ => out.push((line, c.to_string())),
    };
    let mut line = 1;
    let mut i = 0;
    while let Some(c) = at(i) {
        match (c, at(i + 1)) {
            ('\n', _) => {
                line += 1;
                i += 1;
            }
            ('/', Some('/')) => {
                i += 2;
                while let Some(c) = at(i).filter(|&c| c != '\n') {
                    push(line, c);
                    i += 1;
                }
            }
            ('/', Some('*')) => {
                i += 2;
                let mut depth = 1;
                while depth > 0 {
                    match (at(i), at(i + 1)) {
                        (None, _) => break,
                        (Some('*'), Some('/')) => {
                            depth -= 1;
                            i += 2;
                        }
                        (Some('/'), Some('*')) => {
                            depth += 1;
                            i += 2;
                        }
                        (Some(c), _) => {
                            if c == '\n' {
                                line += 1;
                            } else {
                                push(line, c);
                            }
                            i += 1;
                        }
                    }
                }
            }
            ('"', _) => {
                // An ordinary string: up to the next unescaped quote.
                i += 1;
                while let Some(c) = at(i) {
                    i += 1;
                    match c {
                        '"' => break,
                        '\\' => {
                            if at(i) == Some('\n') {
                                line += 1;
                            }
                            i += 1;
                        }
                        '\n' => line += 1,
                        _ => {}
                    }
                }
            }
            ('r', _)
                if !is_ident(i.checked_sub(1).and_then(at))
                    || (i.checked_sub(1).and_then(at) == Some('b')
                        && !is_ident(i.checked_sub(2).and_then(at))) =>
            {
                // Maybe a raw string: r"..." or r#"..."#, with any number of #.
                let hashes = (i + 1..).take_while(|&j| at(j) == Some('#')).count();
                if at(i + 1 + hashes) != Some('"') {
                    i += 1;
                    continue;
                }
                i += hashes + 2;
                while let Some(c) = at(i) {
                    if c == '"' && (1..=hashes).all(|k| at(i + k) == Some('#')) {
                        i += hashes + 1;
                        break;
                    }
                    if c == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
            }
            ('\'', Some('\\')) => {
                // An escaped char literal: '\n', '\'', '\u{..}'.
                i += 3;
                while at(i).is_some_and(|c| c != '\'') {
                    i += 1;
                }
                i += 1;
            }
            ('\'', _) if at(i + 2) == Some('\'') => i += 3, // 'a', '"'
            _ => i += 1,                                    // code, or a lifetime's quote
        }
    }
    out
}

/// The numbers of the numbered headings of a markdown file ("## 9. Maintenance" is "9",
/// "### 9.1 What may be dropped" is "9.1").
fn section_numbers(markdown: &str) -> BTreeSet<String> {
    headings(markdown)
        .iter()
        .filter_map(|h| {
            let num: String = h
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            let num = num.trim_end_matches('.');
            (!num.is_empty() && h[num.len()..].trim_start_matches('.').starts_with(' '))
                .then(|| num.to_string())
        })
        .collect()
}

/// The text of every heading of a markdown file, outside code blocks.
fn headings(markdown: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        let text = line.trim_start_matches('#');
        if !fenced && text.len() < line.len() && text.starts_with(' ') {
            out.push(text.trim().to_string());
        }
    }
    out
}

/// The anchors GitHub gives a markdown file's headings: lower case, spaces made hyphens,
/// every other character that is not a letter, digit, `-` or `_` dropped; a repeated
/// heading gets `-1`, `-2`, ...
fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for h in headings(markdown) {
        let slug: String = h
            .to_lowercase()
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                _ => None,
            })
            .collect();
        let mut unique = slug.clone();
        let mut n = 0;
        while out.contains(&unique) {
            n += 1;
            unique = format!("{slug}-{n}");
        }
        out.insert(unique);
    }
    out
}

/// The invariants docs/DESIGN.md defines: the items of the numbered list that follows its
/// first heading with "invariant" in it, up to the next heading.
fn invariants(design: &str) -> BTreeSet<u32> {
    let mut out = BTreeSet::new();
    let mut inside = false;
    for line in design.lines() {
        if line.starts_with('#') {
            if inside {
                break;
            }
            inside = line.to_lowercase().contains("invariant");
            continue;
        }
        if inside {
            let digits: String = line.chars().take_while(|c| c.is_ascii_digit()).collect();
            if !digits.is_empty() && line[digits.len()..].starts_with(". ") {
                out.extend(digits.parse::<u32>());
            }
        }
    }
    out
}

fn read(path: &str) -> String {
    fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// A number such as `7` or `7.1` at the start of `s` (after spaces), and its length in bytes.
fn leading_number(s: &str) -> Option<(String, usize)> {
    let skipped = s.len() - s.trim_start().len();
    let rest = &s[skipped..];
    let mut end = 0;
    let bytes = rest.as_bytes();
    while end < bytes.len() {
        if bytes[end].is_ascii_digit()
            || (bytes[end] == b'.'
                && end > 0
                && bytes.get(end + 1).is_some_and(|b| b.is_ascii_digit()))
        {
            end += 1;
        } else {
            break;
        }
    }
    (end > 0).then(|| (rest[..end].to_string(), skipped + end))
}

/// Fails with every problem found, one per line.
fn report(what: &str, problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{} {what}:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// Every repository path cited in `text`: `(line, path)`.
fn cited_paths(text: &Text) -> Vec<(usize, String)> {
    let is_path_char = |c: char| c.is_ascii_alphanumeric() || "_./-".contains(c);
    let mut out = Vec::new();
    for (n, line) in &text.lines {
        for top in TOP_DIRS {
            for (at, _) in line.match_indices(top) {
                if line[..at].chars().next_back().is_some_and(is_path_char) {
                    continue; // inside a longer word or path: `/tmp/src/`, `benches/compare/src/`
                }
                let len = line[at..]
                    .find(|c: char| !is_path_char(c))
                    .unwrap_or(line.len() - at);
                let after = line[at + len..].chars().next();
                if after.is_some_and(|c| "*<{$".contains(c)) {
                    continue; // a pattern: `tests/*.rs`, `regressions/<target>/`
                }
                let path = line[at..at + len].trim_end_matches(['.', '-']);
                if !path.contains("..") {
                    out.push((*n, path.to_string()));
                }
            }
        }
    }
    out
}

/// Every `§` citation in `text`: `(line, document, section)`, where the document is
/// `Err(text)` when the citation does not say which document it is in.
fn cited_sections(text: &Text) -> Vec<(usize, Result<&'static str, String>, String)> {
    let named = |before: &str| {
        let before = before.trim_end();
        if before.ends_with("FORMAT.md") {
            Some("docs/FORMAT.md")
        } else if before.ends_with("DESIGN.md") {
            Some("docs/DESIGN.md")
        } else {
            None
        }
    };
    let own = match text.file.as_str() {
        "docs/FORMAT.md" => Some("docs/FORMAT.md"),
        "docs/DESIGN.md" => Some("docs/DESIGN.md"),
        _ => None,
    };
    let mut out = Vec::new();
    for (n, line) in &text.lines {
        let mut previous: Option<&'static str> = None;
        for (at, _) in line.match_indices('§') {
            let Some((section, _)) = leading_number(&line[at + '§'.len_utf8()..]) else {
                continue;
            };
            let before = line[..at].trim_end();
            let start_of_line = before
                .trim_start_matches(|c: char| c.is_whitespace() || "/!*->".contains(c))
                .is_empty();
            let continues_list = before.ends_with(',')
                || before.ends_with(" and")
                || before.ends_with(" or")
                || before.ends_with('(');
            let doc = named(before)
                .or_else(|| previous.filter(|_| continues_list))
                .or_else(|| {
                    // The document's name ended the line before.
                    start_of_line
                        .then(|| text.line(*n - 1).and_then(named))
                        .flatten()
                })
                .or(own);
            previous = doc;
            let doc = doc.ok_or_else(|| line.trim().to_string());
            out.push((*n, doc, section));
        }
    }
    out
}

/// Every invariant number cited in `text`: `(line, number)`. "invariant 2", "invariants 3
/// and 4", "invariants 1, 3, 4" and "invariants 1, 2 and 4" are citations; "invariant
/// checks" and "Invariant:" are not.
fn cited_invariants(text: &Text) -> Vec<(usize, u32)> {
    let mut out = Vec::new();
    for (n, line) in &text.lines {
        let lower = line.to_lowercase();
        for (at, word) in lower.match_indices("invariant") {
            if lower[..at]
                .chars()
                .next_back()
                .is_some_and(char::is_alphanumeric)
            {
                continue;
            }
            let mut rest = &lower[at + word.len()..];
            rest = rest.strip_prefix('s').unwrap_or(rest);
            if !rest.starts_with(char::is_whitespace) {
                continue;
            }
            while let Some((number, len)) = leading_number(rest) {
                let Ok(number) = number.parse::<u32>() else {
                    break; // "7.1": not an invariant number
                };
                out.push((*n, number));
                rest = rest[len..].trim_start();
                let Some(next) = [",", "and ", "or "]
                    .iter()
                    .find_map(|sep| rest.strip_prefix(sep))
                else {
                    break;
                };
                rest = next;
            }
        }
    }
    out
}

/// Every relative link of a markdown file outside code blocks: `(line, target)`.
fn markdown_links(text: &Text) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut fenced = false;
    for (n, line) in &text.lines {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        }
        if fenced {
            continue;
        }
        for (at, _) in line.match_indices("](") {
            let rest = &line[at + 2..];
            let Some(end) = rest.find(')') else {
                continue;
            };
            let target = rest[..end].split_whitespace().next().unwrap_or("");
            let external = ["http://", "https://", "mailto:"]
                .iter()
                .any(|p| target.starts_with(p));
            if !target.is_empty() && !external {
                out.push((*n, target.to_string()));
            }
        }
    }
    out
}

#[test]
fn cited_files_exist() {
    let root = root();
    let mut problems = Vec::new();
    let mut checked = 0;
    for text in texts() {
        for (n, path) in cited_paths(&text) {
            checked += 1;
            let optional = MAY_BE_ABSENT.iter().any(|p| path.starts_with(p));
            if !optional && !root.join(&path).exists() {
                problems.push(format!(
                    "{}:{n}: cites `{path}`, which does not exist",
                    text.file
                ));
            }
        }
    }
    eprintln!("{checked} cited paths checked");
    assert!(
        checked > 50,
        "only {checked} cited paths found: is the scan broken?"
    );
    report("cited files do not exist", &problems);
}

#[test]
fn cited_sections_exist() {
    let format = section_numbers(&read("docs/FORMAT.md"));
    let design = section_numbers(&read("docs/DESIGN.md"));
    assert!(
        format.contains("7.3") && design.contains("1"),
        "headings not found"
    );
    let mut problems = Vec::new();
    let mut checked = 0;
    for text in texts() {
        for (n, doc, section) in cited_sections(&text) {
            checked += 1;
            match doc {
                Ok(doc) => {
                    let sections = if doc == "docs/FORMAT.md" {
                        &format
                    } else {
                        &design
                    };
                    if !sections.contains(&section) {
                        problems.push(format!(
                            "{}:{n}: cites {doc} §{section}, which has no such section",
                            text.file
                        ));
                    }
                }
                Err(line) => problems.push(format!(
                    "{}:{n}: cites §{section} without naming the document: {line}",
                    text.file
                )),
            }
        }
    }
    eprintln!("{checked} cited sections checked");
    assert!(
        checked > 50,
        "only {checked} cited sections found: is the scan broken?"
    );
    report("cited sections do not exist", &problems);
}

#[test]
fn cited_invariants_exist() {
    let defined = invariants(&read("docs/DESIGN.md"));
    assert!(
        !defined.is_empty(),
        "docs/DESIGN.md defines no invariants (a numbered list under a heading that says \
         \"invariants\")"
    );
    let mut problems = Vec::new();
    let mut checked = 0;
    for text in texts() {
        for (n, number) in cited_invariants(&text) {
            checked += 1;
            if !defined.contains(&number) {
                problems.push(format!(
                    "{}:{n}: cites invariant {number}; docs/DESIGN.md defines {defined:?}",
                    text.file
                ));
            }
        }
    }
    eprintln!("{checked} cited invariants checked");
    assert!(
        checked > 20,
        "only {checked} cited invariants found: is the scan broken?"
    );
    report("cited invariants are not defined", &problems);
}

#[test]
fn markdown_links_resolve() {
    let root = root();
    let mut problems = Vec::new();
    let mut checked = 0;
    for text in texts().iter().filter(|t| t.markdown) {
        let dir = root.join(&text.file);
        let dir = dir.parent().unwrap_or(&root);
        for (n, target) in markdown_links(text) {
            checked += 1;
            let (file, anchor) = target.split_once('#').unwrap_or((target.as_str(), ""));
            let path = if file.is_empty() {
                root.join(&text.file)
            } else {
                dir.join(file)
            };
            if !path.exists() {
                problems.push(format!(
                    "{}:{n}: links to `{target}`, which does not exist",
                    text.file
                ));
                continue;
            }
            if anchor.is_empty() || path.extension().is_none_or(|e| e != "md") {
                continue;
            }
            let found = fs::read_to_string(&path).map(|md| anchors(&md).contains(anchor));
            if !found.unwrap_or(false) {
                problems.push(format!(
                    "{}:{n}: links to `{target}`, but {} has no heading with that anchor",
                    text.file,
                    relative(&path)
                ));
            }
        }
    }
    eprintln!("{checked} links checked");
    assert!(
        checked > 5,
        "only {checked} links found: is the scan broken?"
    );
    report("markdown links do not resolve", &problems);
}

/// The scanners themselves, on known input.
#[test]
fn scanners_read_what_they_should() {
    let src = r##"
let a = "src/not_a_comment.rs // nor this"; // see `src/store.rs`.
let b = r#"tests/raw.rs "quoted" "#; let c = '"'; let d = '\''; /* docs/FORMAT.md §7.3 */
fn f<'a>(x: &'a str) {} //! invariants 3 and 4, invariant checks
"##;
    let text = Text {
        file: "tests/example.rs".into(),
        lines: rust_comments(src),
        markdown: false,
    };
    let paths: Vec<String> = cited_paths(&text).into_iter().map(|(_, p)| p).collect();
    assert_eq!(paths, ["src/store.rs", "docs/FORMAT.md"]);
    let sections: Vec<_> = cited_sections(&text)
        .into_iter()
        .map(|(n, doc, s)| (n, doc.ok(), s))
        .collect();
    assert_eq!(sections, [(3, Some("docs/FORMAT.md"), "7.3".to_string())]);
    assert_eq!(cited_invariants(&text), [(4, 3), (4, 4)]);

    let md = Text {
        file: "docs/FORMAT.md".into(),
        lines: [
            "See FORMAT.md §3.1, §3.2 and §9; here §7.1 step 4, DESIGN.md §2.",
            "Links: [a](FORMAT.md#31-layout) and [b](https://example.com) and [c](#x).",
        ]
        .iter()
        .enumerate()
        .map(|(i, l)| (i + 1, l.to_string()))
        .collect(),
        markdown: true,
    };
    let docs: Vec<_> = cited_sections(&md)
        .into_iter()
        .map(|(_, doc, s)| (doc.ok().unwrap_or("?"), s))
        .collect();
    let f = "docs/FORMAT.md";
    let want = [
        (f, "3.1"),
        (f, "3.2"),
        (f, "9"),
        (f, "7.1"),
        ("docs/DESIGN.md", "2"),
    ];
    assert_eq!(
        docs,
        want.map(|(d, s)| (d, s.to_string())),
        "sections of a markdown line"
    );
    let links: Vec<String> = markdown_links(&md).into_iter().map(|(_, l)| l).collect();
    assert_eq!(links, ["FORMAT.md#31-layout", "#x"]);

    let elsewhere = Text {
        file: "src/x.rs".into(),
        lines: vec![(1, "/ bare §4".into())],
        markdown: false,
    };
    assert!(
        cited_sections(&elsewhere)[0].1.is_err(),
        "a bare § outside the docs"
    );

    assert!(
        anchors("## 7.3 Rotation (segment N full → N+1), step by step\n")
            .contains("73-rotation-segment-n-full--n1-step-by-step")
    );
    assert_eq!(
        section_numbers("# Title\n## 1. One\n### 1.2 Two\n```\n# 3. not\n```\n"),
        ["1", "1.2"].map(String::from).into_iter().collect()
    );
    assert_eq!(
        invariants("## 1.1 The invariants\n\n1. **A.**\n   more\n2. **B.**\n## 2. Next\n3. x\n"),
        [1, 2].into_iter().collect()
    );
}
