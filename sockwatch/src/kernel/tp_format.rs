//! Field offsets of classic tracepoint records, read from tracefs `format` files.
use std::{fs, path::Path};

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error(
        "syscall tracepoint {event} not found (no {path}): the kernel needs CONFIG_FTRACE_SYSCALLS=y for syscall tracepoints, or --tracefs PATH is not where tracefs is mounted"
    )]
    Absent { event: String, path: String },
    #[error(
        "cannot read tracepoint {event}: {reason} (the kernel needs CONFIG_FTRACE_SYSCALLS for syscall tracepoints)"
    )]
    Unreadable { event: String, reason: String },
    #[error("tracepoint {event} has no field {field}")]
    NoField { event: String, field: String },
    #[error(
        "tracepoints {a} and {b} disagree on where field {field} is; sockwatch attaches one program to both"
    )]
    Mismatch { a: String, b: String, field: String },
}

/// Byte offset of `field` in a format file's text.
pub fn field_offset_in(text: &str, field: &str) -> Option<u32> {
    text.lines().find_map(|line| {
        let line = line.trim();
        let decl = line.strip_prefix("field:")?.split(';').next()?;
        // The name is the declaration's last word, without an array suffix.
        let name = decl.split_whitespace().last()?.split('[').next()?;
        if name != field {
            return None;
        }
        line.split(';')
            .find_map(|part| part.trim().strip_prefix("offset:"))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// Offset of `field` in tracepoint `category/event` under the tracefs root.
pub fn field_offset(
    tracefs: &Path,
    category: &str,
    event: &str,
    field: &str,
) -> Result<u32, FormatError> {
    let name = format!("{category}:{event}");
    let path = tracefs
        .join("events")
        .join(category)
        .join(event)
        .join("format");
    let text = fs::read_to_string(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            FormatError::Absent {
                event: name.clone(),
                path: path.display().to_string(),
            }
        } else {
            FormatError::Unreadable {
                event: name.clone(),
                reason: e.to_string(),
            }
        }
    })?;
    field_offset_in(&text, field).ok_or_else(|| FormatError::NoField {
        event: name,
        field: field.to_string(),
    })
}

/// Offset of `field`, required to be the same in every listed syscall tracepoint.
pub fn common_offset(tracefs: &Path, events: &[&str], field: &str) -> Result<u32, FormatError> {
    let mut found: Option<(u32, &str)> = None;
    for event in events {
        let off = field_offset(tracefs, "syscalls", event, field)?;
        match found {
            Some((o, first)) if o != off => {
                return Err(FormatError::Mismatch {
                    a: format!("syscalls:{first}"),
                    b: format!("syscalls:{event}"),
                    field: field.to_string(),
                });
            }
            _ => found = Some((off, event)),
        }
    }
    found.map(|(o, _)| o).ok_or_else(|| FormatError::NoField {
        event: "(none)".into(),
        field: field.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENTER_CONNECT: &str = "name: sys_enter_connect
ID: 1234
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;
\tfield:int fd;\toffset:16;\tsize:8;\tsigned:0;
\tfield:struct sockaddr * uservaddr;\toffset:24;\tsize:8;\tsigned:0;
\tfield:int addrlen;\toffset:32;\tsize:8;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:40;\tsize:4;\tsigned:0;

print fmt: \"fd: 0x%08lx\", ((unsigned long)(REC->fd))
";

    #[test]
    fn finds_fields_by_exact_name() {
        assert_eq!(field_offset_in(ENTER_CONNECT, "fd"), Some(16));
        assert_eq!(field_offset_in(ENTER_CONNECT, "uservaddr"), Some(24));
        assert_eq!(field_offset_in(ENTER_CONNECT, "addrlen"), Some(32));
        assert_eq!(field_offset_in(ENTER_CONNECT, "saddr"), Some(40));
        assert_eq!(field_offset_in(ENTER_CONNECT, "common_pid"), Some(4));
        assert_eq!(field_offset_in(ENTER_CONNECT, "addr"), None);
        assert_eq!(field_offset_in("", "fd"), None);
        assert_eq!(field_offset_in("field:int fd;\toffset:x;", "fd"), None);
    }

    #[test]
    fn missing_event_is_named() {
        let e = field_offset(
            Path::new("/nonexistent"),
            "syscalls",
            "sys_enter_nope",
            "fd",
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "syscall tracepoint syscalls:sys_enter_nope not found (no /nonexistent/events/syscalls/sys_enter_nope/format): the kernel needs CONFIG_FTRACE_SYSCALLS=y for syscall tracepoints, or --tracefs PATH is not where tracefs is mounted"
        );
        // A directory where the file should be: not absent, unreadable.
        let dir = std::env::temp_dir().join(format!("sockwatch-fmtdir-{}", std::process::id()));
        fs::create_dir_all(dir.join("events/syscalls/x/format")).unwrap();
        let e = field_offset(&dir, "syscalls", "x", "fd").unwrap_err();
        fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(e, FormatError::Unreadable { .. }), "{e}");
    }

    #[test]
    fn mismatching_layouts_are_refused() {
        let dir = std::env::temp_dir().join(format!("sockwatch-fmt-{}", std::process::id()));
        for (event, off) in [("a", 16), ("b", 24)] {
            let d = dir.join("events/syscalls").join(event);
            fs::create_dir_all(&d).unwrap();
            fs::write(
                d.join("format"),
                format!("\tfield:int fd;\toffset:{off};\tsize:8;\n"),
            )
            .unwrap();
        }
        assert_eq!(common_offset(&dir, &["a"], "fd").unwrap(), 16);
        let e = common_offset(&dir, &["a", "b"], "fd").unwrap_err();
        assert!(matches!(e, FormatError::Mismatch { .. }), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
