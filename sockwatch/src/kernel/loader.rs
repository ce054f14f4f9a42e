//! Loading the eBPF programs, attaching and detaching them, and reading their counters.
use std::{
    io,
    os::fd::{AsFd, AsRawFd},
    path::PathBuf,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, Map, MapData, PerCpuArray, RingBuf},
    programs::{
        FExit, KProbe, RawTracePoint, TracePoint, fexit::FExitLinkId, kprobe::KProbeLinkId,
        raw_trace_point::RawTracePointLinkId, trace_point::TracePointLinkId,
    },
};
use sockwatch_common::{Mode, SockInfo, counter};

use crate::{
    filter::{Filter, FilterError},
    kernel::btf::{self, BtfError},
    kernel::capabilities::{Capabilities, ProgramChoice},
    kernel::hooks::{self, HookKind},
    kernel::load_errors::{attach_error, one_line, with_causes},
    kernel::loss::KernelCounters,
    kernel::map_sizes::{
        MAX_PENDING_CONNECTS, count_shards, counter_map_sizes, preallocated, socket_map_entries,
    },
    kernel::programs::{Hook, NESTED_PROGRAM, programs},
    kernel::tp_format,
    kernel::tracefs,
};

/// The programs for current kernels.
pub(crate) static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sockwatch-ebpf"));

/// The same programs built for kernels without task storage, `bpf_task_pt_regs` or BPF
/// compare-and-swap (the eBPF crate's `compat` feature).
pub(crate) static OBJECT_COMPAT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sockwatch-ebpf-compat"));

enum Link {
    Tracepoint(&'static str, TracePointLinkId),
    Raw(&'static str, RawTracePointLinkId),
    Fexit(&'static str, FExitLinkId),
    Kprobe(&'static str, KProbeLinkId),
}

/// The reader drains the ring at least this often: the programs wake it only for bulk.
pub const POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(20);

/// Sizes chosen by the user.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Live sockets tracked at once (socket map entries). Where the kernel needs the map
    /// preallocated, at most [`crate::kernel::map_sizes::PREALLOCATED_MAX_SOCKETS`].
    pub max_sockets: u32,
    /// Ring buffer size in bytes: a power of two, at least one page.
    pub ring_bytes: u32,
    /// Also report every raw TCP state transition (`trace --states`).
    pub states: bool,
    /// Kernel BTF file (normally [`btf::VMLINUX_BTF`]).
    pub btf: PathBuf,
    /// tracefs root for the record formats; `None`: where [`tracefs::root`] finds it.
    pub tracefs: Option<PathBuf>,
    /// Load the compat programs even where the current ones would load.
    pub force_compat: bool,
    /// Use this kind of accept/connect hooks (`--hooks`); None: the best this kernel allows.
    pub hooks: Option<HookKind>,
    /// Whether the programs count in the kernel, and which events they write to the ring
    /// ([`Mode::RING_ONLY`]: every event, no counting).
    pub mode: Mode,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("this kernel has no BPF ring buffer: sockwatch needs Linux 5.8 or later (with BTF)")]
    NoRingBuffer,
    #[error(
        "--cgroup needs bpf_get_current_ancestor_cgroup_id in tracepoint programs, which this kernel lacks: filter by --pid or --comm instead"
    )]
    NoCgroupFilter,
    #[error(
        "sockwatch must run as root (it loads eBPF programs and reads kernel memory): run it with sudo"
    )]
    NotRoot,
    #[error(transparent)]
    Btf(#[from] BtfError),
    #[error(transparent)]
    Format(#[from] tp_format::FormatError),
    #[error(transparent)]
    Filter(#[from] FilterError),
    #[error("loading the eBPF object failed: {0}")]
    Object(String),
    #[error("probing the kernel's BPF features failed: {0}")]
    Probe(String),
    #[error("eBPF program {name} is missing from the object (build problem)")]
    MissingProgram { name: &'static str },
    #[error("loading eBPF program {name} failed: {detail}")]
    Program { name: &'static str, detail: String },
    #[error(
        "attaching {name} to tracepoint {tracepoint} failed: {cause} (does this kernel have it? see /sys/kernel/tracing/events)"
    )]
    Attach {
        name: &'static str,
        tracepoint: String,
        cause: aya::programs::ProgramError,
    },
    #[error("tracepoint {tracepoint} does not exist in this kernel: {why}")]
    NoTracepoint {
        tracepoint: String,
        why: &'static str,
    },
    #[error("{0}")]
    Hooks(String),
    #[error("eBPF map {name}: {cause}")]
    Map {
        name: &'static str,
        cause: aya::maps::MapError,
    },
}

/// Fails early, with a clear message, when not running as root.
pub fn require_root() -> Result<(), LoadError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(LoadError::NotRoot);
    }
    Ok(())
}

