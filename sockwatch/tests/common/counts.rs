//! The in-kernel counters, driven through the library (no sockwatch process): the programs
//! loaded with a `Mode`, the ring drained on a thread, the counter maps read and compared with
//! what a scenario did in a namespace of its own.
use std::{
    collections::BTreeSet,
    io::Read as _,
    net::{Shutdown, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use sockwatch::{
    filter::Filter,
    kernel::{
        btf::VMLINUX_BTF,
        counts::KernelCounts,
        loader::{LoadOptions, Tracer, inspect},
        loss::KernelCounters,
        tracefs,
    },
};
use sockwatch_common::{
    COMM_LEN, CONN_EVENT_SIZE, ConnEvent, ErrorKey, ListenerCounts, MAX_COUNT_SHARDS, Mode,
    OutboundCounts, PortKey, ProcessCounts, ProcessKey, kind, side,
};

/// Counting, with only listen events in the ring: the mode `top` runs in.
pub const COUNTS_ONLY: Mode = Mode {
    count: 1,
    ring_kinds: (1 << kind::LISTEN) | (1 << kind::LISTEN_STOP),
};

/// The programs loaded and attached, their ring drained by a thread. Dropping it detaches them.
pub struct Run {
    tracer: Tracer,
    stop: Arc<AtomicBool>,
    drain: Option<thread::JoinHandle<Vec<ConnEvent>>>,
}

impl Run {
    pub fn start(compat: bool, ring_bytes: u32, mode: Mode) -> Self {
        let opts = LoadOptions {
            max_sockets: 65536,
            ring_bytes,
            states: false,
            btf: VMLINUX_BTF.into(),
            tracefs: None,
            force_compat: compat,
            hooks: None,
            mode,
        };
        // On a thread of its own: where tracefs is not mounted, that thread mounts it in a mount
        // namespace of its own (the process has threads: it cannot move as a whole), and the
        // programs are loaded and attached there.
        let (tracer, mut ring) = thread::spawn(move || {
            tracefs::ensure().expect("tracefs");
            let kernel = inspect(&opts).expect("inspect the kernel");
            let mut tracer =
                Tracer::load(&opts, &Filter::default(), &kernel).expect("load the programs");
            let ring = tracer.take_events().expect("the ring buffer");
            tracer.attach().expect("attach the programs");
            (tracer, ring)
        })
        .join()
        .expect("loading thread");
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let drain = thread::spawn(move || {
            let mut events = Vec::new();
            loop {
                // Read after the flag, so that the last pass sees everything before it.
                let last = stopped.load(Ordering::Acquire);
                while let Some(item) = ring.next() {
                    for chunk in item.chunks_exact(CONN_EVENT_SIZE) {
                        // SAFETY: a whole ConnEvent's bytes, read unaligned.
                        events.push(unsafe {
                            std::ptr::read_unaligned(chunk.as_ptr().cast::<ConnEvent>())
                        });
                    }
                }
                if last {
                    return events;
                }
                thread::sleep(Duration::from_millis(1));
            }
        });
        Self {
            tracer,
            stop,
            drain: Some(drain),
        }
    }

    pub fn tracer(&self) -> &Tracer {
        &self.tracer
    }

    pub fn counts(&self) -> KernelCounts {
        self.tracer.counts().expect("read the counter maps")
    }

    pub fn counters(&self) -> KernelCounters {
        self.tracer.counters().expect("read the loss counters")
    }

    /// Detaches the programs and returns every event the ring carried.
    pub fn stop(mut self) -> (Vec<ConnEvent>, KernelCounters) {
        self.tracer.detach();
        let counters = self.counters();
        self.stop.store(true, Ordering::Release);
        let events = self
            .drain
            .take()
            .expect("drain thread")
            .join()
            .expect("drain thread");
        (events, counters)
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        self.tracer.detach();
        self.stop.store(true, Ordering::Release);
        if let Some(d) = self.drain.take() {
            let _ = d.join();
        }
    }
}

/// The counts of one namespace, by what they are about.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counts {
    pub listener: Option<Listener>,
    pub outbound: Option<Outbound>,
    pub errors: Vec<(ErrorKey, u64)>,
    pub processes: Vec<(ProcessKey, ProcessCounts)>,
}

/// A listener's counts with the lifetime histogram's total instead of its buckets (976 of them
/// would fill a failed assertion's message).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Listener {
    pub accepted: u64,
    pub established: u64,
    pub closed: u64,
    pub open: i64,
    pub overflows: u64,
    pub peers: u64,
    pub lifetimes: u64,
    /// Total of the accept-queue wait histogram.
    pub queue_waits: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub retrans: u64,
}

