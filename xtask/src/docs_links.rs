//! The documentation's links stay right: every relative link and image of README.md and
//! docs/*.md names a file that exists and, with `#anchor`, a heading of it (GitHub's anchors), and
//! every `docs/NAME.md` (or `docs/NAME.md#anchor`) that the Rust sources and deploy/ mention
//! (`--help` texts, error messages, comments) exists too. Tests only: `cargo test -p xtask`.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use pulldown_cmark::{BrokenLink, Event, LinkType, Options, Parser, Tag, TagEnd};

/// The repository: xtask's manifest directory's parent.
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The markdown dialect GitHub renders (the parts that matter for links and headings).
fn options() -> Options {
    Options::ENABLE_TABLES
        | Options::ENABLE_STRIKETHROUGH
        | Options::ENABLE_TASKLISTS
        | Options::ENABLE_FOOTNOTES
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// GitHub's anchor for a heading's text: lowercase; letters, digits, `-` and `_` kept, each
/// space turned into `-`, everything else (punctuation, symbols, backticks) dropped.
fn slug(text: &str) -> String {
    text.trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            '-' | '_' => Some(c),
            c if c.is_alphanumeric() => Some(c),
            _ => None,
        })
        .collect()
}

/// Numbers repeated anchors as GitHub does: the first `a` stays `a`, the next ones become `a-1`,
/// `a-2`, ..., skipping any anchor already taken.
#[derive(Default)]
struct Slugger {
    seen: HashMap<String, usize>,
}

impl Slugger {
    fn anchor(&mut self, text: &str) -> String {
        let base = slug(text);
        let mut anchor = base.clone();
        while self.seen.contains_key(&anchor) {
            let n = self
                .seen
                .get_mut(&base)
                .expect("the base anchor was seen first");
            *n += 1;
            anchor = format!("{base}-{n}");
        }
        self.seen.insert(anchor.clone(), 0);
        anchor
    }
}

/// The anchors of a document's headings, in order. A heading's text is its text as rendered:
/// inline code counts, emphasis and link markup do not, nor do images.
fn anchors(markdown: &str) -> Vec<String> {
    let mut slugger = Slugger::default();
    let mut out = Vec::new();
    let mut heading: Option<String> = None;
    let mut in_image = 0usize;
    for event in Parser::new_ext(markdown, options()) {
        match event {
            Event::Start(Tag::Heading { .. }) => heading = Some(String::new()),
            Event::End(TagEnd::Heading(_)) => {
                if let Some(text) = heading.take() {
                    out.push(slugger.anchor(&text));
                }
            }
            Event::Start(Tag::Image { .. }) => in_image += 1,
            Event::End(TagEnd::Image) => in_image = in_image.saturating_sub(1),
            Event::Text(t) | Event::Code(t) if in_image == 0 => {
                if let Some(h) = heading.as_mut() {
                    h.push_str(&t);
                }
            }
            Event::SoftBreak | Event::HardBreak if in_image == 0 => {
                if let Some(h) = heading.as_mut() {
                    h.push(' ');
                }
            }
            _ => {}
        }
    }
    out
}

/// A link or image of a document: its destination and the line it is on.
#[derive(Debug, PartialEq)]
struct Link {
    line: usize,
    dest: String,
}

/// Every link and image of a document, and the reference links (`[text][name]`) whose
/// definition is missing, as messages.
fn links(markdown: &str) -> (Vec<Link>, Vec<String>) {
    let mut undefined = Vec::new();
    let mut found = Vec::new();
    {
        let callback = |broken: BrokenLink<'_>| {
            // `[text]` alone is often just brackets in prose; `[text][name]` and `[name][]`
            // are meant as links.
            if matches!(broken.link_type, LinkType::Reference | LinkType::Collapsed) {
                undefined.push(format!(
                    "{}: reference [{}] has no definition",
                    line_of(markdown, broken.span.start),
                    broken.reference
                ));
            }
            None
        };
        let parser = Parser::new_with_broken_link_callback(markdown, options(), Some(callback));
        for (event, range) in parser.into_offset_iter() {
            if let Event::Start(Tag::Link { dest_url, .. } | Tag::Image { dest_url, .. }) = event {
                found.push(Link {
                    line: line_of(markdown, range.start),
                    dest: dest_url.to_string(),
                });
            }
        }
    }
    (found, undefined)
}

/// Whether a destination leaves the repository: a URL with a scheme (`https:`, `mailto:`, ...)
/// or a protocol-relative `//host/...`.
fn is_external(dest: &str) -> bool {
    if dest.starts_with("//") {
        return true;
    }
    match dest.split_once(':') {
        Some((scheme, _)) => {
            !scheme.is_empty()
                && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        }
        None => false,
    }
}

