//! Per-thread state: the socket a thread is connecting, and the arguments of the socket call it
//! is in. Two builds of the object keep them differently:
//!
//! - by default, in task storage (Linux 5.11), with the arguments read from the registers the
//!   syscall saved (`bpf_task_pt_regs`, 5.15): no entry hook, no hash map;
//! - with the `compat` feature (kernels without those), in hash maps keyed by thread id, with
//!   the arguments saved by entry hooks (`enter`).
//!
//! The kprobe hooks (`kprobe`) save their function's arguments at its entry in either build.
//!
//! The loader picks the build by probing the kernel.
#[cfg(feature = "compat")]
pub use compat::*;
#[cfg(not(feature = "compat"))]
pub use current::*;

#[cfg(not(feature = "compat"))]
mod current {
    use aya_ebpf::{
        bindings::{BPF_F_NO_PREALLOC, BPF_LOCAL_STORAGE_GET_F_CREATE, bpf_map_type},
        helpers::generated,
        macros::btf_map,
    };

    use crate::maps::offsets;

    /// The socket a thread is connecting (its `struct sock` address, 0 for none), from its
    /// CLOSE->SYN_SENT until its connect() returns. Task storage: the value hangs off the
    /// thread itself, so setting and taking it are pointer reads (a hash map cost an insert, a
    /// lookup and a delete per connect), it is freed with the thread, and it cannot fill up.
    #[btf_map]
    static CONNECTING: TaskStorage<u64> = TaskStorage::new();

    /// Records that the current thread is connecting `sk`.
    #[inline(always)]
    pub fn set_connecting(sk: u64) {
        if let Some(connecting) = CONNECTING.current(true) {
            *connecting = sk;
        }
    }

    /// The socket the current thread was connecting (0: none), taken: its connect() is over.
    /// A plain number, not an Option: the compiler may spill an Option's undefined payload,
    /// which the verifier refuses to read.
    #[inline(always)]
    pub fn take_connecting() -> u64 {
        match CONNECTING.current(false) {
            Some(sk) => core::mem::take(sk),
            None => 0,
        }
    }

    /// The first two arguments of the kernel function the current thread is in, saved at its
    /// entry by a kprobe (see `kprobe`), for its return probe.
    #[btf_map]
    static ARGS: TaskStorage<[u64; 2]> = TaskStorage::new();

    #[inline(always)]
    pub fn save_args(args: &[u64; 2]) {
        if let Some(saved) = ARGS.current(true) {
            crate::store::put(&mut saved[0], args[0]);
            crate::store::put(&mut saved[1], args[1]);
        }
    }

    /// The arguments `save_args` saved, taken (zero if none was).
    pub struct SavedArgs {
        arg0: u64,
        arg1: u64,
    }

    impl SavedArgs {
        #[inline(always)]
        pub fn take() -> Self {
            match ARGS.current(false) {
                Some(saved) => {
                    let taken = Self {
                        arg0: saved[0],
                        arg1: saved[1],
                    };
                    // Two zero stores in a row would become a memset call.
                    crate::store::put(&mut saved[0], 0);
                    crate::store::put(&mut saved[1], 0);
                    taken
                }
                None => Self { arg0: 0, arg1: 0 },
            }
        }

        #[inline(always)]
        pub fn arg0(&self) -> Option<u64> {
            (self.arg0 != 0).then_some(self.arg0)
        }

        #[inline(always)]
        pub fn arg1(&self) -> Option<u64> {
            (self.arg1 != 0).then_some(self.arg1)
        }
    }

    /// The first two arguments of the socket call the current thread is returning from.
    pub struct Args;

    impl Args {
        /// At a syscall's exit. Nothing is read until an argument is asked for.
        #[inline(always)]
        pub fn take() -> Self {
            Self
        }

        #[inline(always)]
        pub fn arg0(&self) -> Option<u64> {
            Some(saved_register(offsets().syscall_arg0))
        }

        #[inline(always)]
        pub fn arg1(&self) -> Option<u64> {
            Some(saved_register(offsets().syscall_arg1))
        }
    }

    /// The `struct pt_regs` field at `offset` (see `KernelOffsets::syscall_arg0`) of the
    /// registers the syscall saved at entry.
    #[inline(always)]
    fn saved_register(offset: u32) -> u64 {
        // SAFETY: both helpers return a BTF-typed pointer: the verifier checks the load against
        // `struct pt_regs` (the offset is a load-time constant) and makes it fault-safe.
        unsafe {
            let regs =
                generated::bpf_task_pt_regs(generated::bpf_get_current_task_btf()) as *const u8;
            regs.add(offset as usize).cast::<u64>().read()
        }
    }