/// What the running kernel offers, read before anything is loaded: the struct offsets from
/// its BTF and the probed capabilities.
#[derive(Debug, Clone)]
pub struct KernelSupport {
    pub offsets: sockwatch_common::KernelOffsets,
    /// Offsets of the fields read at close (all 0: none read).
    pub stats_offsets: sockwatch_common::StatsOffsets,
    pub capabilities: Capabilities,
}

/// Reads the kernel's BTF and probes its capabilities. Fails only when the core is missing
/// (BTF, the ring buffer); everything else is in the capabilities.
pub fn inspect(opts: &LoadOptions) -> Result<KernelSupport, LoadError> {
    require_root()?;
    let btf = btf::read(&opts.btf)?;
    let mut offsets = btf::resolve(&btf)?;
    // First, so that a kernel refusing bpf() itself (a user namespace, lockdown, seccomp) is
    // named as that, not as missing features.
    if let Err(e) = aya::sys::is_map_supported(aya::maps::MapType::RingBuf) {
        return Err(LoadError::Probe(with_causes(&e)));
    }
    let tracefs = opts.tracefs.as_deref().unwrap_or_else(|| tracefs::root());
    // Each looked up once: the capabilities and the programs use the same findings.
    let stats = btf::stats_offsets(&btf);
    let hook_probes = hooks::HookProbes::run(&btf);
    if let Ok(functions) = &hook_probes.functions {
        offsets.accept_ret_arg = functions.accept_ret_arg;
    }
    let mut capabilities = Capabilities::probe(&btf, &offsets, tracefs, hook_probes, &stats)?;
    if opts.force_compat {
        capabilities.force_compat();
    }
    if let Some(kind) = opts.hooks {
        capabilities.force_hooks(kind).map_err(LoadError::Hooks)?;
    }
    if !capabilities.has(crate::kernel::capabilities::name::RING_BUFFER) {
        return Err(LoadError::NoRingBuffer);
    }
    Ok(KernelSupport {
        offsets,
        stats_offsets: stats.unwrap_or_default(),
        capabilities,
    })
}

impl KernelSupport {
    /// Whether the kernel can apply `filter` (`--cgroup` needs a helper 5.10 lacks): checked
    /// before any output file is touched.
    pub fn supports(&self, filter: &Filter) -> Result<(), LoadError> {
        if filter.cgroup.is_some()
            && !self
                .capabilities
                .has(crate::kernel::capabilities::name::CGROUP_FILTER)
        {
            return Err(LoadError::NoCgroupFilter);
        }
        Ok(())
    }
}

/// Names, once on stderr, each capability this kernel lacks (or replaces by a fallback), in one
/// line each: what is missing, what is lost, which kernel adds it.
pub fn announce(caps: &Capabilities) {
    for notice in caps.notices() {
        eprintln!("sockwatch: note: {notice}");
    }
}

/// The loaded programs. Dropping it detaches and unloads everything.
pub struct Tracer {
    ebpf: Ebpf,
    links: Vec<Link>,
    /// Recursion misses read at detach, when the programs stop running.
    final_recursion_misses: Option<u64>,
    states: bool,
    choice: ProgramChoice,
    /// Entries per port of the counter maps (`PortKey::shard`).
    count_shards: u32,
}