impl Listener {
    pub fn of(c: &ListenerCounts) -> Self {
        Self {
            accepted: c.accepted,
            established: c.established,
            closed: c.closed,
            open: c.open,
            overflows: c.overflows,
            peers: c.peers,
            lifetimes: c.lifetimes.iter().sum(),
            queue_waits: c.queue_waits.iter().sum(),
            bytes_in: c.bytes_in,
            bytes_out: c.bytes_out,
            retrans: c.retrans,
        }
    }

    /// After `n` connections from one address, accepted and closed, that carried no data.
    pub fn closed_after(n: u64) -> Self {
        Self {
            accepted: n,
            established: n,
            closed: n,
            open: 0,
            overflows: 0,
            peers: 1,
            lifetimes: n,
            queue_waits: n,
            bytes_in: 0,
            bytes_out: 0,
            retrans: 0,
        }
    }
}

/// A remote port's counts with the handshake histogram's total instead of its buckets.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outbound {
    pub connects: u64,
    pub established: u64,
    pub open: i64,
    pub peers: u64,
    pub handshakes: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub retrans: u64,
}

impl Outbound {
    pub fn of(c: &OutboundCounts) -> Self {
        Self {
            connects: c.connects,
            established: c.established,
            open: c.open,
            peers: c.peers,
            handshakes: c.handshakes.iter().sum(),
            bytes_in: c.bytes_in,
            bytes_out: c.bytes_out,
            retrans: c.retrans,
        }
    }

    /// `connects` from one address, `established` of them established and closed, that
    /// carried no data.
    pub fn closed_after(connects: u64, established: u64) -> Self {
        Self {
            connects,
            established,
            open: 0,
            peers: 1,
            handshakes: established,
            ..Self::default()
        }
    }
}

pub fn port(netns: u64, port: u16, side: u8) -> PortKey {
    PortKey {
        netns: netns as u32,
        port,
        side,
        shard: 0,
    }
}

/// The counts of `listener` and `outbound` ports in `netns`, and the errors and processes of
/// that namespace.
pub fn of(all: &KernelCounts, listener: PortKey, outbound: PortKey) -> Counts {
    Counts {
        listener: all
            .listeners
            .iter()
            .find(|(k, _)| *k == listener)
            .map(|(_, v)| Listener::of(v)),
        outbound: all
            .outbound
            .iter()
            .find(|(k, _)| *k == outbound)
            .map(|(_, v)| Outbound::of(v)),
        errors: all
            .errors
            .iter()
            .filter(|(k, _)| k.port.netns == listener.netns)
            .copied()
            .collect(),
        processes: all
            .processes
            .iter()
            .filter(|(k, _)| k.port.netns == listener.netns)
            .copied()
            .collect(),
    }
}

/// Waits until both sides of `lport` in `ns` count `n` connections made and closed (the
/// server's last close can be counted before the client's); the listener's and the outbound
/// keys, and the counts as last read.
pub fn closed_on_both_sides(run: &Run, ns: u64, lport: u16, n: u64) -> (PortKey, PortKey, Counts) {
    let (lkey, okey) = (
        port(ns, lport, side::LISTENER),
        port(ns, lport, side::OUTBOUND),
    );
    let want = (
        Some(Listener::closed_after(n)),
        Some(Outbound::closed_after(n, n)),
    );
    let c = wait_for(run, |c| {
        let c = of(c, lkey, okey);
        (c.listener, c.outbound) == want
    });
    (lkey, okey, of(&c, lkey, okey))
}

