//! What the running kernel lets sockwatch see, from what the start-up probes found (see
//! [`super::probes`]): never inferred from a version number.
//!
//! The core (BTF, the ring buffer, the state-change tracepoint) is required; everything else has
//! a fallback or is named as missing, once, with what the user loses and which kernel adds it.
//! The same list goes into the JSON Lines header and the summary (so that `report` can say what
//! a recording could not see) and is what `sockwatch check` prints.
use std::path::Path;

use btf_rs::Btf;
use serde::Serialize;
use sockwatch_common::{KernelOffsets, StatsOffsets};

use crate::kernel::{
    btf,
    hooks::{HookKind, HookProbes},
    probes::{Probes, kernel_release},
    tp_format,
};

/// One thing the kernel may or may not allow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Capability {
    /// Stable key (`snake_case`), as in the header's and the summary's `capabilities`.
    pub name: &'static str,
    /// What the user gets from it.
    pub what: &'static str,
    pub available: bool,
    /// How sockwatch gets it on this kernel, when more than one way exists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<&'static str>,
    /// When missing: what is lost and which kernel adds it. When a fallback stands in: which.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Which programs to load, decided from the probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgramChoice {
    /// The object built for kernels without task storage, `bpf_task_pt_regs` or BPF
    /// compare-and-swap (per-thread hash maps and syscall entry hooks).
    pub compat: bool,
    /// How accept and connect returns are seen; None: not at all (no kind works here).
    pub hooks: Option<HookKind>,
    /// `skb:kfree_skb` reports listen-overflow drops with the listener.
    pub overflow_hook: bool,
    /// Hash maps are preallocated: the kernel warns when a tracing program uses one that
    /// allocates as entries are added (before Linux 6.1), so the loader sizes them down.
    pub preallocated_maps: bool,
}

/// The probe's result.
#[derive(Debug, Clone)]
pub struct Capabilities {
    /// `uname -r`.
    pub kernel: String,
    pub programs: ProgramChoice,
    pub list: Vec<Capability>,
    /// What the list was made from, to make it again when the user forces a choice.
    probes: Probes,
    forced: Forced,
}

/// Choices the user forced (`--programs compat`, `--hooks KIND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Forced {
    compat: bool,
    hooks: Option<HookKind>,
}

/// Names of the capabilities, as they appear in records and in `sockwatch check`.
pub mod name {
    pub const BTF: &str = "btf";
    pub const RING_BUFFER: &str = "ring_buffer";
    pub const STATE_CHANGES: &str = "state_changes";
    pub const PROGRAMS: &str = "kernel_programs";
    pub const ACCEPT_OWNER: &str = "accept_owner";
    pub const ACCEPT_FAILURES: &str = "accept_failures";
    pub const CONNECT_ERRORS: &str = "connect_errors";
    pub const OVERFLOW_EVENTS: &str = "listen_overflow_events";
    pub const RECURSION_MISSES: &str = "recursion_misses";
    pub const SOCK_DIAG: &str = "sock_diag";
    pub const CGROUP_FILTER: &str = "cgroup_filter";
    pub const HOOKS: &str = "hooks";
    pub const CONNECTION_STATS: &str = "connection_stats";
}

const CURRENT_VIA: &str = "task storage, saved syscall registers, compare-and-swap";
const COMPAT_VIA: &str = "hash maps by thread, syscall entry hooks";
const VIA_SYSCALL_EXITS: &str = "syscall exit tracepoints";
const VIA_SYSCALL_ENTRIES_AND_EXITS: &str = "syscall entry and exit tracepoints";
const VIA_FENTRY: &str = "fexit on inet_stream_connect, __sys_accept4, inet_csk_accept";
const VIA_KPROBE: &str = "kprobes on inet_stream_connect, __sys_accept4, inet_csk_accept";

impl Probes {
    /// Each hook kind in order of preference, with why it cannot be used here.
    fn hook_kinds(&self) -> [(HookKind, Result<(), String>); 3] {
        [
            (HookKind::Fentry, self.fentry.map_err(str::to_string)),
            (HookKind::Kprobe, self.kprobe.map_err(str::to_string)),
            (
                HookKind::Syscall,
                if self.syscall_tracepoints {
                    Ok(())
                } else {
                    Err(self.no_syscalls())
                },
            ),
        ]
    }

