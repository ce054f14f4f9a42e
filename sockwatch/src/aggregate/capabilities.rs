//! What the kernel let a run see (the header's `capabilities`, see `crate::kernel::capabilities`), as
//! the summary carries it: `{"<name>": {"available": bool, "via": "…", "note": "…"}, …}`.
//!
//! A report over several files (rotation parts, or several runs) merges their headers': a
//! capability counts as available only if it is available in every header that has it, and a
//! missing one keeps the entry (and so the note) of the first header that lacks it.
use serde_json::{Map, Value};

/// Whether the entry says the capability was available (anything but `true` counts as not).
pub fn available(entry: &Value) -> bool {
    entry.get("available").and_then(Value::as_bool) == Some(true)
}

/// Merges `other` into `into` (both `capabilities` objects; see the module's rules).
pub fn merge(into: &mut Map<String, Value>, other: Map<String, Value>) {
    for (name, entry) in other {
        match into.get_mut(&name) {
            None => {
                into.insert(name, entry);
            }
            Some(held) => {
                if available(held) && !available(&entry) {
                    *held = entry;
                }
            }
        }
    }
}

/// The capabilities that were not available, with their notes, in the object's order.
pub fn missing(caps: &Map<String, Value>) -> impl Iterator<Item = (&str, Option<&str>)> {
    caps.iter()
        .filter(|(_, entry)| !available(entry))
        .map(|(name, entry)| (name.as_str(), entry.get("note").and_then(Value::as_str)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn a_capability_is_available_only_if_every_header_that_has_it_says_so() {
        let mut caps = object(json!({
            "accept_failures": {"available": true, "via": "syscall exit tracepoints"},
            "listen_overflow_events": {"available": true, "via": "skb:kfree_skb drop reason"},
            "sock_diag": {"available": false, "via": "NETLINK_SOCK_DIAG", "note": "first"},
            "kernel_programs": {"available": true, "via": "a"},
        }));
        let older = object(json!({
            "accept_failures": {"available": true, "via": "syscall entry and exit tracepoints"},
            "listen_overflow_events": {
                "available": false,
                "via": "per-namespace TcpExt ListenOverflows only",
                "note": "no TCP_LISTEN_OVERFLOW drop reason",
            },
            "sock_diag": {"available": false, "via": "NETLINK_SOCK_DIAG", "note": "second"},
            "kernel_programs": {"available": true, "via": "b", "note": "fallback"},
            "cgroup_filter": {"available": false, "note": "only in the second"},
        }));
        merge(&mut caps, older);
        assert_eq!(
            Value::Object(caps.clone()),
            json!({
                // Available in both: the first header's entry.
                "accept_failures": {"available": true, "via": "syscall exit tracepoints"},
                "kernel_programs": {"available": true, "via": "a"},
                // Missing in the second: its entry, note and all.
                "listen_overflow_events": {
                    "available": false,
                    "via": "per-namespace TcpExt ListenOverflows only",
                    "note": "no TCP_LISTEN_OVERFLOW drop reason",
                },
                // Missing in both: the first note.
                "sock_diag": {"available": false, "via": "NETLINK_SOCK_DIAG", "note": "first"},
                // In one header only: as it says.
                "cgroup_filter": {"available": false, "note": "only in the second"},
            })
        );
        assert_eq!(
            missing(&caps).collect::<Vec<_>>(),
            vec![
                ("cgroup_filter", Some("only in the second")),
                (
                    "listen_overflow_events",
                    Some("no TCP_LISTEN_OVERFLOW drop reason")
                ),
                ("sock_diag", Some("first")),
            ]
        );
    }

    #[test]
    fn merging_the_same_header_again_changes_nothing() {
        let caps = object(json!({
            "a": {"available": true},
            "b": {"available": false, "note": "n"},
        }));
        let mut merged = caps.clone();
        merge(&mut merged, caps.clone());
        assert_eq!(merged, caps);
        // Merged into nothing yet: itself.
        let mut empty = Map::new();
        merge(&mut empty, caps.clone());
        assert_eq!(empty, caps);
    }
}
