//! `sockwatch trace`: load, attach, stream events to a sink until stopped, then report loss.
use std::{
    fs::File,
    io::{self, BufWriter, IsTerminal, Write},
    path::PathBuf,
    time::Duration,
};

use anyhow::Context as _;
use tokio::{
    signal::unix::{SignalKind, signal},
    time::{Instant, MissedTickBehavior, interval, sleep_until},
};

use crate::{
    clock::WallClock,
    decode,
    loader::{LoadOptions, Tracer},
    loss::{Loss, Quiet},
    sink::{self, Format, Sink},
    source::Source,
};

pub struct TraceOptions {
    pub output: Option<PathBuf>,
    pub format: Format,
    pub duration: Option<Duration>,
    pub ready_file: Option<PathBuf>,
    pub load: LoadOptions,
}

/// Decoded events to the sink; records that do not decode are counted, never silently dropped.
struct Pipeline {
    sink: Box<dyn Sink>,
    decode_errors: u64,
}

impl Pipeline {
    fn record(&mut self, bytes: &[u8]) -> io::Result<()> {
        match decode::decode(bytes) {
            Ok(ev) => self.sink.event(&ev),
            Err(_) => {
                self.decode_errors += 1;
                Ok(())
            }
        }
    }
}

pub async fn run(opts: TraceOptions) -> anyhow::Result<(Quiet, Loss)> {
    let clock = WallClock::new();
    // Open the output before touching the kernel, so a bad path fails fast.
    let (out, interactive): (Box<dyn Write>, bool) = match &opts.output {
        Some(path) => {
            let file = File::create(path)
                .with_context(|| format!("cannot create output file {}", path.display()))?;
            (Box::new(BufWriter::with_capacity(1 << 16, file)), false)
        }
        None => (
            Box::new(BufWriter::new(io::stdout())),
            io::stdout().is_terminal(),
        ),
    };
    let mut pipe = Pipeline {
        sink: sink::make(opts.format, out, clock).context("cannot write output")?,
        decode_errors: 0,
    };

    let mut tracer = Tracer::load(&opts.load)?;
    let mut source = Source::new(tracer.take_events()?).context("cannot poll the ring buffer")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    tracer.attach()?;
    if let Some(path) = &opts.ready_file {
        std::fs::write(path, format!("{}\n", std::process::id()))
            .with_context(|| format!("cannot create ready file {}", path.display()))?;
    }
    if interactive || opts.output.is_some() {
        eprintln!("sockwatch: tracing TCP connections; Ctrl-C to stop");
    }

    let deadline = opts.duration.map(|d| Instant::now() + d);
    let mut flush_tick = interval(Duration::from_millis(500));
    flush_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let result: anyhow::Result<()> = async {
        loop {
            tokio::select! {
                r = source.next_batch(|b| pipe.record(b)) => {
                    r.context("writing events")?;
                    if interactive {
                        pipe.sink.flush().context("writing events")?;
                    }
                }
                _ = sigint.recv() => break,
                _ = sigterm.recv() => break,
                _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => break,
                _ = flush_tick.tick() => pipe.sink.flush().context("writing events")?,
            }
        }
        Ok(())
    }
    .await;

    // Stop the producers first, then take everything they produced, then count what is lost.
    tracer.detach();
    let drained = source.drain(|b| pipe.record(b)).context("writing events");
    result?;
    drained?;
    let counters = tracer.counters()?;
    let (live_socks, live_pending) = tracer.live_entries()?;
    let loss = Loss::from_counters(&counters, live_socks, live_pending, pipe.decode_errors);
    let quiet = Quiet::from_counters(&counters);
    let now = clock.unix_ns(WallClock::monotonic_now());
    pipe.sink
        .stats(&quiet, now)
        .and_then(|()| pipe.sink.lost(&loss, now))
        .and_then(|()| pipe.sink.flush())
        .context("writing the final records")?;
    Ok((quiet, loss))
}