/// `%XX` escapes decoded (a link to `a%20b.md` names `a b.md`); anything malformed is kept as is.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = s.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `path` without `.` and `..` components, so that it can be compared with the repository's
/// root and shown short (the files need not exist).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// Checks targets, reading each markdown target's headings once.
struct Checker {
    root: PathBuf,
    anchors: HashMap<PathBuf, Vec<String>>,
}

impl Checker {
    fn new(root: &Path) -> Self {
        Checker {
            root: normalize(&std::path::absolute(root).expect("the repository's path")),
            anchors: HashMap::new(),
        }
    }

    /// `path` relative to the repository, for messages.
    fn show(&self, path: &Path) -> String {
        path.strip_prefix(&self.root)
            .unwrap_or(path)
            .display()
            .to_string()
    }

    /// What is wrong with `target` (a path inside the repository) and `anchor`, if anything.
    fn check_target(&mut self, target: &Path, anchor: Option<&str>) -> Option<String> {
        let target = normalize(target);
        if !target.starts_with(&self.root) {
            return Some(format!("{} is outside the repository", target.display()));
        }
        let shown = self.show(&target);
        if !target.exists() {
            return Some(format!("{shown} does not exist"));
        }
        let anchor = anchor.filter(|a| !a.is_empty())?;
        let is_markdown = target.is_file() && target.extension().is_some_and(|e| e == "md");
        if !is_markdown {
            // GitHub's line anchors (`#L10`, `#L10-L20`) are the only ones other files have.
            let is_line = |s: &str| {
                s.strip_prefix('L')
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            };
            let ok = match anchor.split_once('-') {
                Some((a, b)) => is_line(a) && is_line(b),
                None => is_line(anchor),
            };
            return (!ok).then(|| format!("{shown} is not markdown: it has no heading #{anchor}"));
        }
        let anchors = match self.anchors.get(&target) {
            Some(a) => a,
            None => {
                let text = match fs::read_to_string(&target) {
                    Ok(t) => t,
                    Err(e) => return Some(format!("cannot read {shown}: {e}")),
                };
                self.anchors.entry(target.clone()).or_insert(anchors(&text))
            }
        };
        if anchors.iter().any(|a| a == anchor) {
            None
        } else {
            Some(format!(
                "{shown} has no heading with anchor #{anchor} (it has: {})",
                anchors
                    .iter()
                    .map(|a| format!("#{a}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ))
        }
    }

    /// The broken relative links and images of the markdown file `file`, one message each.
    fn check_markdown(&mut self, file: &Path) -> Vec<String> {
        let file = normalize(&std::path::absolute(file).expect("the file's path"));
        let shown = self.show(&file);
        let text = match fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) => return vec![format!("{shown}: cannot read: {e}")],
        };
        let (links, undefined) = links(&text);
        let mut problems: Vec<String> = undefined
            .into_iter()
            .map(|m| format!("{shown}:{m}"))
            .collect();
        for link in links {
            if is_external(&link.dest) {
                continue;
            }
            let (path, anchor) = match link.dest.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (link.dest.as_str(), None),
            };
            let path = percent_decode(path);
            let target = if path.is_empty() {
                file.clone()
            } else if let Some(from_root) = path.strip_prefix('/') {
                self.root.join(from_root)
            } else {
                file.parent().expect("a file has a directory").join(path)
            };
            if link.dest.is_empty() {
                problems.push(format!("{shown}:{}: a link with no destination", link.line));
            } else if let Some(why) = self.check_target(&target, anchor) {
                problems.push(format!("{shown}:{}: ({}): {why}", link.line, link.dest));
            }
        }
        problems
    }

    /// The `docs/NAME.md[#anchor]` mentions of `file` that name no file or heading.
    fn check_mentions(&mut self, file: &Path) -> Vec<String> {
        let shown = self.show(&normalize(file));
        let text = match fs::read(file) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            // Moved or deleted while the tree was walked: nothing to check.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Vec::new(),
            Err(e) => return vec![format!("{shown}: cannot read: {e}")],
        };
        let mut problems = Vec::new();
        for m in doc_mentions(&text) {
            let target = self.root.join("docs").join(&m.name);
            if let Some(why) = self.check_target(&target, m.anchor.as_deref()) {
                problems.push(format!("{shown}:{}: ({}): {why}", m.line, m.text));
            }
        }
        problems
    }
}

/// A mention of a docs file in a source: `docs/NAME.md`, maybe with `#anchor`.
#[derive(Debug, PartialEq)]
struct Mention {
    line: usize,
    text: String,
    name: String,
    anchor: Option<String>,
}