impl Tracer {
    /// Loads (but does not attach) the programs this kernel supports, with `filter` applied in
    /// the kernel.
    pub fn load(
        opts: &LoadOptions,
        filter: &Filter,
        kernel: &KernelSupport,
    ) -> Result<Self, LoadError> {
        require_root()?;
        let choice = kernel.capabilities.programs;
        kernel.supports(filter)?;
        let filter = filter.kernel_config()?;
        let mut offsets = kernel.offsets;
        // A quarter full wakes the reader; below that it drains on its timer (POLL_INTERVAL).
        offsets.wakeup_bytes = opts.ring_bytes / 4;
        let tracefs = opts.tracefs.as_deref().unwrap_or_else(|| tracefs::root());
        let syscall_hooks = choice.hooks == Some(HookKind::Syscall);
        if syscall_hooks {
            offsets.sys_exit_ret = crate::kernel::probes::syscall_exit_ret(tracefs)?;
        }
        if choice.compat && syscall_hooks {
            let entries = crate::kernel::probes::SYSCALL_ENTRIES;
            offsets.sys_enter_arg0 = tp_format::common_offset(tracefs, &entries, "fd")?;
            // connect's address (at accept's entry the same slot holds the peer-address pointer,
            // which its exit does not use).
            offsets.sys_enter_arg1 =
                tp_format::field_offset(tracefs, "syscalls", "sys_enter_connect", "uservaddr")?;
        }
        raise_memlock_limit();
        let prealloc = choice.preallocated_maps;
        let max_sockets = socket_map_entries(opts.max_sockets, prealloc);
        // The programs run on every CPU, whatever this process's affinity. Unreadable: spread
        // as if there were many (only the memory of the ports in use grows).
        let cpus = aya::util::nr_cpus().unwrap_or(usize::MAX);
        let shards = count_shards(opts.mode, prealloc, cpus);
        let sizes = counter_map_sizes(opts.mode, prealloc, shards);
        let shard_mask = shards - 1;
        let mut loader = EbpfLoader::new();
        loader
            .override_global("OFFSETS", &offsets, true)
            .override_global("STATS_OFFSETS", &kernel.stats_offsets, true)
            .override_global("FILTER", &filter, true)
            .override_global("MODE", &opts.mode, true)
            .override_global("COUNT_SHARD_MASK", &shard_mask, true)
            .map_max_entries("EVENTS", opts.ring_bytes)
            .map_max_entries("SOCKS", max_sockets)
            .map_max_entries("LISTENERS", sizes.listeners)
            .map_max_entries("OUTBOUND", sizes.outbound)
            .map_max_entries("ERRORS", sizes.errors)
            .map_max_entries("PROCESSES", sizes.processes)
            .map_max_entries("PEERS", sizes.peers)
            // The current object's per-thread map is task storage, which aya has no type
            // for; userspace never reads it.
            .allow_unsupported_maps();
        let object = if choice.compat {
            // At most one per tracked socket, and only while its connect is in flight.
            loader.map_max_entries("PENDING", max_sockets.min(MAX_PENDING_CONNECTS));
            OBJECT_COMPAT
        } else {
            OBJECT
        };
        let patched;
        let object = if prealloc {
            patched = preallocated(object).map_err(LoadError::Object)?;
            patched.bytes()
        } else {
            object
        };
        let mut ebpf = loader
            .load(object)
            .map_err(|e| LoadError::Object(with_causes(&e)))?;
        // fexit programs are loaded against the kernel function they attach to.
        let kernel_btf = if choice.hooks == Some(HookKind::Fentry) {
            Some(
                aya::Btf::parse_file(&opts.btf, aya::Endianness::default()).map_err(|e| {
                    LoadError::Object(format!("reading {}: {e}", opts.btf.display()))
                })?,
            )
        } else {
            None
        };
        for &(name, attach) in programs(opts.states, choice) {
            let prog = ebpf
                .program_mut(name)
                .ok_or(LoadError::MissingProgram { name })?;
            let res = match (prog, attach.first(), &kernel_btf) {
                (aya::programs::Program::RawTracePoint(p), _, _) => p.load(),
                (aya::programs::Program::TracePoint(p), _, _) => p.load(),
                (aya::programs::Program::FExit(p), Some(Hook::Fexit(function)), Some(btf)) => {
                    p.load(function, btf)
                }
                (aya::programs::Program::KProbe(p), _, _) => p.load(),
                _ => return Err(LoadError::MissingProgram { name }),
            };
            res.map_err(|e| LoadError::Program {
                name,
                detail: one_line(&e),
            })?;
        }
        Ok(Self {
            ebpf,
            links: Vec::new(),
            final_recursion_misses: None,
            states: opts.states,
            choice,
            count_shards: shards,
        })
    }