    fn no_syscalls(&self) -> String {
        match self.syscall_missing {
            Some((event, tracefs)) => format!(
                "no syscall tracepoint syscalls:{event} in {tracefs} (the kernel needs CONFIG_FTRACE_SYSCALLS=y, or --tracefs is not where tracefs is mounted)"
            ),
            None => "no syscall tracepoints".to_string(),
        }
    }

    /// The program choice and the list, in a stable order.
    pub fn capabilities(&self, kernel: String) -> Capabilities {
        self.build(kernel, Forced::default())
    }

    fn build(&self, kernel: String, forced: Forced) -> Capabilities {
        let current = !forced.compat
            && self.task_storage
            && self.task_pt_regs
            && self.current_task_btf
            && self.cmpxchg;
        let kinds = self.hook_kinds();
        let hooks = match forced.hooks {
            Some(kind) => Some(kind),
            None => kinds.iter().find(|(_, r)| r.is_ok()).map(|(k, _)| *k),
        };
        let programs = ProgramChoice {
            compat: !current,
            hooks,
            overflow_hook: self.overflow_reason,
            preallocated_maps: !self.run_time_alloc,
        };
        let mut list = vec![
            Capability {
                name: name::BTF,
                what: "kernel type information (struct offsets)",
                available: true,
                via: Some("/sys/kernel/btf/vmlinux"),
                note: None,
            },
            Capability {
                name: name::RING_BUFFER,
                what: "BPF ring buffer (events to userspace)",
                available: self.ring_buffer,
                via: None,
                note: (!self.ring_buffer).then(|| "required: Linux 5.8 or later".to_string()),
            },
            Capability {
                name: name::STATE_CHANGES,
                what: "connect, listen, established and close events",
                available: true,
                via: Some("sock:inet_sock_set_state (raw tracepoint)"),
                note: None,
            },
            Capability {
                name: name::PROGRAMS,
                what: "per-thread state of the programs",
                available: true,
                via: Some(if current { CURRENT_VIA } else { COMPAT_VIA }),
                note: if forced.compat {
                    Some("the programs for older kernels, as asked (--programs compat)".into())
                } else {
                    (!current).then(|| {
                        format!(
                            "this kernel lacks {}: the programs for older kernels run instead (nothing is lost; they cost a little more)",
                            self.missing_for_current().join(", ")
                        )
                    })
                },
            },
        ];
        let hooks_via = hooks.map(|kind| match kind {
            HookKind::Fentry => VIA_FENTRY,
            HookKind::Kprobe => VIA_KPROBE,
            HookKind::Syscall if current => VIA_SYSCALL_EXITS,
            HookKind::Syscall => VIA_SYSCALL_ENTRIES_AND_EXITS,
        });
        let refused = |upto: HookKind| -> Vec<String> {
            kinds
                .iter()
                .take_while(|(k, _)| *k != upto)
                .filter_map(|(k, r)| r.as_ref().err().map(|why| format!("{k}: {why}")))
                .collect()
        };
        let hooks_note = match (hooks, forced.hooks) {
            (Some(kind), Some(_)) => format!("{kind}, as asked (--hooks {kind})"),
            (Some(HookKind::Fentry), None) => {
                "fentry: the host's other system calls are left alone".to_string()
            }
            (Some(HookKind::Kprobe), None) => format!(
                "kprobe ({}): the host's other system calls are left alone",
                refused(HookKind::Kprobe).join("; ")
            ),
            (Some(HookKind::Syscall), None) => format!(
                "syscall tracepoints ({}): while sockwatch runs, every system call on this host takes a little longer (docs/how-it-works.md#hook-kinds)",
                refused(HookKind::Syscall).join("; ")
            ),
            (None, _) => refused(HookKind::Syscall)
                .into_iter()
                .chain(std::iter::once(self.no_syscalls()))
                .collect::<Vec<_>>()
                .join("; "),
        };
        list.push(Capability {
            name: name::HOOKS,
            what: "how connect() and accept() returns are seen",
            available: hooks.is_some(),
            via: hooks_via,
            note: Some(hooks_note),
        });
        for (name, what, lost) in [
            (
                name::ACCEPT_OWNER,
                "accept events with the accepting process",
                "accepted connections are seen at ESTABLISHED, without the accepting process",
            ),
            (
                name::ACCEPT_FAILURES,
                "accept() failures (EMFILE, ENFILE, ...)",
                "accept() failures are not seen",
            ),
            (
                name::CONNECT_ERRORS,
                "connect() errors before any packet (no route, no local port, ...)",
                "connect() errors raised before a SYN is sent are not seen",
            ),
        ] {
            list.push(Capability {
                name,
                what,
                available: hooks.is_some(),
                via: hooks_via,
                note: hooks
                    .is_none()
                    .then(|| format!("no fentry, no kprobes, and {}: {lost}", self.no_syscalls())),
            });
        }
        list.push(Capability {
            name: name::OVERFLOW_EVENTS,
            what: "overflow events per listener (accept queue full)",
            available: self.overflow_reason,
            via: Some(if self.overflow_reason {
                "skb:kfree_skb drop reason"
            } else {
                "TcpExt ListenOverflows per namespace"
            }),
            note: (!self.overflow_reason).then(|| {
                "no TCP_LISTEN_OVERFLOW drop reason (kernels after 6.12 have it): no overflow events; overflows come from the namespace's TcpExt ListenOverflows".to_string()
            }),
        });
        list.push(Capability {
            name: name::CONNECTION_STATS,
            what: "bytes, retransmits and RTT of each connection at its close",
            available: self.tcp_stats.is_ok(),
            via: Some("struct tcp_sock"),
            note: self
                .tcp_stats
                .err()
                .map(|why| format!("{why}: close events carry no bytes, retransmits or RTT")),
        });
        list.push(Capability {
            name: name::RECURSION_MISSES,
            what: "count of program runs the kernel skipped",
            available: self.recursion_misses,
            via: None,
            note: (!self.recursion_misses).then(|| {
                "the kernel does not report skipped runs (Linux 5.12 adds recursion_misses): such a loss, if any, is not counted".to_string()
            }),
        });
        list.push(Capability {
            name: name::SOCK_DIAG,
            what: "connections open before the start, listener queue depth and backlog",
            available: self.sock_diag,
            via: Some("NETLINK_SOCK_DIAG"),
            note: (!self.sock_diag).then(|| {
                "sock_diag does not answer for TCP (load the inet_diag and tcp_diag modules): no start-up snapshot and no queue samples".to_string()
            }),
        });
        list.push(Capability {
            name: name::CGROUP_FILTER,
            what: "--cgroup filter",
            available: self.ancestor_cgroup,
            via: None,
            note: (!self.ancestor_cgroup).then(|| {
                "no bpf_get_current_ancestor_cgroup_id for tracepoints: --cgroup is refused"
                    .to_string()
            }),
        });
        Capabilities {
            kernel,
            programs,
            list,
            probes: *self,
            forced,
        }
    }

