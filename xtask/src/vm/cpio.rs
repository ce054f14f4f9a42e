//! A writer for the "newc" (SVR4, magic `070701`) cpio format, the one the kernel unpacks as an
//! initramfs. Written here because the host has no `cpio` binary and the format is small: a
//! 110-byte ASCII header per entry, the name, then the data, each padded to 4 bytes.
//!
//! The kernel does not create missing parent directories while unpacking, so the writer emits
//! every parent directory of a path before the path itself (once).
use std::{collections::BTreeSet, io::Write};

use anyhow::{Context as _, bail};

const MAGIC: &str = "070701";
const HEADER_LEN: usize = 110;
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

pub struct Newc<W: Write> {
    out: W,
    next_ino: u32,
    /// Directories already in the archive (archive paths, no leading '/').
    dirs: BTreeSet<String>,
    written: u64,
}

impl<W: Write> Newc<W> {
    pub fn new(out: W) -> Self {
        Self {
            out,
            next_ino: 1,
            dirs: BTreeSet::new(),
            written: 0,
        }
    }

    /// A directory (and its parents).
    pub fn dir(&mut self, path: &str) -> anyhow::Result<()> {
        let path = normalize(path)?;
        self.parents(&path)?;
        self.mkdir(&path, 0o755)
    }

    /// A regular file (and its parent directories).
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> anyhow::Result<()> {
        let path = normalize(path)?;
        self.parents(&path)?;
        self.entry(&path, S_IFREG | (mode & 0o7777), (0, 0), data)
    }

    /// A symbolic link to `target` (its data is the target text).
    pub fn symlink(&mut self, path: &str, target: &str) -> anyhow::Result<()> {
        let path = normalize(path)?;
        self.parents(&path)?;
        self.entry(&path, S_IFLNK | 0o777, (0, 0), target.as_bytes())
    }

