//! The first record of every JSON Lines file (and stream): which schema the records follow,
//! which sockwatch wrote them, when the run started and which of its files this is.
//!
//! `{"time":"…","event":"header","schema":1,"sockwatch":"0.1.0","started":"…","part":1,
//! "capabilities":{"accept_failures":{"available":true,"via":"…"},…}}`
//!
//! `capabilities` says what the kernel let the run see (see `crate::kernel::capabilities`), so that a
//! reader of the file knows which events could not appear in it.
//!
//! `schema` is the major version of the record layout: it changes only when a reader of the
//! old layout would misread the new one (new keys and new record types do not change it).
use std::io::{self, Write};

use crate::clock::write_rfc3339;

/// The record layout this sockwatch writes and reads.
pub const SCHEMA: u64 = 1;

/// Writes the header record, one line. Hand-written (every value is a number, a time, the
/// version or the capabilities' ready-made JSON object) so it does not depend on how event
/// records are serialised.
pub fn write_jsonl(
    out: &mut impl Write,
    at_unix_ns: i128,
    started_unix_ns: i128,
    part: u64,
    capabilities: Option<&str>,
) -> io::Result<()> {
    out.write_all(b"{\"time\":\"")?;
    write_rfc3339(out, at_unix_ns)?;
    write!(
        out,
        "\",\"event\":\"header\",\"schema\":{SCHEMA},\"sockwatch\":\"{}\",\"started\":\"",
        env!("CARGO_PKG_VERSION")
    )?;
    write_rfc3339(out, started_unix_ns)?;
    write!(out, "\",\"part\":{part}")?;
    if let Some(caps) = capabilities {
        write!(out, ",\"capabilities\":{caps}")?;
    }
    writeln!(out, "}}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn header_record() {
        let mut out = Vec::new();
        write_jsonl(&mut out, 2_000_000_000, 1_000_000_001, 3, None).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with("}\n") && text.lines().count() == 1, "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            v,
            json!({
                "time": "1970-01-01T00:00:02.000000000Z",
                "event": "header",
                "schema": 1,
                "sockwatch": env!("CARGO_PKG_VERSION"),
                "started": "1970-01-01T00:00:01.000000001Z",
                "part": 3,
            })
        );
    }

    #[test]
    fn header_with_capabilities() {
        let mut out = Vec::new();
        let caps = r#"{"accept_failures":{"available":false,"note":"n"}}"#;
        write_jsonl(&mut out, 2_000_000_000, 1_000_000_001, 1, Some(caps)).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["part"], 1);
        assert_eq!(v["capabilities"]["accept_failures"]["available"], false);
        assert_eq!(v["capabilities"]["accept_failures"]["note"], "n");
    }
}