    /// What keeps the current programs from loading, with the kernel that adds each.
    fn missing_for_current(&self) -> Vec<&'static str> {
        [
            (self.task_storage, "BPF task storage (5.11)"),
            (self.current_task_btf, "bpf_get_current_task_btf (5.11)"),
            (self.cmpxchg, "BPF compare-and-swap (5.12)"),
            (self.task_pt_regs, "bpf_task_pt_regs (5.15)"),
        ]
        .into_iter()
        .filter(|(has, _)| !has)
        .map(|(_, what)| what)
        .collect()
    }
}

impl Capabilities {
    /// Probes the running kernel. `btf` and `offsets` are the ones the loader uses; `hooks`
    /// and `stats` what it found in that BTF (see `Probes::run`).
    pub fn probe(
        btf: &Btf,
        offsets: &KernelOffsets,
        tracefs: &Path,
        hooks: HookProbes,
        stats: &Result<StatsOffsets, btf::BtfError>,
    ) -> Result<Self, tp_format::FormatError> {
        Ok(Probes::run(btf, offsets, tracefs, hooks, stats)?.capabilities(kernel_release()))
    }

    /// Runs the compat programs whatever the kernel supports (`--programs compat`).
    pub fn force_compat(&mut self) {
        if self.programs.compat {
            return;
        }
        let forced = Forced {
            compat: true,
            ..self.forced
        };
        *self = self.probes.build(std::mem::take(&mut self.kernel), forced);
    }

