//! Names of rotated files: the live file's name with the UTC time of the rotation before its
//! extension (`conns.jsonl` -> `conns.20261121T101500Z.jsonl`), a counter after the time when
//! two rotations fall in the same second (`conns.20261121T101500Z.1.jsonl`), and `.zst` or
//! `.gz` once compressed.
use std::{
    ffi::OsStr,
    fs, io,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use time::{OffsetDateTime, format_description::BorrowedFormatItem, macros::format_description};

use crate::record::compress::{self, Compression};

const STAMP: &[BorrowedFormatItem<'static>] =
    format_description!("[year][month][day]T[hour][minute][second]Z");
/// `20261121T101500Z`.
const STAMP_LEN: usize = 16;

/// Where a rotated file sorts among the others: its time, then its counter.
pub type Age = ([u8; STAMP_LEN], u32);

/// The rotated names of one live file.
#[derive(Debug, Clone)]
pub struct Naming {
    dir: PathBuf,
    /// The live file's name up to its extension (`conns`), and the extension with its dot
    /// (`.jsonl`, or nothing).
    stem: Vec<u8>,
    ext: Vec<u8>,
}

/// The UTC second of `unix_ns` as used in names.
pub fn stamp(unix_ns: i128) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(unix_ns)
        .ok()
        .and_then(|t| t.format(STAMP).ok())
        .unwrap_or_else(|| "19700101T000000Z".to_string())
}

fn is_stamp(b: &[u8]) -> bool {
    b.len() == STAMP_LEN
        && b[8] == b'T'
        && b[15] == b'Z'
        && b[..8].iter().chain(&b[9..15]).all(u8::is_ascii_digit)
}

impl Naming {
    pub fn new(live: &Path) -> Self {
        let dir = match live.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let stem = live.file_stem().unwrap_or_default().as_bytes().to_vec();
        let ext = match live.extension() {
            Some(e) => [b".", e.as_bytes()].concat(),
            None => Vec::new(),
        };
        Self { dir, stem, ext }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The name of the `n`th file rotated in the second `stamp` (0 for the first).
    pub fn name(&self, stamp: &str, n: u32) -> PathBuf {
        let mut name = self.stem.clone();
        name.push(b'.');
        name.extend_from_slice(stamp.as_bytes());
        if n > 0 {
            name.extend_from_slice(format!(".{n}").as_bytes());
        }
        name.extend_from_slice(&self.ext);
        self.dir.join(OsStr::from_bytes(&name))
    }

    /// The age of a rotated file of this live file (compressed or not), or `None` for any
    /// other name.
    pub fn parse(&self, file_name: &[u8]) -> Option<Age> {
        let rest = compress::strip_suffix(file_name)
            .strip_prefix(self.stem.as_slice())?
            .strip_prefix(b".")?
            .strip_suffix(self.ext.as_slice())?;
        let (stamp, n) = match rest.get(STAMP_LEN) {
            None => (rest, 0),
            Some(b'.') => {
                let digits = &rest[STAMP_LEN + 1..];
                // Canonical counters only (`1`, not `01`), so one file has one age.
                if digits.first() == Some(&b'0') {
                    return None;
                }
                let n = std::str::from_utf8(digits).ok()?.parse().ok()?;
                (&rest[..STAMP_LEN], n)
            }
            Some(_) => return None,
        };
        if !is_stamp(stamp) {
            return None;
        }
        Some((stamp.try_into().ok()?, n))
    }

    /// A name for a file rotated at `unix_ns` that no file has yet, compressed or not.
    pub fn free(&self, unix_ns: i128) -> PathBuf {
        let stamp = stamp(unix_ns);
        let taken = |p: &Path| {
            std::iter::once(p.to_path_buf())
                .chain(
                    [Compression::Zstd, Compression::Gzip]
                        .map(|c| compress::with_suffix(p, c.suffix())),
                )
                .any(|q| q.symlink_metadata().is_ok())
        };
        (0u32..)
            .map(|n| self.name(&stamp, n))
            .find(|p| !taken(p))
            .unwrap_or_else(|| self.name(&stamp, u32::MAX))
    }

    /// Rotated files of this live file in the directory, oldest first (a file and its
    /// compressed copy, both present for an instant during compression, count as one).
    pub fn rotated(&self) -> io::Result<Vec<(Age, Vec<PathBuf>)>> {
        let mut found: Vec<(Age, PathBuf)> = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            if let Some(age) = self.parse(entry.file_name().as_bytes()) {
                found.push((age, entry.path()));
            }
        }
        found.sort();
        let mut grouped: Vec<(Age, Vec<PathBuf>)> = Vec::new();
        for (age, path) in found {
            match grouped.last_mut() {
                Some((a, paths)) if *a == age => paths.push(path),
                _ => grouped.push((age, vec![path])),
            }
        }
        Ok(grouped)
    }

    /// Deletes the oldest rotated files beyond the newest `keep`; returns what it deleted.
    pub fn prune(&self, keep: usize) -> io::Result<Vec<PathBuf>> {
        let rotated = self.rotated()?;
        let excess = rotated.len().saturating_sub(keep);
        let mut deleted = Vec::new();
        for path in rotated.into_iter().take(excess).flat_map(|(_, p)| p) {
            match fs::remove_file(&path) {
                Ok(()) => deleted.push(path),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("deleting {}: {e}", path.display()),
                    ));
                }
            }
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_dir::TestDir;

    // 2026-11-21T10:15:00Z
    const T: i128 = 1_795_256_100_000_000_000;

    #[test]
    fn names_carry_the_utc_second_before_the_extension() {
        assert_eq!(stamp(T), "20261121T101500Z");
        assert_eq!(stamp(T + 999_999_999), "20261121T101500Z");
        let n = Naming::new(Path::new("/var/log/sw/conns.jsonl"));
        assert_eq!(
            n.name("20261121T101500Z", 0),
            Path::new("/var/log/sw/conns.20261121T101500Z.jsonl")
        );
        assert_eq!(
            n.name("20261121T101500Z", 2),
            Path::new("/var/log/sw/conns.20261121T101500Z.2.jsonl")
        );
        let bare = Naming::new(Path::new("conns"));
        assert_eq!(
            bare.name("20261121T101500Z", 0),
            Path::new("./conns.20261121T101500Z")
        );
        let dotted = Naming::new(Path::new("a.b.csv"));
        assert_eq!(
            dotted.name("20261121T101500Z", 1),
            Path::new("./a.b.20261121T101500Z.1.csv")
        );
    }

    #[test]
    fn parse_accepts_only_its_own_rotated_names() {
        let n = Naming::new(Path::new("/d/conns.jsonl"));
        let s = *b"20261121T101500Z";
        assert_eq!(n.parse(b"conns.20261121T101500Z.jsonl"), Some((s, 0)));
        assert_eq!(n.parse(b"conns.20261121T101500Z.3.jsonl"), Some((s, 3)));
        assert_eq!(n.parse(b"conns.20261121T101500Z.jsonl.zst"), Some((s, 0)));
        assert_eq!(
            n.parse(b"conns.20261121T101500Z.12.jsonl.gz"),
            Some((s, 12))
        );
        for other in [
            &b"conns.jsonl"[..],
            b"other.20261121T101500Z.jsonl",
            b"conns.20261121T101500Z.csv",
            b"conns.2026112XT101500Z.jsonl",
            b"conns.20261121T101500Z.01.jsonl",
            b"conns.20261121T101500Z.x.jsonl",
            b".conns.20261121T101500Z.jsonl.zst.tmp",
            b"conns.20261121T101500Z.jsonl.zst.tmp",
        ] {
            assert_eq!(n.parse(other), None, "{}", String::from_utf8_lossy(other));
        }
        let bare = Naming::new(Path::new("/d/conns"));
        assert_eq!(bare.parse(b"conns.20261121T101500Z"), Some((s, 0)));
        assert_eq!(bare.parse(b"conns.20261121T101500Z.1"), Some((s, 1)));
    }

    fn dir(tag: &str) -> TestDir {
        TestDir::new("names", tag)
    }

    #[test]
    fn free_names_count_up_within_a_second_and_see_compressed_copies() {
        let d = dir("free");
        let n = Naming::new(&d.0.join("conns.jsonl"));
        let first = n.free(T);
        assert_eq!(first, d.0.join("conns.20261121T101500Z.jsonl"));
        fs::write(&first, b"").unwrap();
        let second = n.free(T + 5);
        assert_eq!(second, d.0.join("conns.20261121T101500Z.1.jsonl"));
        // Compressed and gone: the name is still taken.
        fs::write(d.0.join("conns.20261121T101500Z.1.jsonl.zst"), b"").unwrap();
        assert_eq!(n.free(T), d.0.join("conns.20261121T101500Z.2.jsonl"));
        assert_eq!(
            n.free(T + 1_000_000_000),
            d.0.join("conns.20261121T101501Z.jsonl")
        );
    }

    #[test]
    fn prune_keeps_the_newest_n() {
        let d = dir("prune");
        let n = Naming::new(&d.0.join("conns.jsonl"));
        let names = [
            "conns.20261121T101500Z.jsonl.zst",
            "conns.20261121T101500Z.1.jsonl.gz",
            // Mid-compression: both copies, one file.
            "conns.20261121T101500Z.2.jsonl",
            "conns.20261121T101500Z.2.jsonl.zst",
            "conns.20261121T101459Z.jsonl",
            "conns.20261121T101501Z.jsonl",
            // Not rotated files of conns.jsonl: never touched.
            "conns.jsonl",
            "other.20261121T101400Z.jsonl",
            ".conns.20261121T101502Z.jsonl.zst.tmp",
        ];
        for name in names {
            fs::write(d.0.join(name), b"").unwrap();
        }
        let ages: Vec<Age> = n.rotated().unwrap().into_iter().map(|(a, _)| a).collect();
        assert_eq!(
            ages,
            vec![
                (*b"20261121T101459Z", 0),
                (*b"20261121T101500Z", 0),
                (*b"20261121T101500Z", 1),
                (*b"20261121T101500Z", 2),
                (*b"20261121T101501Z", 0),
            ]
        );
        let mut deleted = n.prune(2).unwrap();
        deleted.sort();
        assert_eq!(
            deleted,
            [
                "conns.20261121T101459Z.jsonl",
                "conns.20261121T101500Z.1.jsonl.gz",
                "conns.20261121T101500Z.jsonl.zst",
            ]
            .map(|f| d.0.join(f))
        );
        let mut left: Vec<String> = fs::read_dir(&d.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            vec![
                ".conns.20261121T101502Z.jsonl.zst.tmp",
                "conns.20261121T101500Z.2.jsonl",
                "conns.20261121T101500Z.2.jsonl.zst",
                "conns.20261121T101501Z.jsonl",
                "conns.jsonl",
                "other.20261121T101400Z.jsonl",
            ]
        );
        assert!(n.prune(2).unwrap().is_empty());
    }
}