/// Every `docs/NAME.md` and `docs/NAME.md#anchor` in a text (NAME: letters, digits, `_`, `-`,
/// `.`; an anchor: letters, digits, `_`, `-`). A sentence's final period is not part of it.
fn doc_mentions(text: &str) -> Vec<Mention> {
    const DIR: &str = "docs/";
    let is_name = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    let is_anchor = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-');
    let mut out = Vec::new();
    for (at, _) in text.match_indices(DIR) {
        if text[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_')
        {
            continue; // `mydocs/`: another directory
        }
        let rest = &text[at + DIR.len()..];
        let name_len = rest.find(|c| !is_name(c)).unwrap_or(rest.len());
        let name = rest[..name_len].trim_end_matches('.');
        if !name.ends_with(".md") || name.len() == ".md".len() {
            continue;
        }
        let mut end = at + DIR.len() + name.len();
        let mut anchor = None;
        if name.len() == name_len
            && let Some(after) = rest[name_len..].strip_prefix('#')
        {
            let len = after.find(|c| !is_anchor(c)).unwrap_or(after.len());
            if len > 0 {
                anchor = Some(after[..len].to_string());
                end += 1 + len;
            }
        }
        out.push(Mention {
            line: line_of(text, at),
            text: text[at..end].to_string(),
            name: name.to_string(),
            anchor,
        });
    }
    out
}

/// The files under `dir` (recursively) whose names end with `suffix`, sorted.
fn files_under(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.to_string_lossy().ends_with(suffix) {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// README.md and docs/*.md of the repository at `root`.
fn documentation(root: &Path) -> Vec<PathBuf> {
    let mut files = vec![root.join("README.md")];
    files.extend(
        files_under(&root.join("docs"), ".md")
            .into_iter()
            .filter(|p| p.parent() == Some(&root.join("docs"))),
    );
    files
}

/// The broken links of the documentation of the repository at `root`, and how many files and
/// links were looked at.
fn check_documentation(root: &Path) -> (Vec<String>, usize, usize) {
    let mut checker = Checker::new(root);
    let files = documentation(root);
    let mut problems = Vec::new();
    let mut count = 0;
    for file in &files {
        if let Ok(text) = fs::read_to_string(file) {
            count += links(&text).0.len();
        }
        problems.extend(checker.check_markdown(file));
    }
    (problems, files.len(), count)
}

/// The broken `docs/...` mentions of the sources of the repository at `root`.
fn check_sources(root: &Path) -> (Vec<String>, usize) {
    let mut checker = Checker::new(root);
    let mut files = files_under(&root.join("sockwatch/src"), ".rs");
    files.extend(files_under(&root.join("xtask/src"), ".rs"));
    files.extend(files_under(&root.join("deploy"), ""));
    // This file's tests hold broken mentions on purpose.
    let this = normalize(&std::path::absolute(root.join(file!())).expect("a path"));
    files.retain(|f| std::path::absolute(f).map(|f| normalize(&f)).ok().as_ref() != Some(&this));
    let mut problems = Vec::new();
    for file in &files {
        problems.extend(checker.check_mentions(file));
    }
    (problems, files.len())
}

fn report(what: &str, problems: &[String]) -> String {
    let mut by_file: BTreeMap<&str, usize> = BTreeMap::new();
    for p in problems {
        *by_file
            .entry(p.split(':').next().unwrap_or(""))
            .or_default() += 1;
    }
    format!(
        "{} broken {what} ({}):\n  {}",
        problems.len(),
        by_file
            .iter()
            .map(|(f, n)| format!("{f}: {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        problems.join("\n  ")
    )
}

#[test]
fn readme_and_docs_links_resolve() {
    let (problems, files, links) = check_documentation(&repo_root());
    assert!(
        files >= 2 && links > 0,
        "found {files} documentation files and {links} links under {}: is this the repository?",
        repo_root().display()
    );
    assert!(
        problems.is_empty(),
        "{}",
        report("link(s) in README.md and docs/*.md", &problems)
    );
}

#[test]
fn sources_mention_existing_docs() {
    let (problems, files) = check_sources(&repo_root());
    assert!(
        files > 0,
        "no sources found under {}",
        repo_root().display()
    );
    assert!(
        problems.is_empty(),
        "{}",
        report("docs/ mention(s) in the sources", &problems)
    );
}

#[test]
fn slug_follows_github() {
    assert_eq!(slug("Rotation and compression"), "rotation-and-compression");
    // Punctuation goes, `-` and `_` stay, each space is a `-` (so ` - ` gives `---`).
    assert_eq!(
        slug("The summary (--format json)"),
        "the-summary---format-json"
    );
    assert_eq!(slug("What's new? (v2.0, 2026)"), "whats-new-v20-2026");
    assert_eq!(slug("snake_case & kebab-case"), "snake_case--kebab-case");
    assert_eq!(slug("  Trimmed  "), "trimmed");
    assert_eq!(slug("Über café"), "über-café");
}

#[test]
fn heading_anchors_count_code_and_number_duplicates() {
    let md = "# sockwatch\n\
              ## `sockwatch top`\n\
              ### `sockwatch report FILE|DIR...`: the same summary\n\
              ## *Emphasis* and [a link](x.md)\n\
              ## Options\n\
              ## Options\n\
              ## Options-1\n\
              ## Options\n\
              ```\n# not a heading\n```\n\
              Setext heading\n--------------\n";
    assert_eq!(
        anchors(md),
        [
            "sockwatch",
            "sockwatch-top",
            "sockwatch-report-filedir-the-same-summary",
            "emphasis-and-a-link",
            "options",
            "options-1",
            // taken by the heading before, so this one is numbered on
            "options-1-1",
            "options-2",
            "setext-heading",
        ]
    );
}

#[test]
fn external_destinations_are_not_checked() {
    for dest in [
        "https://example.org/x.md",
        "http://x",
        "mailto:a@b",
        "//host/x",
    ] {
        assert!(is_external(dest), "{dest}");
    }
    for dest in ["usage.md", "usage.md#a:b", "../README.md", "#filters", ""] {
        assert!(!is_external(dest), "{dest}");
    }
}

#[test]
fn mentions_in_sources() {
    let text = "/// schema in docs/records.md#the-summary-json.\n\
                // see docs/usage.md and docs/kernels.md., not mydocs/x.md nor docs/img.png\n\
                \"docs/limits.md#missed-closes\"";
    let found: Vec<_> = doc_mentions(text)
        .into_iter()
        .map(|m| (m.line, m.name, m.anchor))
        .collect();
    assert_eq!(
        found,
        [
            (
                1,
                "records.md".to_string(),
                Some("the-summary-json".to_string())
            ),
            (2, "usage.md".to_string(), None),
            (2, "kernels.md".to_string(), None),
            (
                3,
                "limits.md".to_string(),
                Some("missed-closes".to_string())
            ),
        ]
    );
}

/// A throwaway repository under the system's temporary directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(files: &[(&str, &str)]) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "xtask-docs-links-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&dir);
        for (name, text) in files {
            let path = dir.join(name);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        }
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn broken_links_are_each_named() {
    let readme = "# Tool\n\n\
                  [ok](docs/usage.md#rotation-and-compression) [ok](docs/src/main.rs#L10-L20)\n\
                  [ok](#tool) [ok](https://example.org/nowhere.md)\n\
                  [no file](docs/gone.md) [no heading](docs/usage.md#rotation)\n\
                  ![no image](docs/shot.png)\n\
                  [undefined][nowhere]\n";
    let usage = "# Usage\n\n## Rotation and compression\n\n\
                 [ok](../README.md#tool) [same file](#usage) [bad](#nowhere)\n\
                 [up and out](../../elsewhere.md)\n";
    let repo = Scratch::new(&[
        ("README.md", readme),
        ("docs/usage.md", usage),
        ("docs/src/main.rs", "fn main() {}\n"),
        (
            "xtask/src/main.rs",
            "// docs/usage.md#rotation-and-compression docs/usage.md#rotate\n",
        ),
    ]);
    let (problems, files, _) = check_documentation(&repo.0);
    assert_eq!(files, 2);
    let expected = [
        "README.md:7: reference [nowhere] has no definition",
        "README.md:5: (docs/gone.md): docs/gone.md does not exist",
        "README.md:5: (docs/usage.md#rotation): docs/usage.md has no heading with anchor \
         #rotation (it has: #usage #rotation-and-compression)",
        "README.md:6: (docs/shot.png): docs/shot.png does not exist",
        "docs/usage.md:5: (#nowhere): docs/usage.md has no heading with anchor #nowhere \
         (it has: #usage #rotation-and-compression)",
    ];
    // The link that leaves the repository is named with its full path, which varies.
    assert_eq!(problems.len(), expected.len() + 1, "{problems:#?}");
    for e in expected {
        assert!(problems.iter().any(|p| p == e), "{e}\nnot in {problems:#?}");
    }
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("docs/usage.md:6: (../../elsewhere.md): ")
                && p.ends_with("is outside the repository")),
        "{problems:#?}"
    );
    let message = report("link(s)", &problems);
    assert!(message.starts_with("6 broken link(s) (README.md: 4, docs/usage.md: 2):\n"));

    let (problems, _) = check_sources(&repo.0);
    assert_eq!(
        problems,
        [
            "xtask/src/main.rs:1: (docs/usage.md#rotate): docs/usage.md has no heading with \
             anchor #rotate (it has: #usage #rotation-and-compression)"
        ]
    );
}
