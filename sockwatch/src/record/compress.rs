//! Compressed files: writing a compressed copy of a rotated file safely, and reading a file
//! whatever its compression (told by its first bytes, not by its name).
use std::{
    fs::{self, File},
    io::{self, BufRead, BufReader, Read, Write},
    os::unix::{ffi::OsStrExt as _, fs::OpenOptionsExt as _},
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
};

use crate::record::output;

/// Compression of rotated files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Compression {
    /// Zstandard (NAME.zst): fast, and smaller than gzip.
    Zstd,
    /// gzip (NAME.gz): readable everywhere.
    Gzip,
}

/// zstd frames start with 0xFD2FB528, little-endian.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// zstd's default level: most of the gain for little CPU.
const ZSTD_LEVEL: i32 = 3;
const CHUNK: usize = 1 << 16;

impl Compression {
    pub fn suffix(self) -> &'static str {
        match self {
            Self::Zstd => ".zst",
            Self::Gzip => ".gz",
        }
    }

    /// The compression of data starting with `head`, if any.
    pub fn sniff(head: &[u8]) -> Option<Self> {
        if head.starts_with(&ZSTD_MAGIC) {
            Some(Self::Zstd)
        } else if head.starts_with(&GZIP_MAGIC) {
            Some(Self::Gzip)
        } else {
            None
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CompressError {
    #[error("compressing {}: {err}", path.display())]
    Io { path: PathBuf, err: io::Error },
    /// Stopped on request (sockwatch is exiting); the source file is left as it was.
    #[error("compressing {} was cut short: sockwatch was exiting", path.display())]
    Cancelled { path: PathBuf },
}

/// `path` with `suffix` appended to its file name.
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// The hidden name a compressed file is written under until it is complete (`report` skips
/// hidden files, so a half-written one is never read).
fn temporary(dest: &Path) -> PathBuf {
    let mut name = std::ffi::OsString::from(".");
    name.push(dest.file_name().unwrap_or_default());
    name.push(".tmp");
    dest.with_file_name(name)
}

/// Writes `src` compressed to `src` + suffix and then deletes `src`. The compressed file is
/// written under a temporary name, synced, and only then renamed into place, so at every
/// moment one complete copy exists. Returns the compressed file's path, or `None` if `src` no
/// longer exists (deleted meanwhile as one beyond --rotate-keep). `cancel` stops it between
/// chunks, removing the partial copy.
pub fn compress_file(
    src: &Path,
    codec: Compression,
    cancel: &AtomicBool,
) -> Result<Option<PathBuf>, CompressError> {
    let dest = with_suffix(src, codec.suffix());
    let tmp = temporary(&dest);
    let io = |err| CompressError::Io {
        path: src.to_path_buf(),
        err,
    };
    // A link planted at a rotated name is not followed.
    let input = match fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(src)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    let out = output::create(&tmp, false).map_err(|e| io(io::Error::other(e.to_string())))?;
    let result = write_compressed(input, out, codec, cancel)
        .and_then(|file| file.sync_all())
        .and_then(|()| fs::rename(&tmp, &dest))
        .and_then(|()| sync_dir(&dest));
    if let Err(err) = result {
        let _ = fs::remove_file(&tmp);
        if cancel.load(Ordering::Relaxed) && err.kind() == io::ErrorKind::Interrupted {
            return Err(CompressError::Cancelled {
                path: src.to_path_buf(),
            });
        }
        return Err(io(err));
    }
    // The compressed copy is durable: the original can go.
    fs::remove_file(src).map_err(io)?;
    Ok(Some(dest))
}

/// Streams `input` through the encoder into `out`; returns the finished file. Cancelling
/// fails with `Interrupted`.
fn write_compressed(
    mut input: File,
    out: File,
    codec: Compression,
    cancel: &AtomicBool,
) -> io::Result<File> {
    fn pump(input: &mut File, enc: &mut impl Write, cancel: &AtomicBool) -> io::Result<()> {
        let mut buf = vec![0u8; CHUNK];
        loop {
            if cancel.load(Ordering::Relaxed) {
                return Err(io::Error::new(io::ErrorKind::Interrupted, "cancelled"));
            }
            let n = input.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            enc.write_all(&buf[..n])?;
        }
    }
    match codec {
        Compression::Zstd => {
            let mut enc = zstd::Encoder::new(out, ZSTD_LEVEL)?;
            pump(&mut input, &mut enc, cancel)?;
            enc.finish()
        }
        Compression::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(out, flate2::Compression::default());
            pump(&mut input, &mut enc, cancel)?;
            enc.finish()
        }
    }
}

/// Makes a rename in `path`'s directory durable.
fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

/// Reads `file`, decompressing it if its first bytes say it is compressed. Returns the reader
/// and the compression found.
pub fn reader(file: File) -> io::Result<(Box<dyn BufRead>, Option<Compression>)> {
    let mut input = BufReader::with_capacity(CHUNK, file);
    let codec = Compression::sniff(input.fill_buf()?);
    let reader: Box<dyn BufRead> = match codec {
        Some(Compression::Zstd) => Box::new(BufReader::with_capacity(
            CHUNK,
            zstd::Decoder::with_buffer(input)?,
        )),
        // Multi: `cat a.gz b.gz` is a valid gzip file too.
        Some(Compression::Gzip) => Box::new(BufReader::with_capacity(
            CHUNK,
            flate2::bufread::MultiGzDecoder::new(input),
        )),
        None => Box::new(input),
    };
    Ok((reader, codec))
}

/// Whether the file name marks a compressed file (for naming only; reading sniffs the bytes).
pub fn strip_suffix(name: &[u8]) -> &[u8] {
    for codec in [Compression::Zstd, Compression::Gzip] {
        if let Some(rest) = name.strip_suffix(codec.suffix().as_bytes()) {
            return rest;
        }
    }
    name
}

/// Whether `path` names a compressed file by its suffix.
pub fn has_suffix(path: &Path) -> bool {
    let name = path.file_name().unwrap_or_default().as_bytes();
    strip_suffix(name).len() != name.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_dir::TestDir;

    fn dir(tag: &str) -> TestDir {
        TestDir::new("compress", tag)
    }

    fn read_all(path: &Path) -> (Vec<u8>, Option<Compression>) {
        let (mut r, codec) = reader(File::open(path).unwrap()).unwrap();
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        (out, codec)
    }

    #[test]
    fn round_trip_replaces_the_file() {
        let d = dir("round");
        let content: Vec<u8> = (0..20_000)
            .flat_map(|i| format!("{{\"n\":{i}}}\n").into_bytes())
            .collect();
        for codec in [Compression::Zstd, Compression::Gzip] {
            let src = d.0.join("a.20261121T101500Z.jsonl");
            fs::write(&src, &content).unwrap();
            let dest = compress_file(&src, codec, &AtomicBool::new(false))
                .unwrap()
                .unwrap();
            assert_eq!(dest, with_suffix(&src, codec.suffix()));
            assert!(!src.exists());
            assert!(fs::metadata(&dest).unwrap().len() < content.len() as u64 / 4);
            // Told by the bytes, even under a misleading name.
            let renamed = d.0.join("misnamed.jsonl");
            fs::rename(&dest, &renamed).unwrap();
            assert_eq!(read_all(&renamed), (content.clone(), Some(codec)));
            // Nothing else is left in the directory.
            assert_eq!(fs::read_dir(&d.0).unwrap().count(), 1);
            fs::remove_file(&renamed).unwrap();
        }
        let plain = d.0.join("plain");
        fs::write(&plain, b"x\n").unwrap();
        assert_eq!(read_all(&plain), (b"x\n".to_vec(), None));
    }

    #[test]
    fn a_missing_source_is_not_an_error_and_cancel_keeps_the_source() {
        let d = dir("cancel");
        let src = d.0.join("gone.jsonl");
        assert!(
            compress_file(&src, Compression::Zstd, &AtomicBool::new(false))
                .unwrap()
                .is_none()
        );
        fs::write(&src, b"keep\n").unwrap();
        let e = compress_file(&src, Compression::Gzip, &AtomicBool::new(true)).unwrap_err();
        assert!(matches!(e, CompressError::Cancelled { .. }), "{e}");
        assert_eq!(fs::read(&src).unwrap(), b"keep\n");
        assert_eq!(
            fs::read_dir(&d.0).unwrap().count(),
            1,
            "no partial copy left"
        );
    }

    #[test]
    fn suffixes() {
        assert_eq!(strip_suffix(b"a.jsonl.zst"), b"a.jsonl");
        assert_eq!(strip_suffix(b"a.jsonl.gz"), b"a.jsonl");
        assert_eq!(strip_suffix(b"a.jsonl"), b"a.jsonl");
        assert!(has_suffix(Path::new("/x/a.gz")));
        assert!(!has_suffix(Path::new("/x/a.jsonl")));
    }
}