/// Polls the counts until `done` says they are what is expected (bounded: 20 s, the programs
/// run as the kernel's state changes happen); returns the last read either way.
pub fn wait_for(run: &Run, done: impl Fn(&KernelCounts) -> bool) -> KernelCounts {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let c = run.counts();
        if done(&c) || Instant::now() > deadline {
            return c;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

pub fn comm(name: &str) -> [u8; COMM_LEN] {
    let mut c = [0u8; COMM_LEN];
    c[..name.len()].copy_from_slice(name.as_bytes());
    c
}

/// Runs `f` on a thread named `name` in a new network namespace; returns the namespace's inode
/// and `f`'s result.
pub fn in_new_netns<R: Send>(name: &str, f: impl FnOnce(u64) -> R + Send) -> R {
    thread::scope(|s| {
        thread::Builder::new()
            .name(name.into())
            .spawn_scoped(s, || f(super::enter_new_netns()))
            .expect("spawn")
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

/// `n` connections to `listener`, each accepted, then closed by the client first.
pub fn churn(listener: &TcpListener, n: usize) {
    let port = listener.local_addr().expect("addr").port();
    for _ in 0..n {
        let client = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        drop(client);
        // The client's FIN is read before the server closes: no RST.
        let mut buf = [0u8; 1];
        let _ = (&server).read(&mut buf);
        drop(server);
    }
}

/// `n` connections held open: (client, server) pairs.
pub fn hold(listener: &TcpListener, n: usize) -> Vec<(TcpStream, TcpStream)> {
    let port = listener.local_addr().expect("addr").port();
    (0..n)
        .map(|_| {
            let client = TcpStream::connect(("127.0.0.1", port)).expect("connect");
            let (server, _) = listener.accept().expect("accept");
            (client, server)
        })
        .collect()
}

/// Closes held connections as `churn` does.
pub fn release(held: Vec<(TcpStream, TcpStream)>) {
    for (client, server) in held {
        let _ = client.shutdown(Shutdown::Both);
        drop(client);
        let mut buf = [0u8; 1];
        let _ = (&server).read(&mut buf);
        drop(server);
    }
}

/// A port nobody listens on in this namespace: listened on once, then closed.
pub fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// `n` connects to `port`, each refused.
pub fn refused(port: u16, n: usize) {
    for _ in 0..n {
        let err = TcpStream::connect(("127.0.0.1", port)).expect_err("refused");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    }
}

/// The whole check, on one build of the programs: in a new namespace, `n` connections made,
/// accepted and closed, `m` connects refused, then `k` connections held open and closed; every
/// count exact, and (counted only) none of these connections' events in the ring.
pub fn exact_counts(compat: bool, n: usize, m: usize, k: usize) {
    let run = Run::start(compat, 1 << 20, COUNTS_ONLY);
    let name = "sw-counts";
    let me = std::process::id();
    let (ns, lport, cport) = in_new_netns(name, |ns| {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let lport = listener.local_addr().expect("addr").port();
        let cport = closed_port();
        churn(&listener, n);
        refused(cport, m);
        super::wait_connections_settled();
        let lkey = port(ns, lport, side::LISTENER);
        let okey = port(ns, lport, side::OUTBOUND);
        let ckey = port(ns, cport, side::OUTBOUND);
        let done = |c: &KernelCounts| {
            let got = of(c, lkey, okey);
            got.listener == Some(Listener::closed_after(n as u64)) && got.errors.len() == 1
        };
        let c = of(&wait_for(&run, done), lkey, okey);
        assert_eq!(c.listener, Some(Listener::closed_after(n as u64)));
        assert_eq!(c.outbound, Some(Outbound::closed_after(n as u64, n as u64)));
        assert_eq!(
            c.errors,
            [(
                ErrorKey {
                    port: ckey,
                    errno: libc::ECONNREFUSED as u32,
                    _pad: 0
                },
                m as u64
            )]
        );
        let proc_key = |port| ProcessKey {
            port,
            pid: me,
            _pad: 0,
        };
        let mut want = vec![
            (
                proc_key(okey),
                ProcessCounts {
                    connects: n as u64,
                    open: 0,
                    comm: comm(name),
                },
            ),
            (
                proc_key(ckey),
                ProcessCounts {
                    connects: m as u64,
                    open: 0,
                    comm: comm(name),
                },
            ),
        ];
        want.sort_by_key(|(k, _)| *k);
        assert_eq!(c.processes, want);
        let all = run.counts();
        let refused_port = all.outbound.iter().find(|(key, _)| *key == ckey);
        assert_eq!(
            refused_port.map(|(_, v)| Outbound::of(v)),
            Some(Outbound::closed_after(m as u64, 0))
        );

        // Held open: counted in `open` while they are, on both sides and for the process.
        let held = hold(&listener, k);
        let open = |c: &KernelCounts| {
            let got = of(c, lkey, okey);
            (
                got.listener.map(|l| l.open),
                got.outbound.map(|o| o.open),
                got.processes
                    .iter()
                    .find(|(key, _)| *key == proc_key(okey))
                    .map(|(_, p)| p.open),
            )
        };
        let k_open = (Some(k as i64), Some(k as i64), Some(k as i64));
        assert_eq!(open(&wait_for(&run, |c| open(c) == k_open)), k_open);
        release(held);
        super::wait_connections_settled();
        let none_open = (Some(0), Some(0), Some(0));
        assert_eq!(open(&wait_for(&run, |c| open(c) == none_open)), none_open);
        let total = (n + k) as u64;
        let c = of(
            &wait_for(&run, |c| {
                of(c, lkey, okey).listener.map(|l| l.closed) == Some(total)
            }),
            lkey,
            okey,
        );
        assert_eq!(c.listener, Some(Listener::closed_after(total)));
        (ns, lport, cport)
    });
    let (events, counters) = run.stop();
    assert_eq!(counters.ringbuf_full, 0, "{counters:?}");
    assert_eq!(counters.counts_full, 0, "{counters:?}");
    assert_eq!(counters.peers_full, 0, "{counters:?}");
    assert_eq!(counters.read_failed, 0, "{counters:?}");
    // Only the listeners' own events reached the ring: the closed port's short-lived one, and
    // the listener's (closed when the scenario ended).
    let ours: Vec<(u8, u16)> = events
        .iter()
        .filter(|e| u64::from(e.netns) == ns)
        .map(|e| (e.kind, e.local_port))
        .collect();
    assert_eq!(
        ours,
        [
            (kind::LISTEN, lport),
            (kind::LISTEN, cport),
            (kind::LISTEN_STOP, cport),
            (kind::LISTEN_STOP, lport),
        ],
        "{events:?}"
    );
}

/// Connections made on each CPU in turn (up to `MAX_COUNT_SHARDS` of them) are counted on one
/// entry per CPU, and the counts read add those up exactly.
pub fn counts_from_every_cpu() {
    let cpus: Vec<usize> = allowed_cpus()
        .into_iter()
        .take(MAX_COUNT_SHARDS as usize)
        .collect();
    if cpus.len() < 2 {
        eprintln!("counts from every CPU: skipped, this process may run on one CPU only");
        return;
    }
    const PER_CPU: u64 = 40;
    let n = PER_CPU * cpus.len() as u64;
    let run = Run::start(false, 1 << 16, COUNTS_ONLY);
    let (lkey, okey, counts) = in_new_netns("sw-every-cpu", |ns| {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let lport = listener.local_addr().expect("addr").port();
        // Client, server and their loopback packets all on one CPU at a time.
        for &cpu in &cpus {
            pin_to(cpu);
            churn(&listener, PER_CPU as usize);
        }
        super::wait_connections_settled();
        closed_on_both_sides(&run, ns, lport, n)
    });
    let entries = run
        .tracer()
        .listener_entries()
        .expect("read the listeners' entries");
    let shards: BTreeSet<u8> = entries
        .iter()
        .filter(|k| (k.netns, k.port, k.side) == (lkey.netns, lkey.port, lkey.side))
        .map(|k| k.shard)
        .collect();
    // One entry per CPU used, up to the number chosen (1 where the maps are preallocated).
    let mask = run.tracer().count_shards() as usize - 1;
    let want: BTreeSet<u8> = cpus.iter().map(|&c| (c & mask) as u8).collect();
    let (_, counters) = run.stop();
    // Peers 1 on each side: the peer set has one entry per port whichever CPU saw the peer.
    assert_eq!(counts.listener, Some(Listener::closed_after(n)));
    assert_eq!(counts.outbound, Some(Outbound::closed_after(n, n)));
    assert_eq!(counts.processes.len(), 1, "{:?}", counts.processes);
    assert_eq!(counts.processes[0].0.port, okey);
    assert_eq!(counts.processes[0].1.connects, n);
    assert_eq!(counts.processes[0].1.open, 0);
    assert_eq!(shards, want, "the port's entries");
    assert_eq!(counters.counts_full, 0, "{counters:?}");
}

/// The CPUs this process may run on.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is valid; sched_getaffinity fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    assert_eq!(
        rc,
        0,
        "sched_getaffinity: {}",
        std::io::Error::last_os_error()
    );
    (0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect()
}

/// Moves the calling thread to `cpu`.
fn pin_to(cpu: usize) {
    // SAFETY: as above; 0 is the calling thread.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe { libc::CPU_SET(cpu, &mut set) };
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    assert_eq!(
        rc,
        0,
        "sched_setaffinity: {}",
        std::io::Error::last_os_error()
    );
}