    /// Uses hooks of `kind` (`--hooks KIND`); an error, in one line, when this kernel has none.
    pub fn force_hooks(&mut self, kind: HookKind) -> Result<(), String> {
        let kinds = self.probes.hook_kinds();
        if let Some((_, Err(why))) = kinds.iter().find(|(k, _)| *k == kind) {
            let usable: Vec<&str> = kinds
                .iter()
                .filter(|(_, r)| r.is_ok())
                .map(|(k, _)| k.name())
                .collect();
            let instead = if usable.is_empty() {
                String::new()
            } else {
                format!(" (this kernel offers: {})", usable.join(", "))
            };
            return Err(format!(
                "--hooks {kind} is not available on this kernel: {why}; use --hooks auto{instead}"
            ));
        }
        let forced = Forced {
            hooks: Some(kind),
            ..self.forced
        };
        *self = self.probes.build(std::mem::take(&mut self.kernel), forced);
        Ok(())
    }

    /// The hook kinds this kernel allows, in order of preference.
    pub fn hooks_offered(&self) -> Vec<HookKind> {
        self.probes
            .hook_kinds()
            .into_iter()
            .filter(|(_, r)| r.is_ok())
            .map(|(k, _)| k)
            .collect()
    }

    pub fn get(&self, name: &str) -> Option<&Capability> {
        self.list.iter().find(|c| c.name == name)
    }

    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some_and(|c| c.available)
    }

    /// One line per capability that is missing or replaced by a fallback, for stderr.
    pub fn notices(&self) -> Vec<String> {
        self.list
            .iter()
            .filter_map(|c| c.note.as_ref().map(|note| format!("{}: {note}", c.name)))
            .collect()
    }

    /// `{"name": {"available": .., "via": .., "note": ..}, ...}`, for the header and summary.
    pub fn to_json(&self) -> serde_json::Value {
        let map = self
            .list
            .iter()
            .map(|c| {
                let mut v = serde_json::json!({ "available": c.available });
                if let Some(via) = c.via {
                    v["via"] = via.into();
                }
                if let Some(note) = &c.note {
                    v["note"] = note.clone().into();
                }
                (c.name.to_string(), v)
            })
            .collect();
        serde_json::Value::Object(map)
    }

    /// What `sockwatch check --format json` prints.
    pub fn check_json(&self) -> serde_json::Value {
        serde_json::json!({
            "kernel": self.kernel,
            "capabilities": self.list,
            "hooks": { "used": self.programs.hooks, "offered": self.hooks_offered() },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Probes {
        Probes::everything()
    }

    #[test]
    fn a_kernel_with_everything_runs_the_current_programs_on_fentry_and_says_only_that() {
        let c = all().capabilities("6.18".into());
        assert_eq!(
            c.programs,
            ProgramChoice {
                compat: false,
                hooks: Some(HookKind::Fentry),
                overflow_hook: true,
                preallocated_maps: false,
            }
        );
        assert_eq!(
            c.notices(),
            ["hooks: fentry: the host's other system calls are left alone"]
        );
        assert!(c.list.iter().all(|c| c.available));
        assert_eq!(c.get(name::ACCEPT_OWNER).unwrap().via, Some(VIA_FENTRY));
        assert_eq!(
            c.hooks_offered(),
            [HookKind::Fentry, HookKind::Kprobe, HookKind::Syscall]
        );
    }

    const REFUSED: &str =
        "the kernel refuses fexit programs on inet_stream_connect (EPERM: Operation not permitted)";
    const NO_KPROBES: &str = "this kernel has no kprobe event source";

    #[test]
    fn hooks_fall_back_from_fentry_to_kprobes_to_syscalls_and_say_why() {
        let kprobe = Probes {
            fentry: Err(REFUSED),
            ..all()
        }
        .capabilities("x".into());
        assert_eq!(kprobe.programs.hooks, Some(HookKind::Kprobe));
        assert_eq!(
            kprobe.get(name::CONNECT_ERRORS).unwrap().via,
            Some(VIA_KPROBE)
        );
        assert_eq!(
            kprobe.get(name::HOOKS).unwrap().note.as_deref(),
            Some(
                format!("kprobe (fentry: {REFUSED}): the host's other system calls are left alone")
                    .as_str()
            )
        );
        let syscall = Probes {
            fentry: Err(REFUSED),
            kprobe: Err(NO_KPROBES),
            ..all()
        }
        .capabilities("x".into());
        assert_eq!(syscall.programs.hooks, Some(HookKind::Syscall));
        assert_eq!(syscall.hooks_offered(), [HookKind::Syscall]);
        let note = syscall.get(name::HOOKS).unwrap().note.clone().unwrap();
        assert!(
            note.starts_with(&format!(
                "syscall tracepoints (fentry: {REFUSED}; kprobe: {NO_KPROBES}): while sockwatch runs, every system call"
            )),
            "{note}"
        );
        assert_eq!(
            syscall.get(name::ACCEPT_FAILURES).unwrap().via,
            Some(VIA_SYSCALL_EXITS)
        );
    }

    #[test]
    fn forcing_a_hook_kind_uses_it_or_names_what_the_kernel_offers() {
        let probes = Probes {
            fentry: Err(REFUSED),
            ..all()
        };
        let mut c = probes.capabilities("x".into());
        c.force_hooks(HookKind::Syscall).unwrap();
        assert_eq!(c.programs.hooks, Some(HookKind::Syscall));
        assert_eq!(
            c.get(name::HOOKS).unwrap().note.as_deref(),
            Some("syscall, as asked (--hooks syscall)")
        );
        // Forcing compat afterwards keeps the forced kind.
        c.force_compat();
        assert_eq!(c.programs.hooks, Some(HookKind::Syscall));
        assert!(c.programs.compat);
        let err = probes
            .capabilities("x".into())
            .force_hooks(HookKind::Fentry)
            .unwrap_err();
        assert_eq!(
            err,
            format!(
                "--hooks fentry is not available on this kernel: {REFUSED}; use --hooks auto (this kernel offers: kprobe, syscall)"
            )
        );
        assert!(!err.contains('\n'));
    }

    #[test]
    fn check_json_names_the_hooks_used_and_offered() {
        let c = Probes {
            kprobe: Err(NO_KPROBES),
            ..all()
        }
        .capabilities("x".into());
        let v = c.check_json();
        assert_eq!(v["hooks"]["used"], "fentry");
        assert_eq!(
            v["hooks"]["offered"],
            serde_json::json!(["fentry", "syscall"])
        );
    }

    #[test]
    fn a_5_10_kernel_gets_the_compat_programs_and_named_losses() {
        let p = Probes {
            task_storage: false,
            task_pt_regs: false,
            current_task_btf: false,
            cmpxchg: false,
            overflow_reason: false,
            recursion_misses: false,
            run_time_alloc: false,
            ..all()
        };
        let c = p.capabilities("5.10.0-32-cloud-amd64".into());
        assert!(c.programs.compat);
        assert!(c.programs.preallocated_maps);
        assert!(!c.programs.overflow_hook);
        assert!(c.has(name::ACCEPT_FAILURES));
        // fentry works there: no syscall hook at all.
        assert_eq!(c.get(name::ACCEPT_FAILURES).unwrap().via, Some(VIA_FENTRY));
        assert!(!c.has(name::OVERFLOW_EVENTS));
        let notices = c.notices();
        assert_eq!(notices.len(), 4, "{notices:?}");
        assert!(
            notices[0].starts_with("kernel_programs: this kernel lacks BPF task storage (5.11), ")
        );
        assert!(notices[0].contains("bpf_task_pt_regs (5.15)"));
        assert!(notices[1].starts_with("hooks: fentry"));
        assert!(notices[2].starts_with("listen_overflow_events: "));
        assert!(notices[3].contains("5.12"));
        assert!(notices.iter().all(|n| !n.contains('\n')));
    }

    #[test]
    fn only_bpf_task_pt_regs_missing_still_means_compat() {
        let c = Probes {
            task_pt_regs: false,
            ..all()
        }
        .capabilities("5.14".into());
        assert!(c.programs.compat);
        let note = c.get(name::PROGRAMS).unwrap().note.clone().unwrap();
        assert_eq!(
            note,
            "this kernel lacks bpf_task_pt_regs (5.15): the programs for older kernels run instead (nothing is lost; they cost a little more)"
        );
    }

    #[test]
    fn without_syscall_tracepoints_the_three_syscall_capabilities_say_what_is_lost() {
        let c = Probes {
            syscall_tracepoints: false,
            syscall_missing: Some(("sys_exit_accept4", "/sys/kernel/tracing")),
            fentry: Err(REFUSED),
            kprobe: Err(NO_KPROBES),
            ..all()
        }
        .capabilities("x".into());
        // Nor fentry nor kprobes here.
        assert_eq!(c.programs.hooks, None);
        for n in [
            name::ACCEPT_OWNER,
            name::ACCEPT_FAILURES,
            name::CONNECT_ERRORS,
        ] {
            let cap = c.get(n).unwrap();
            assert!(!cap.available);
            assert!(cap.via.is_none());
            let note = cap.note.as_ref().unwrap();
            assert!(
                note.starts_with(
                    "no fentry, no kprobes, and no syscall tracepoint syscalls:sys_exit_accept4 \
                     in /sys/kernel/tracing (the kernel needs CONFIG_FTRACE_SYSCALLS=y"
                ),
                "{note}"
            );
        }
    }

    #[test]
    fn forcing_compat_changes_the_programs_and_says_so() {
        let mut c = Probes {
            fentry: Err(REFUSED),
            kprobe: Err(NO_KPROBES),
            ..all()
        }
        .capabilities("6.18".into());
        c.force_compat();
        assert!(c.programs.compat);
        assert_eq!(c.get(name::PROGRAMS).unwrap().via, Some(COMPAT_VIA));
        assert_eq!(
            c.get(name::ACCEPT_FAILURES).unwrap().via,
            Some(VIA_SYSCALL_ENTRIES_AND_EXITS)
        );
        // The programs' note, and the hooks' (always there).
        assert_eq!(c.notices().len(), 2);
    }

    #[test]
    fn without_the_fields_read_at_close_the_note_names_why_and_what_is_lost() {
        let why = "kernel BTF: struct tcp_sock's fields read at close span 1100 bytes, more than the 1024 read at once";
        let c = Probes {
            tcp_stats: Err(why),
            ..all()
        }
        .capabilities("6.12".into());
        let stats = c.get(name::CONNECTION_STATS).unwrap();
        assert!(!stats.available);
        assert_eq!(
            stats.note.as_deref(),
            Some(format!("{why}: close events carry no bytes, retransmits or RTT").as_str())
        );
        assert!(c.notices().iter().any(|n| n.contains(why)));
    }

    #[test]
    fn json_forms() {
        let c = Probes {
            sock_diag: false,
            ..all()
        }
        .capabilities("6.12".into());
        let v = c.to_json();
        assert_eq!(v["sock_diag"]["available"], false);
        assert!(
            v["sock_diag"]["note"]
                .as_str()
                .unwrap()
                .contains("inet_diag")
        );
        assert_eq!(v["accept_owner"]["available"], true);
        assert_eq!(v["accept_owner"]["via"], VIA_FENTRY);
        assert!(v["accept_owner"].get("note").is_none());
        let check = c.check_json();
        assert_eq!(check["kernel"], "6.12");
        assert_eq!(check["capabilities"][0]["name"], "btf");
        assert_eq!(
            check["capabilities"].as_array().unwrap().len(),
            c.list.len()
        );
    }
}