    /// Attaches every program to its hooks.
    pub fn attach(&mut self) -> Result<(), LoadError> {
        for &(name, hooks) in programs(self.states, self.choice) {
            for &hook in hooks {
                let link = match hook {
                    Hook::Tracepoint(category, event) => {
                        let tp: &mut TracePoint = self.typed(name)?;
                        tp.attach(category, event)
                            .map(|id| Link::Tracepoint(name, id))
                            .map_err(|cause| {
                                attach_error(name, format!("{category}:{event}"), cause)
                            })?
                    }
                    Hook::Raw(event) => {
                        let raw: &mut RawTracePoint = self.typed(name)?;
                        raw.attach(event)
                            .map(|id| Link::Raw(name, id))
                            .map_err(|cause| attach_error(name, event.to_string(), cause))?
                    }
                    Hook::Fexit(function) => {
                        let p: &mut FExit = self.typed(name)?;
                        p.attach()
                            .map(|id| Link::Fexit(name, id))
                            .map_err(|cause| {
                                function_attach_error(name, "fexit", function, &cause)
                            })?
                    }
                    Hook::Kprobe(function) => {
                        let p: &mut KProbe = self.typed(name)?;
                        p.attach(function, 0)
                            .map(|id| Link::Kprobe(name, id))
                            .map_err(|cause| {
                                function_attach_error(name, "kprobe", function, &cause)
                            })?
                    }
                };
                self.links.push(link);
            }
        }
        Ok(())
    }

    fn typed<'a, T>(&'a mut self, name: &'static str) -> Result<&'a mut T, LoadError>
    where
        &'a mut T: TryFrom<&'a mut aya::programs::Program>,
    {
        self.ebpf
            .program_mut(name)
            .and_then(|p| p.try_into().ok())
            .ok_or(LoadError::MissingProgram { name })
    }

    /// Detaches the programs: no new event is produced after this returns.
    /// Their recursion-miss counters are read first, while they are still loaded.
    pub fn detach(&mut self) {
        self.final_recursion_misses = Some(self.recursion_misses());
        // The state hook first: it starts the work the syscall hooks complete.
        while let Some(link) = self.links.pop() {
            match link {
                Link::Raw(name, id) => {
                    if let Ok(p) = self.typed::<RawTracePoint>(name) {
                        let _ = p.detach(id);
                    }
                }
                Link::Tracepoint(name, id) => {
                    if let Ok(p) = self.typed::<TracePoint>(name) {
                        let _ = p.detach(id);
                    }
                }
                Link::Fexit(name, id) => {
                    if let Ok(p) = self.typed::<FExit>(name) {
                        let _ = p.detach(id);
                    }
                }
                Link::Kprobe(name, id) => {
                    if let Ok(p) = self.typed::<KProbe>(name) {
                        let _ = p.detach(id);
                    }
                }
            }
        }
    }

