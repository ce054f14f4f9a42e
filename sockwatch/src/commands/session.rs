//! One tracing session, shared by `trace` and `top`: load and attach the programs, take the
//! start-up snapshot, then stream kernel events and periodic host samples into an export sink
//! and/or the aggregator until stopped; finally drain, detach and account for every loss.
use std::{
    collections::{BTreeSet, HashSet},
    io::{self, Write as _},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::oneshot,
    time::{Instant, MissedTickBehavior, interval, sleep_until},
};

use crate::{
    aggregate::{Aggregator, Conn, Expiry, HeldOpen, Summary, expiry},
    clock::WallClock,
    feed,
    filter::{Filter, WorkloadFiltering},
    host::sampler::{KernelConns, Owned, Sampler},
    host::workload::Resolver,
    kernel::decode::{self, EventKind},
    kernel::loader::{KernelSupport, LoadOptions, Tracer},
    kernel::loss::{Loss, Quiet},
    kernel::source::Source,
    record::sink::Sink,
};

/// Where the event stream is written.
pub struct Export {
    pub sink: Box<dyn Sink>,
    /// Flush after every batch (a terminal), rather than every half second.
    pub flush_each_batch: bool,
    /// Write host samples too (JSON Lines, so that `report` can rebuild the summary).
    pub samples: bool,
}

pub struct SessionOptions {
    pub load: LoadOptions,
    /// What the kernel offers (from [`crate::kernel::loader::inspect`]).
    pub kernel: KernelSupport,
    pub duration: Option<Duration>,
    pub ready_file: Option<PathBuf>,
    /// Host sampling period (and live view refresh).
    pub interval: Duration,
    pub filter: Filter,
    pub export: Option<Export>,
    /// Aggregate; `on_tick` is called with the summary after each interval.
    pub aggregate: bool,
    /// How often open connections are checked against the kernel's table (when aggregating).
    pub expire_interval: Duration,
    /// Names each event's workload (see [`workloads`]); None where it cannot.
    pub workloads: Option<Resolver>,
}

/// The resolver of a live run's workloads, with `filter`'s workload filter resolved against it
/// (saying on stderr how it is applied). Without cgroup v2 the run goes on unnamed, unless a
/// workload filter needs the names.
pub fn workloads(filter: &mut Filter, pods_dir: &Path) -> anyhow::Result<Option<Resolver>> {
    let mut resolver = Resolver::new(pods_dir.to_path_buf());
    let what = filter.workload.as_ref().map(ToString::to_string);
    let how = filter.resolve_workload(resolver.as_mut().map_err(|e| &*e), pods_dir)?;
    if let (Some(what), Some(how)) = (what, how) {
        match how {
            WorkloadFiltering::Kernel(dir) => {
                eprintln!(
                    "sockwatch: {what}: filtered in the kernel, by cgroup {}",
                    dir.display()
                );
            }
            WorkloadFiltering::Userspace(n) => eprintln!(
                "sockwatch: {what}: {n} cgroups match; filtered by sockwatch, on each event's \
                 workload"
            ),
        }
    }
    Ok(match resolver {
        Ok(r) => Some(r),
        Err(e) => {
            // Not fatal: events are still traced, without workload names.
            eprintln!("sockwatch: workloads are not named: {e}");
            None
        }
    })
}

pub struct Outcome {
    pub quiet: Quiet,
    pub loss: Loss,
    pub summary: Option<Summary>,
    /// What the kernel let the run see (`Capabilities::to_json`), when aggregating: the
    /// summary's `capabilities` (see `Summary::with_capabilities`).
    pub capabilities: Option<serde_json::Map<String, serde_json::Value>>,
    /// Host state that could not be read (not fatal).
    pub sampler_errors: (u64, Option<String>),
}

