//! Listen-queue counters of a namespace, from /proc/PID/net/netstat.
use std::fs;

use super::{HostError, proc_path};

/// TcpExt ListenOverflows and ListenDrops of the namespace a process is in: the kernel's count
/// of connections refused because an accept queue was full, which the events cannot show (no
/// socket is ever created for them). Both only grow; compare two readings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenCounters {
    /// SYNs and final ACKs turned away because the accept queue was full.
    pub overflows: u64,
    /// Everything listeners dropped: overflows, plus other causes (no memory, bad packets).
    pub drops: u64,
}

/// The counters of the namespace `pid` is in (its main thread's, as /proc/PID/net shows).
pub fn listen_counters(pid: u32) -> Result<ListenCounters, HostError> {
    let path = proc_path(pid, "net/netstat");
    let text = fs::read_to_string(&path).map_err(HostError::read(&path))?;
    parse(&text).map_err(|what| HostError::Parse { path, what })
}

/// The file holds pairs of lines with the same prefix: `TcpExt: Name1 Name2 ...`, then
/// `TcpExt: 1 2 ...`. Counters are found by name, since their order changes between kernels.
fn parse(text: &str) -> Result<ListenCounters, String> {
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return Err("no TcpExt header and value lines".into());
    };
    let names: Vec<&str> = names.split_whitespace().skip(1).collect();
    let values: Vec<&str> = values.split_whitespace().skip(1).collect();
    if names.len() != values.len() {
        return Err(format!(
            "TcpExt has {} names but {} values",
            names.len(),
            values.len()
        ));
    }
    let get = |name: &str| -> Result<u64, String> {
        let i = names
            .iter()
            .position(|n| *n == name)
            .ok_or_else(|| format!("no TcpExt {name} counter"))?;
        values[i]
            .parse()
            .map_err(|e| format!("TcpExt {name} value {:?}: {e}", values[i]))
    };
    Ok(ListenCounters {
        overflows: get("ListenOverflows")?,
        drops: get("ListenDrops")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
TcpExt: SyncookiesSent ListenOverflows ListenDrops TCPHPHits
TcpExt: 0 3 7 12345
IpExt: InNoRoutes ListenOverflows
IpExt: 0 99
";

    #[test]
    fn counters_are_found_by_name() {
        assert_eq!(
            parse(SAMPLE).unwrap(),
            ListenCounters {
                overflows: 3,
                drops: 7
            }
        );
        // Same values in another order, and counters near u64::MAX.
        let text = "TcpExt: ListenDrops X ListenOverflows\nTcpExt: 18446744073709551615 0 1\n";
        assert_eq!(
            parse(text).unwrap(),
            ListenCounters {
                overflows: 1,
                drops: u64::MAX
            }
        );
    }

    #[test]
    fn malformed_files_are_explained() {
        assert_eq!(
            parse("IpExt: A\nIpExt: 1\n").unwrap_err(),
            "no TcpExt header and value lines"
        );
        assert_eq!(
            parse("TcpExt: ListenOverflows\n").unwrap_err(),
            "no TcpExt header and value lines"
        );
        assert_eq!(
            parse("TcpExt: ListenOverflows ListenDrops\nTcpExt: 1\n").unwrap_err(),
            "TcpExt has 2 names but 1 values"
        );
        assert_eq!(
            parse("TcpExt: ListenOverflows\nTcpExt: 1\n").unwrap_err(),
            "no TcpExt ListenDrops counter"
        );
        let e = parse("TcpExt: ListenOverflows ListenDrops\nTcpExt: 1 x\n").unwrap_err();
        assert!(e.starts_with("TcpExt ListenDrops value \"x\": "), "{e}");
    }

    #[test]
    fn own_namespace_counters_are_readable() {
        // /proc/PID/net/netstat of one's own process needs no privileges.
        listen_counters(std::process::id()).unwrap();
    }

    #[test]
    fn errors_name_the_file() {
        let e = listen_counters(u32::MAX).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("reading /proc/{}/net/netstat: ", u32::MAX)),
            "{e}"
        );
    }
}
