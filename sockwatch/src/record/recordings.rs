//! The files `report` reads: the files and directories named, plain or compressed (told by
//! their first bytes), put in time order by their first record.
use std::{
    fs::{self, File},
    io::{self, BufRead, Read as _},
    path::{Path, PathBuf},
};

use crate::{
    feed::{self, FileStart},
    record::compress::{self, Compression},
};

/// Longest line accepted, newline excluded. sockwatch's own records are a few hundred bytes;
/// a longer line is not one of them, and is skipped without being held in memory.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// One file to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recording {
    pub path: PathBuf,
    /// `None`: the first line is not a record (empty, or damaged): read last.
    pub start: Option<FileStart>,
}

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("cannot open {name}: {err}")]
    Open { name: String, err: io::Error },
    #[error(
        "{name} is CSV (from `trace --format csv`): report reads JSON Lines only (record with \
         `--format jsonl`)"
    )]
    Csv { name: String },
    #[error(
        "{name} is text (from `trace` without --format): report reads JSON Lines only (record \
         with `--format jsonl`)"
    )]
    Text { name: String },
    #[error("{name} holds no sockwatch JSON Lines file")]
    NothingInDirectory { name: String },
}

/// What a file holds, judged by its first line.
#[derive(Debug, PartialEq)]
enum Content {
    Jsonl(Option<FileStart>),
    Csv,
    Text,
    Empty,
    /// Anything else: for a named file, `report` reads it and names each bad line.
    Other,
}

/// `path` for messages, on one line: control characters (a newline in a name) are escaped.
pub fn display_name(path: &Path) -> String {
    one_line(&path.display().to_string())
}

/// Writes `s` on one line: control characters (a newline in a path or a record) are escaped.
pub fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Opens `path` for reading, decompressing it if its first bytes say it is compressed.
pub fn open(path: &Path) -> io::Result<(Box<dyn BufRead>, Option<Compression>)> {
    compress::reader(File::open(path)?)
}

fn sniff(path: &Path) -> io::Result<Content> {
    let (input, compressed) = open(path)?;
    let mut input = input.take(MAX_LINE_BYTES as u64 + 1);
    let mut line = Vec::new();
    loop {
        line.clear();
        match input.read_until(b'\n', &mut line) {
            Ok(0) => return Ok(Content::Empty),
            Ok(_) => {}
            // Compressed data cut short (a crash while compressing it by hand, a copy cut
            // short): reading it names the damage, and uses what comes before it.
            Err(_) if compressed.is_some() => return Ok(Content::Jsonl(None)),
            Err(e) => return Err(e),
        }
        if !line.iter().all(u8::is_ascii_whitespace) {
            break;
        }
    }
    let text = String::from_utf8_lossy(&line);
    let text = text.trim_end();
    Ok(if text.starts_with('{') {
        Content::Jsonl(feed::file_start(text))
    } else if text.starts_with(&crate::record::sink::CSV_COLUMNS[..2].join(",")) {
        Content::Csv
    } else if text.starts_with("TIME(UTC)") {
        Content::Text
    } else {
        Content::Other
    })
}

