//! Files sockwatch writes on request (`--output`). They reveal which process talks to whom, so
//! they are private to their owner (mode 0600), and a symbolic link planted at the path (say in
//! a world-writable directory, for root to write through it onto a file of the attacker's
//! choosing) is refused unless the user asks to follow it.
use std::{
    fs::{File, OpenOptions, Permissions},
    io,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

/// Permissions of the files sockwatch creates.
pub const MODE: u32 = 0o600;

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error(
        "cannot create output file {}: it is a symbolic link (pass --follow-symlinks to write \
         through it)",
        path.display()
    )]
    Symlink { path: PathBuf },
    #[error(
        "cannot create output file {}: directory {} does not exist",
        path.display(),
        dir.display()
    )]
    NoDirectory { path: PathBuf, dir: PathBuf },
    #[error(
        "cannot rotate output file {}: it is not a regular file (leave out --rotate-size and \
         --rotate-interval for a device or a pipe)",
        path.display()
    )]
    NotRotatable { path: PathBuf },
    // `err` is not a `source`: the message already includes it, and anyhow's `{:#}` would print
    // it a second time.
    #[error("cannot create output file {}: {err}", path.display())]
    Io { path: PathBuf, err: io::Error },
}

/// Creates `path`, or truncates it if it exists, for writing, with mode 0600. Unless
/// `follow_symlinks`, the last component of `path` must not be a symbolic link (O_NOFOLLOW);
/// links among the directories above it are followed as usual.
pub fn create(path: &Path, follow_symlinks: bool) -> Result<File, CreateError> {
    let mut options = OpenOptions::new();
    // The mode applies only when the file is created (and the umask may only narrow it).
    options.write(true).create(true).truncate(true).mode(MODE);
    if !follow_symlinks {
        options.custom_flags(libc::O_NOFOLLOW);
    }
    let file = options
        .open(path)
        .map_err(|err| why(path, follow_symlinks, err))?;
    let io_error = |err| CreateError::Io {
        path: path.to_path_buf(),
        err,
    };
    // An existing file keeps its mode through open(): it was truncated anyway, so make it
    // private too (fchmod, on the file opened, not on whatever the path names by now). Only
    // regular files: a device or a pipe (`--output /dev/stdout` with --follow-symlinks) is
    // left as it is.
    let meta = file.metadata().map_err(io_error)?;
    if meta.is_file() && meta.permissions().mode() & 0o7777 != MODE {
        file.set_permissions(Permissions::from_mode(MODE))
            .map_err(io_error)?;
    }
    Ok(file)
}

/// Words an open() failure: a refused symbolic link and a missing directory get their own
/// messages, anything else the system's.
fn why(path: &Path, follow_symlinks: bool, err: io::Error) -> CreateError {
    let path_buf = path.to_path_buf();
    // O_NOFOLLOW fails with ELOOP on a symbolic link; ELOOP can also mean a loop among the
    // directories, hence the lstat (only to choose the message: the open already refused).
    if !follow_symlinks
        && err.raw_os_error() == Some(libc::ELOOP)
        && path.symlink_metadata().is_ok_and(|m| m.is_symlink())
    {
        return CreateError::Symlink { path: path_buf };
    }
    if err.kind() == io::ErrorKind::NotFound {
        let dir = match path.parent() {
            Some(d) if d.as_os_str().is_empty() => Path::new("."),
            Some(d) => d,
            None => Path::new("/"),
        };
        if !dir.is_dir() && dir.symlink_metadata().is_err() {
            return CreateError::NoDirectory {
                path: path_buf,
                dir: dir.to_path_buf(),
            };
        }
    }
    CreateError::Io {
        path: path_buf,
        err,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_dir::TestDir;
    use std::{fs, io::Write as _, os::unix::fs::symlink};

    fn dir(tag: &str) -> TestDir {
        TestDir::new("output", tag)
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn new_file_is_private() {
        let d = dir("new");
        let p = d.0.join("out.jsonl");
        create(&p, false).unwrap().write_all(b"x\n").unwrap();
        assert_eq!(mode(&p), 0o600);
        assert_eq!(fs::read(&p).unwrap(), b"x\n");
    }

    #[test]
    fn existing_file_is_truncated_and_made_private() {
        let d = dir("existing");
        let p = d.0.join("out.jsonl");
        fs::write(&p, b"old content\n").unwrap();
        fs::set_permissions(&p, Permissions::from_mode(0o644)).unwrap();
        drop(create(&p, false).unwrap());
        assert_eq!(mode(&p), 0o600);
        assert!(fs::read(&p).unwrap().is_empty());
    }

    #[test]
    fn symlink_is_refused_unless_followed() {
        let d = dir("link");
        let target = d.0.join("target");
        fs::write(&target, b"keep\n").unwrap();
        let link = d.0.join("link");
        symlink(&target, &link).unwrap();
        let err = create(&link, false).unwrap_err();
        assert!(matches!(err, CreateError::Symlink { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            format!(
                "cannot create output file {}: it is a symbolic link (pass --follow-symlinks \
                 to write through it)",
                link.display()
            )
        );
        assert_eq!(fs::read(&target).unwrap(), b"keep\n");

        create(&link, true).unwrap().write_all(b"new\n").unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"new\n");
        assert_eq!(mode(&target), 0o600);
    }

    #[test]
    fn dangling_symlink_is_refused_too() {
        let d = dir("dangling");
        let link = d.0.join("link");
        symlink(d.0.join("nowhere"), &link).unwrap();
        assert!(matches!(
            create(&link, false),
            Err(CreateError::Symlink { .. })
        ));
        assert!(!d.0.join("nowhere").exists());
    }

    #[test]
    fn missing_directory_is_named() {
        let d = dir("nodir");
        let p = d.0.join("missing").join("out.jsonl");
        let err = create(&p, false).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "cannot create output file {}: directory {} does not exist",
                p.display(),
                d.0.join("missing").display()
            )
        );
    }

    #[test]
    fn other_errors_keep_the_system_message() {
        let d = dir("isdir");
        let err = create(&d.0, false).unwrap_err();
        assert!(matches!(err, CreateError::Io { .. }), "{err}");
        assert!(
            err.to_string()
                .starts_with(&format!("cannot create output file {}: ", d.0.display())),
            "{err}"
        );
    }
}