    /// The ring buffer the programs write events to.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, LoadError> {
        let map = self.ebpf.take_map("EVENTS").ok_or(LoadError::Map {
            name: "EVENTS",
            cause: aya::maps::MapError::InvalidName {
                name: "EVENTS".into(),
            },
        })?;
        RingBuf::try_from(map).map_err(|cause| LoadError::Map {
            name: "EVENTS",
            cause,
        })
    }

    /// Sum over CPUs of every counter, plus the programs' recursion misses.
    pub fn counters(&self) -> Result<KernelCounters, LoadError> {
        let get = |i: u32| self.counter(i);
        Ok(KernelCounters {
            ringbuf_full: get(counter::RINGBUF_FULL)?,
            sock_inserted: get(counter::SOCK_INSERTED)?,
            sock_removed: get(counter::SOCK_REMOVED)?,
            sock_insert_failed: get(counter::SOCK_INSERT_FAILED)?,
            pending_inserted: get(counter::PENDING_INSERTED)?,
            pending_removed: get(counter::PENDING_REMOVED)?,
            pending_insert_failed: get(counter::PENDING_INSERT_FAILED)?,
            read_failed: get(counter::READ_FAILED)?,
            accept_would_block: get(counter::ACCEPT_WOULD_BLOCK)?,
            accept_interrupted: get(counter::ACCEPT_INTERRUPTED)?,
            recursion_recovered: get(counter::NESTED_HANDLED)?,
            counts_full: get(counter::COUNTS_FULL)?,
            peers_full: get(counter::PEERS_FULL)?,
            recursion_misses: self
                .final_recursion_misses
                .unwrap_or_else(|| self.recursion_misses()),
        })
    }

    /// Over how many entries the programs spread each port's counts (`PortKey::shard`).
    pub fn count_shards(&self) -> u32 {
        self.count_shards
    }

    /// A map of the loaded object.
    pub(super) fn map(&self, name: &'static str) -> Result<&Map, LoadError> {
        self.ebpf.map(name).ok_or(LoadError::Map {
            name,
            cause: aya::maps::MapError::InvalidName { name: name.into() },
        })
    }

    /// One counter of `COUNTERS`, summed over CPUs.
    fn counter(&self, index: u32) -> Result<u64, LoadError> {
        let map_err = |cause| LoadError::Map {
            name: "COUNTERS",
            cause,
        };
        let arr: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.map("COUNTERS")?).map_err(map_err)?;
        Ok(arr.get(&index, 0).map_err(map_err)?.iter().sum())
    }

    /// Entries still in the socket map, and how many of them still wait for their connect
    /// event to be emitted. The records are read only when some connect may still wait: with
    /// hundreds of thousands of sockets, reading each costs a second system call per entry.
    pub fn live_entries(&self, counters: &KernelCounters) -> Result<(u64, u64), LoadError> {
        let name = "SOCKS";
        let map: BpfHashMap<_, u64, SockInfo> = BpfHashMap::try_from(self.map(name)?)
            .map_err(|cause| LoadError::Map { name, cause })?;
        if counters.pending_inserted <= counters.pending_removed {
            return Ok((map.keys().filter(Result::is_ok).count() as u64, 0));
        }
        let (mut socks, mut pending) = (0, 0);
        for (_, info) in map.iter().filter_map(Result::ok) {
            socks += 1;
            pending += u64::from(info.connect_pending != 0);
        }
        Ok((socks, pending))
    }

    /// Runs of our programs the kernel skipped because one was already running on that CPU
    /// (a softirq interrupting a program); visible only in the program info. The backup
    /// program's own misses lose nothing (the main one ran), and the runs it handled are not
    /// lost either.
    fn recursion_misses(&self) -> u64 {
        let skipped: u64 = programs(self.states, self.choice)
            .filter(|(name, _)| *name != NESTED_PROGRAM)
            .filter_map(|(name, _)| self.ebpf.program(name))
            .filter_map(|p| p.fd().ok())
            .filter_map(|fd| prog_recursion_misses(fd.as_fd().as_raw_fd()).ok())
            .sum();
        skipped.saturating_sub(self.counter(counter::NESTED_HANDLED).unwrap_or(0))
    }
}

/// An fexit or kprobe attach failed although the probe at start-up worked.
fn function_attach_error(
    name: &'static str,
    kind: &str,
    function: &str,
    cause: &aya::programs::ProgramError,
) -> LoadError {
    LoadError::Program {
        name,
        detail: format!(
            "attaching it as {kind} to {function} failed: {} (run with --hooks syscall to use the syscall tracepoints instead)",
            one_line(cause)
        ),
    }
}

fn prog_recursion_misses(fd: i32) -> io::Result<u64> {
    Ok(crate::kernel::raw_bpf::prog_info(fd)?.recursion_misses)
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; newer ones use the memory cgroup,
/// so failing to raise the limit is expected where the capability is missing.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: valid pointer to a valid rlimit.
    let _ = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
}