struct Pipeline {
    export: Option<Export>,
    agg: Option<Aggregator>,
    /// For host samples; events were filtered in the kernel.
    filter: Filter,
    /// What events go through: the kernel applied the filter, whatever arrives is kept.
    keep_all: Filter,
    clock: WallClock,
    /// When the start-up snapshot was taken (see `feed::reopened`).
    snapshot_ns: i64,
    decode_errors: u64,
    events: u64,
    /// Names each event's workload from its cgroup id; None where cgroup v2 cannot be read.
    workloads: Option<Resolver>,
}

impl Pipeline {
    fn record(&mut self, bytes: &[u8]) -> io::Result<()> {
        let Ok(ev) = decode::decode(bytes) else {
            self.decode_errors += 1;
            return Ok(());
        };
        if self.filter.workload.is_some() {
            // Left to userspace (see `Filter::resolve_workload`): as if the kernel had not
            // sent it.
            let workload = match (&mut self.workloads, ev.cgroup_id) {
                (Some(r), Some(id)) => Some(r.resolve(id)),
                _ => None,
            };
            if !self.filter.keeps_workload(workload) {
                return Ok(());
            }
        }
        let reopened = match &self.agg {
            Some(agg) if ev.kind == EventKind::Established => {
                let at = self.clock.unix_ns(ev.ts_ns) as i64;
                feed::reopened(agg, &ev, at, self.snapshot_ns)
            }
            _ => None,
        };
        if let Some(e) = reopened {
            // Recorded before the event, as a check's decision is: `report` replays it.
            self.samples(&[Owned::Expired(e)])?;
        }
        // Here, once per event, for the summary and the file alike: the resolver caches by id,
        // so a hash lookup each.
        let workload = match (&mut self.workloads, ev.cgroup_id) {
            (Some(r), Some(id)) => Some(r.resolve(id)),
            _ => None,
        };
        if let Some(agg) = &mut self.agg {
            feed::live_event_in(agg, &self.keep_all, &ev, workload, &self.clock);
        }
        self.events += 1;
        match &mut self.export {
            Some(e) => e.sink.event_in(&ev, workload),
            None => Ok(()),
        }
    }