/// The files to read for `paths`, in time order: named files as they are, and from each
/// directory its sockwatch JSON Lines files (not recursively; hidden files, such as a
/// compression in progress, are left out). `note` hears of files of a directory left out for
/// another reason than not being sockwatch's.
pub fn collect(
    paths: &[PathBuf],
    mut note: impl FnMut(String),
) -> Result<Vec<Recording>, InputError> {
    let mut out = Vec::new();
    for path in paths {
        let name = display_name(path);
        let open_error = |err| InputError::Open {
            name: name.clone(),
            err,
        };
        if !fs::metadata(path).map_err(open_error)?.is_dir() {
            let start = match sniff(path).map_err(open_error)? {
                Content::Csv => return Err(InputError::Csv { name }),
                Content::Text => return Err(InputError::Text { name }),
                Content::Jsonl(start) => start,
                Content::Empty | Content::Other => None,
            };
            out.push(Recording {
                path: path.clone(),
                start,
            });
            continue;
        }
        let before = out.len();
        for entry in fs::read_dir(path).map_err(open_error)? {
            let entry = entry.map_err(open_error)?;
            let file = entry.path();
            if entry.file_name().as_encoded_bytes().starts_with(b".")
                || !fs::metadata(&file).is_ok_and(|m| m.is_file())
            {
                continue;
            }
            let file_name = display_name(&file);
            match sniff(&file) {
                Ok(Content::Jsonl(start)) => out.push(Recording { path: file, start }),
                Ok(Content::Csv) => note(format!(
                    "{file_name}: skipped: CSV (report reads JSON Lines only)"
                )),
                Ok(Content::Text) => note(format!(
                    "{file_name}: skipped: text (report reads JSON Lines only)"
                )),
                Ok(Content::Empty | Content::Other) => {}
                Err(e) => note(format!("{file_name}: skipped: cannot read it: {e}")),
            }
        }
        if out.len() == before {
            return Err(InputError::NothingInDirectory { name });
        }
    }
    // A file named twice (or named and in a directory named) is read once.
    out.sort_by(|a, b| {
        (a.start.is_none(), a.start, &a.path).cmp(&(b.start.is_none(), b.start, &b.path))
    });
    out.dedup_by(|a, b| a.path == b.path);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_dir::TestDir;
    use std::io::Write as _;

    fn dir(tag: &str) -> TestDir {
        TestDir::new("recordings", tag)
    }

    fn header(secs: u64, part: u64) -> String {
        format!(
            "{{\"time\":\"2026-11-21T10:00:{secs:02}Z\",\"event\":\"header\",\"schema\":1,\
             \"part\":{part}}}\n"
        )
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn a_directory_is_read_in_time_order_whatever_the_names() {
        let d = dir("order");
        // Names sort the other way round from the times.
        let a = d.file("a.jsonl", header(30, 3).as_bytes());
        let b = d.file(
            "b.jsonl.zst",
            &zstd::encode_all(header(20, 2).as_bytes(), 1).unwrap(),
        );
        // Compressed, under a name that does not say so.
        let c = d.file("c.jsonl", &gzip(header(10, 1).as_bytes()));
        // Same second: the part decides.
        let e = d.file("e.jsonl", header(20, 1).as_bytes());
        // A file from before headers: its first record's time.
        let f = d.file(
            "f.jsonl",
            b"\n{\"time\":\"2026-11-21T10:00:15Z\",\"event\":\"accept\"}\n",
        );
        // Not read: hidden, empty, not sockwatch's, CSV, text, a subdirectory.
        d.file(".a.jsonl.zst.tmp", header(0, 1).as_bytes());
        d.file("empty.jsonl", b"");
        d.file("ready", b"12345\n");
        d.file("x.csv", b"time,event,family\n");
        d.file("x.txt", b"TIME(UTC)        EVENT\n");
        fs::create_dir(d.0.join("sub")).unwrap();
        d.file("sub/z.jsonl", header(0, 1).as_bytes());
        let mut notes = Vec::new();
        let got = collect(std::slice::from_ref(&d.0), |n| notes.push(n)).unwrap();
        let paths: Vec<&PathBuf> = got.iter().map(|r| &r.path).collect();
        assert_eq!(paths, vec![&c, &f, &e, &b, &a]);
        notes.sort();
        assert_eq!(
            notes,
            vec![
                format!(
                    "{}: skipped: CSV (report reads JSON Lines only)",
                    d.0.join("x.csv").display()
                ),
                format!(
                    "{}: skipped: text (report reads JSON Lines only)",
                    d.0.join("x.txt").display()
                ),
            ]
        );
        // A file named and in the directory named is read once.
        let both = collect(&[a.clone(), d.0.clone()], |_| {}).unwrap();
        assert_eq!(both.len(), 5);
    }

    #[test]
    fn named_files_say_what_they_are() {
        let d = dir("named");
        let csv = d.file("x.csv", &gzip(b"time,event,family,local_addr\n"));
        let e = collect(&[csv], |_| {}).unwrap_err();
        assert!(matches!(e, InputError::Csv { .. }), "{e}");
        assert!(
            e.to_string().contains("report reads JSON Lines only"),
            "{e}"
        );
        let text = d.file("x.txt", b"TIME(UTC)        EVENT\n");
        assert!(matches!(
            collect(&[text], |_| {}),
            Err(InputError::Text { .. })
        ));
        // Anything else named is read, to name its bad lines; it comes last.
        let junk = d.file("junk", b"\x00\x01binary\n");
        let good = d.file("good.jsonl", header(1, 1).as_bytes());
        let got = collect(&[junk.clone(), good.clone()], |_| {}).unwrap();
        assert_eq!(got[0].path, good);
        assert_eq!(
            got[1],
            Recording {
                path: junk,
                start: None
            }
        );
        let empty = dir("emptydir");
        empty.file("ready", b"1\n");
        let e = collect(std::slice::from_ref(&empty.0), |_| {}).unwrap_err();
        assert!(
            e.to_string()
                .ends_with("holds no sockwatch JSON Lines file"),
            "{e}"
        );
        let e = collect(&[d.0.join("missing")], |_| {}).unwrap_err();
        assert!(e.to_string().starts_with("cannot open "), "{e}");
    }
}