    /// A character device node: lets /dev/console exist before anything is mounted, which
    /// the kernel needs to give init its standard streams.
    pub fn char_dev(
        &mut self,
        path: &str,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> anyhow::Result<()> {
        let path = normalize(path)?;
        self.parents(&path)?;
        self.entry(&path, S_IFCHR | (mode & 0o7777), (major, minor), &[])
    }

    /// Writes the trailer and returns the output and the bytes written.
    pub fn finish(mut self) -> anyhow::Result<(W, u64)> {
        self.raw_entry("TRAILER!!!", 0, 0, 1, (0, 0), &[])?;
        self.out.flush().context("cannot flush the cpio archive")?;
        Ok((self.out, self.written))
    }

    fn parents(&mut self, path: &str) -> anyhow::Result<()> {
        let mut end = 0;
        while let Some(i) = path[end..].find('/') {
            end += i;
            let parent = path[..end].to_string();
            self.mkdir(&parent, 0o755)?;
            end += 1;
        }
        Ok(())
    }

    fn mkdir(&mut self, path: &str, mode: u32) -> anyhow::Result<()> {
        if self.dirs.contains(path) {
            return Ok(());
        }
        self.dirs.insert(path.to_string());
        let ino = self.ino();
        self.raw_entry(path, ino, S_IFDIR | mode, 2, (0, 0), &[])
    }

    fn entry(
        &mut self,
        path: &str,
        mode: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> anyhow::Result<()> {
        if self.dirs.contains(path) {
            bail!("cpio: {path} is already a directory");
        }
        let ino = self.ino();
        self.raw_entry(path, ino, mode, 1, rdev, data)
    }

    fn ino(&mut self) -> u32 {
        let ino = self.next_ino;
        self.next_ino += 1;
        ino
    }

    fn raw_entry(
        &mut self,
        name: &str,
        ino: u32,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> anyhow::Result<()> {
        let size = u32::try_from(data.len()).context("cpio: file over 4 GiB")?;
        let name_size = u32::try_from(name.len() + 1).context("cpio: name too long")?;
        // Fields: ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor
        // namesize check. mtime 0 keeps the archive reproducible.
        let fields = [
            ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev.0, rdev.1, name_size, 0,
        ];
        let mut header = String::with_capacity(HEADER_LEN);
        header.push_str(MAGIC);
        for f in fields {
            header.push_str(&format!("{f:08x}"));
        }
        debug_assert_eq!(header.len(), HEADER_LEN);
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        self.put(data)?;
        self.pad()
    }

    fn put(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.out
            .write_all(bytes)
            .context("cannot write the cpio archive")?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> anyhow::Result<()> {
        let n = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0; 3][..n])
    }
}

/// Archive paths are relative ("bin/sh"); accepts "/bin/sh" too.
fn normalize(path: &str) -> anyhow::Result<String> {
    let p = path.trim_start_matches('/').trim_end_matches('/');
    if p.is_empty() || p.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        bail!("cpio: bad archive path {path:?}");
    }
    Ok(p.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One parsed entry: (name, mode, rdev, data).
    type Entry = (String, u32, (u32, u32), Vec<u8>);

    /// A minimal newc reader, independent of the writer's code, to check the round trip.
    fn read_all(mut buf: &[u8]) -> Vec<Entry> {
        let mut total = 0usize;
        let mut entries = Vec::new();
        loop {
            assert_eq!(&buf[..6], b"070701", "magic at offset {total}");
            let field = |i: usize| {
                let s = std::str::from_utf8(&buf[6 + i * 8..14 + i * 8]).unwrap();
                u32::from_str_radix(s, 16).unwrap()
            };
            let (mode, size, rmaj, rmin, namesize) = (
                field(1),
                field(6) as usize,
                field(9),
                field(10),
                field(11) as usize,
            );
            let name = std::str::from_utf8(&buf[110..110 + namesize - 1])
                .unwrap()
                .to_string();
            assert_eq!(buf[110 + namesize - 1], 0, "name is NUL-terminated");
            let data_start = (110 + namesize).next_multiple_of(4);
            let data = buf[data_start..data_start + size].to_vec();
            let next = (data_start + size).next_multiple_of(4);
            total += next;
            buf = &buf[next..];
            if name == "TRAILER!!!" {
                assert!(buf.is_empty(), "nothing after the trailer");
                assert_eq!(total % 4, 0);
                return entries;
            }
            entries.push((name, mode, (rmaj, rmin), data));
        }
    }

    #[test]
    fn round_trip() {
        let mut w = Newc::new(Vec::new());
        w.file("/usr/bin/tool", 0o755, b"hello").unwrap();
        w.symlink("bin/sh", "busybox").unwrap();
        w.dir("usr").unwrap(); // already there: not repeated
        w.char_dev("dev/console", 0o600, 5, 1).unwrap();
        w.file("etc/empty", 0o644, b"").unwrap();
        let (bytes, n) = w.finish().unwrap();
        assert_eq!(n as usize, bytes.len());
        let entries = read_all(&bytes);
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "usr",
                "usr/bin",
                "usr/bin/tool",
                "bin",
                "bin/sh",
                "dev",
                "dev/console",
                "etc",
                "etc/empty"
            ]
        );
        assert_eq!(entries[0].1, 0o040_755);
        assert_eq!(entries[2].1, 0o100_755);
        assert_eq!(entries[2].3, b"hello");
        assert_eq!(entries[4].1, 0o120_777);
        assert_eq!(entries[4].3, b"busybox");
        assert_eq!(entries[6].1, 0o020_600);
        assert_eq!(entries[6].2, (5, 1));
        assert!(entries[8].3.is_empty());
    }

    #[test]
    fn exact_bytes_of_one_file() {
        let mut w = Newc::new(Vec::new());
        w.file("a", 0o644, b"xyz").unwrap();
        let (bytes, _) = w.finish().unwrap();
        let mut want = String::new();
        want.push_str("070701");
        // ino 1, mode 0100644, uid, gid, nlink 1, mtime, size 3, dev, dev, rdev, rdev, namesize 2
        for f in [1u32, 0o100_644, 0, 0, 1, 0, 3, 0, 0, 0, 0, 2, 0] {
            want.push_str(&format!("{f:08X}").to_lowercase());
        }
        let mut want = want.into_bytes();
        want.extend_from_slice(b"a\0"); // 112 bytes: already aligned
        want.extend_from_slice(b"xyz\0"); // data + 1 byte of padding
        want.extend_from_slice(b"070701");
        for f in [0u32, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 11, 0] {
            want.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        want.extend_from_slice(b"TRAILER!!!\0\0\0\0"); // 110 + 11 = 121, padded to 124
        assert_eq!(bytes, want);
    }

    #[test]
    fn rejects_bad_paths() {
        let mut w = Newc::new(Vec::new());
        assert!(w.file("a/../b", 0o644, b"").is_err());
        assert!(w.file("", 0o644, b"").is_err());
        w.dir("d").unwrap();
        assert!(w.file("d", 0o644, b"").is_err());
    }
}