    fn samples(&mut self, samples: &[Owned]) -> io::Result<()> {
        for s in samples {
            let s = s.as_sample();
            // The filter decides once, for both the summary and the file.
            let kept = match &mut self.agg {
                Some(agg) => feed::sample(agg, &self.filter, &s),
                None => feed::keeps_sample(&self.filter, &s),
            };
            if let Some(e) = &mut self.export
                && e.samples
                && kept
            {
                e.sink.sample(&s)?;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.export {
            Some(e) => e.sink.flush(),
            None => Ok(()),
        }
    }

    fn wants_samples(&self) -> bool {
        self.agg.is_some() || self.export.as_ref().is_some_and(|e| e.samples)
    }
}

fn now_ns(clock: &WallClock) -> i64 {
    clock.unix_ns(WallClock::monotonic_now()) as i64
}

/// Runs a session; `on_tick` sees the live summary after each interval (when aggregating).
pub async fn run(
    opts: SessionOptions,
    mut on_tick: impl FnMut(&Summary, u64, &Loss),
) -> anyhow::Result<Outcome> {
    let clock = WallClock::new();
    let mut pipe = Pipeline {
        export: opts.export,
        agg: opts.aggregate.then(|| {
            let mut agg = Aggregator::new();
            agg.set_capabilities(opts.kernel.capabilities.to_json());
            if opts.load.mode.count != 0 {
                agg.count_in_kernel();
            }
            agg
        }),
        filter: opts.filter,
        keep_all: Filter::default(),
        clock,
        snapshot_ns: i64::MAX,
        decode_errors: 0,
        events: 0,
        workloads: opts.workloads,
    };
    let mut sampler = Sampler::default();
    let mut expiry = Expiry::new();

    let mut tracer = Tracer::load(&opts.load, &pipe.filter, &opts.kernel)?;
    let mut source = Source::new(tracer.take_events()?).context("cannot poll the ring buffer")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    tracer.attach()?;
    // Once running: a run that fails before this names only its error.
    crate::kernel::loader::announce(&opts.kernel.capabilities);
    if pipe.wants_samples() {
        // After attaching: whatever the snapshot misses, the events see.
        let snap = sampler.snapshot(now_ns(&clock));
        // Its end: a connection established before may be in it.
        pipe.snapshot_ns = now_ns(&clock);
        pipe.samples(&snap)
            .context("writing the start-up snapshot")?;
    }
    // The header and the snapshot reach the file now: from the start it is a valid recording.
    pipe.flush().context("writing the start-up snapshot")?;
    if let Some(path) = &opts.ready_file {
        // Same rules as the output: private, and never through a planted symlink.
        let mut file = crate::record::output::create(path, false)
            .with_context(|| format!("cannot create ready file {}", path.display()))?;
        writeln!(file, "{}", std::process::id())
            .with_context(|| format!("cannot write ready file {}", path.display()))?;
    }

    let deadline = opts.duration.map(|d| Instant::now() + d);
    let mut flush_tick = interval(Duration::from_millis(500));
    flush_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut drain_tick = interval(crate::kernel::loader::POLL_INTERVAL);
    drain_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut sample_tick = interval(opts.interval);
    sample_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    sample_tick.reset();
    let mut expire_tick = interval(opts.expire_interval);
    expire_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    expire_tick.reset();
    let mut kernel_dump: Option<oneshot::Receiver<(KernelConns, Sampler)>> = None;
    // The open counts as the dump began (see `Aggregator::correct_open`).
    let mut held_at_dump = HeldOpen::default();
    let result: anyhow::Result<()> = async {
        loop {
            tokio::select! {
                r = source.next_batch(|b| pipe.record(b)) => {
                    r.context("writing events")?;
                    if pipe.export.as_ref().is_some_and(|e| e.flush_each_batch) {
                        pipe.flush().context("writing events")?;
                    }
                }
                _ = drain_tick.tick() => {
                    source.drain(|b| pipe.record(b)).context("writing events")?;
                    if pipe.export.as_ref().is_some_and(|e| e.flush_each_batch) {
                        pipe.flush().context("writing events")?;
                    }
                }
                _ = sigint.recv() => break,
                _ = sigterm.recv() => break,
                _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => break,
                _ = flush_tick.tick() => pipe.flush().context("writing events")?,
                _ = sample_tick.tick(), if pipe.wants_samples() => {
                    let pids: BTreeSet<u32> = pipe.agg.as_ref().map(Aggregator::owners).unwrap_or_default();
                    let samples = sampler.sample(now_ns(&clock), &pids);
                    pipe.samples(&samples).context("writing samples")?;
                    if let Some(agg) = &mut pipe.agg {
                        if agg.counts_in_kernel() {
                            agg.apply_counts(&tracer.counts()?, now_ns(&clock));
                        }
                        let counters = tracer.counters()?;
                        let mut loss = Loss::so_far(&counters, pipe.decode_errors);
                        loss.expired = agg.expired();
                        on_tick(&agg.summary(), pipe.events, &loss);
                    }
                }
                _ = expire_tick.tick(), if pipe.agg.is_some() && kernel_dump.is_none() => {
                    let mut listening = HashSet::new();
                    if let Some(agg) = &mut pipe.agg {
                        if agg.counts_in_kernel() {
                            agg.apply_counts(&tracer.counts()?, now_ns(&clock));
                        }
                        held_at_dump = agg.held_open();
                        listening = agg.listening_ports();
                    }
                    kernel_dump = Some(
                        dump_connections(listening, pipe.filter.clone())
                            .context("cannot start a thread to read the kernel's connections")?,
                    );
                }
                dumped = async { kernel_dump.as_mut().expect("guarded by the condition").await },
                    if kernel_dump.is_some() => {
                    kernel_dump = None;
                    let Ok((kernel, errors)) = dumped else {
                        anyhow::bail!("the thread reading the kernel's connections died");
                    };
                    sampler.absorb(errors);
                    // Closes already in the ring first: fewer connections look absent.
                    source.drain(|b| pipe.record(b)).context("writing events")?;
                    let held_after = match &mut pipe.agg {
                        Some(agg) if agg.counts_in_kernel() => {
                            agg.apply_counts(&tracer.counts()?, now_ns(&clock));
                            Some(agg.held_open())
                        }
                        _ => None,
                    };
                    let expired = match &pipe.agg {
                        Some(agg) => expiry.check(
                            agg.open_connections(),
                            |c| kernel.has(c),
                            |netns| kernel.read(netns),
                            now_ns(&clock),
                        ),
                        None => Vec::new(),
                    };
                    let expired: Vec<Owned> = expired.into_iter().map(Owned::Expired).collect();
                    pipe.samples(&expired).context("writing samples")?;
                    if let (Some(agg), Some(after)) = (&mut pipe.agg, held_after)
                        && corrects_open(&pipe.filter)
                    {
                        agg.correct_open(&kernel.open, |n| kernel.read(n), &held_at_dump, &after);
                    }
                }
            }
        }
        Ok(())
    }
    .await;

    // A last look at the kernel's connections while the programs still run. Its failure is
    // reported like the loop's, after the programs are detached.
    let mut result = result;
    let absent = match &pipe.agg {
        Some(_) if result.is_ok() => {
            match last_dump(
                &mut source,
                &mut pipe,
                &mut sampler,
                &mut drain_tick,
                &tracer,
            )
            .await
            {
                Ok(absent) => Some(absent),
                Err(e) => {
                    result = Err(e.context("the last look at the kernel's connections"));
                    None
                }
            }
        }
        _ => None,
    };
    // Stop the producers first, then take everything they produced, then count what is lost.
    tracer.detach();
    let drained = source.drain(|b| pipe.record(b)).context("writing events");
    result?;
    drained?;
    if let (Some(absent), Some(agg)) = (absent, &pipe.agg) {
        // Connections still open after every event up to after the dump, that the kernel no
        // longer had at the dump: their close was missed.
        let expired = expiry.check_final(agg.open_connections(), &absent, now_ns(&clock));
        let expired: Vec<Owned> = expired.into_iter().map(Owned::Expired).collect();
        pipe.samples(&expired).context("writing samples")?;
    }
    if let Some(agg) = &mut pipe.agg
        && agg.counts_in_kernel()
    {
        // Final: the programs are detached.
        agg.apply_counts(&tracer.counts()?, now_ns(&clock));
    }
    let counters = tracer.counters()?;
    let (live_socks, live_pending) = tracer.live_entries(&counters)?;
    let mut loss = Loss::from_counters(&counters, live_socks, live_pending, pipe.decode_errors);
    loss.expired = pipe.agg.as_ref().map_or(0, Aggregator::expired);
    let quiet = Quiet::from_counters(&counters);
    let now = clock.unix_ns(WallClock::monotonic_now());
    if let Some(e) = &mut pipe.export {
        e.sink
            .stats(&quiet, now)
            .and_then(|()| e.sink.lost(&loss, now))
            .and_then(|()| e.sink.flush())
            .context("writing the final records")?;
    }
    let summary = pipe.agg.as_mut().map(|agg| {
        agg.set_stats(quiet);
        agg.set_loss(loss);
        agg.summary()
    });
    Ok(Outcome {
        quiet,
        loss,
        summary,
        capabilities: pipe.agg.as_ref().and_then(|a| a.capabilities().cloned()),
        sampler_errors: (sampler.errors, sampler.first_error),
    })
}

/// Dumps the kernel's connections, and returns those the aggregator holds open that the dump
/// lacks. Records that arrive meanwhile are kept aside, unapplied, and applied after the
/// comparison, so the aggregator is compared as it stood when the dump began (a connection it
/// opens later is absent from the dump, yet open); they are still read from the ring, which
/// must not fill while hundreds of thousands of sockets are dumped.
async fn last_dump(
    source: &mut Source,
    pipe: &mut Pipeline,
    sampler: &mut Sampler,
    drain_tick: &mut tokio::time::Interval,
    tracer: &Tracer,
) -> anyhow::Result<HashSet<Conn>> {
    let mut listening = HashSet::new();
    let mut held_before = None;
    if let Some(agg) = &mut pipe.agg {
        listening = agg.listening_ports();
        if agg.counts_in_kernel() {
            agg.apply_counts(&tracer.counts()?, now_ns(&pipe.clock));
            held_before = Some(agg.held_open());
        }
    }
    let mut dump = dump_connections(listening, pipe.filter.clone())
        .context("cannot start a thread to read the kernel's connections")?;
    let mut held: Vec<u8> = Vec::new();
    let mut lengths: Vec<usize> = Vec::new();
    let mut hold = |b: &[u8]| {
        held.extend_from_slice(b);
        lengths.push(b.len());
        Ok(())
    };
    let kernel = loop {
        tokio::select! {
            dumped = &mut dump => match dumped {
                Ok((kernel, errors)) => {
                    sampler.absorb(errors);
                    break kernel;
                }
                Err(_) => anyhow::bail!("the thread reading the kernel's connections died"),
            },
            _ = drain_tick.tick() => {
                source.drain(&mut hold).context("reading events")?;
            }
        }
    };
    let absent: HashSet<Conn> = match &pipe.agg {
        Some(agg) => agg
            .open_connections()
            .filter(|c| kernel.read(c.netns) && !kernel.has(&expiry::canonical(c)))
            .collect(),
        None => HashSet::new(),
    };
    if let (Some(agg), Some(before)) = (&mut pipe.agg, held_before)
        && corrects_open(&pipe.filter)
    {
        // Before the events read meanwhile are applied, and less the connections the final
        // expiry will take: the open counts as they stand against the dump.
        agg.apply_counts(&tracer.counts()?, now_ns(&pipe.clock));
        let after = agg.held_open();
        let now = after.without(&agg.open_by_port(&absent));
        agg.correct_open_to(&kernel.open, |n| kernel.read(n), &before, &after, &now);
    }
    let mut at = 0;
    for len in lengths {
        pipe.record(&held[at..at + len]).context("writing events")?;
        at += len;
    }
    Ok(absent)
}

/// Whether the kernel's socket table is the truth the open counts can be corrected to: it
/// tells neither owners nor event kinds, so not with a filter on those.
fn corrects_open(filter: &Filter) -> bool {
    !filter.has_owner_criteria() && filter.kinds.is_none()
}

/// Reads every connection the kernel has, for expiry, on a thread of its own: with hundreds of
/// thousands of them the dump takes long enough for the ring buffer to fill if the event loop
/// waited for it. A thread, not a blocking task, so that exiting never waits for a dump; niced,
/// so that it does not take CPU from the ring's reader.
fn dump_connections(
    listening: HashSet<(u32, u16)>,
    filter: Filter,
) -> io::Result<oneshot::Receiver<(KernelConns, Sampler)>> {
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("sockwatch-dump".into())
        .spawn(move || {
            // Background work: the event path comes first when CPUs are short. Best effort.
            // SAFETY: plain syscalls on the calling thread.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10) };
            let mut sampler = Sampler::default();
            let keep = |c: &Conn, family| {
                filter.keeps_socket((c.local_port, c.peer_port), None, None, family)
                    && filter.keeps_netns(c.netns)
            };
            let kernel = sampler.open_connections(&listening, &keep);
            let _ = tx.send((kernel, sampler));
        })?;
    Ok(rx)
}