    /// A task storage map definition (`BPF_MAP_TYPE_TASK_STORAGE`), laid out as the loader
    /// reads BTF map definitions: each field's pointee type carries one attribute.
    #[repr(C)]
    struct TaskStorage<V> {
        r#type: *const [i32; bpf_map_type::BPF_MAP_TYPE_TASK_STORAGE as usize],
        key: *const i32,
        value: *const V,
        max_entries: *const [i32; 0],
        map_flags: *const [i32; BPF_F_NO_PREALLOC as usize],
    }

    // SAFETY: the fields are placeholders that describe the map in BTF; nothing reads them.
    unsafe impl<V> Sync for TaskStorage<V> {}

    impl<V> TaskStorage<V> {
        const fn new() -> Self {
            Self {
                r#type: core::ptr::null(),
                key: core::ptr::null(),
                value: core::ptr::null(),
                max_entries: core::ptr::null(),
                map_flags: core::ptr::null(),
            }
        }

        /// The current thread's value, created zeroed if `create`; None if the kernel cannot
        /// (no memory, or another task storage operation in progress on this CPU).
        #[inline(always)]
        fn current(&self, create: bool) -> Option<&mut V> {
            let flags = if create {
                u64::from(BPF_LOCAL_STORAGE_GET_F_CREATE)
            } else {
                0
            };
            // SAFETY: the map is ours; the task pointer is the kernel's BTF-typed current task.
            let p = unsafe {
                generated::bpf_task_storage_get(
                    core::ptr::from_ref(self).cast_mut().cast(),
                    generated::bpf_get_current_task_btf().cast(),
                    core::ptr::null_mut(),
                    flags,
                )
            };
            // SAFETY: a non-null result is this thread's value, valid for the program's run.
            unsafe { p.cast::<V>().as_mut() }
        }
    }
}

#[cfg(feature = "compat")]
mod compat {
    use aya_ebpf::{helpers::bpf_get_current_pid_tgid, macros::map, maps::LruHashMap};

    /// Threads in a connect() (or an accept()) at once: LRU, so that a thread killed inside
    /// the call cannot leave an entry behind for good.
    const THREADS: u32 = 65536;

    /// The socket each thread is connecting, by thread id (see the module's doc).
    #[map]
    static CONNECTING: LruHashMap<u32, u64> = LruHashMap::with_max_entries(THREADS, 0);

    /// The first two arguments of the socket call (or kernel function) each thread is in,
    /// saved by `enter` (or by a kprobe, see `kprobe`).
    #[map]
    static ARGS: LruHashMap<u32, [u64; 2]> = LruHashMap::with_max_entries(THREADS, 0);

    #[inline(always)]
    fn tid() -> u32 {
        bpf_get_current_pid_tgid() as u32
    }

    #[inline(always)]
    pub fn set_connecting(sk: u64) {
        let _ = CONNECTING.insert(&tid(), &sk, 0);
    }

    #[inline(always)]
    pub fn take_connecting() -> u64 {
        let tid = tid();
        // SAFETY: a copy is made before the entry is removed.
        let Some(sk) = unsafe { CONNECTING.get(&tid) }.copied() else {
            return 0;
        };
        let _ = CONNECTING.remove(&tid);
        sk
    }

    /// Saves the arguments at the syscall's entry.
    #[inline(always)]
    pub fn save_args(args: &[u64; 2]) {
        let _ = ARGS.insert(&tid(), args, 0);
    }

    pub struct Args(Option<[u64; 2]>);

    /// The kprobes' saved arguments live in the same map.
    pub type SavedArgs = Args;

    impl Args {
        /// Takes the arguments saved at entry, so that none outlives its call.
        #[inline(always)]
        pub fn take() -> Self {
            let tid = tid();
            // SAFETY: a copy is made before the entry is removed.
            let args = unsafe { ARGS.get(&tid) }.copied();
            if args.is_some() {
                let _ = ARGS.remove(&tid);
            }
            Self(args)
        }

        #[inline(always)]
        pub fn arg0(&self) -> Option<u64> {
            self.0.map(|a| a[0])
        }

        #[inline(always)]
        pub fn arg1(&self) -> Option<u64> {
            self.0.map(|a| a[1])
        }
    }
}
