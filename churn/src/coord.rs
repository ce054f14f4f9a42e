//! The coordinator, the process the user starts: optionally enters a new network namespace,
//! starts the server processes and waits until they all listen, starts the client processes
//! with their shares, follows their progress lines, enforces --max-seconds, and prints the
//! result. Every child is this same binary with a hidden `--role`; each dies with its
//! coordinator (PR_SET_PDEATHSIG), and the coordinator kills (by pid) any child that does not
//! exit when told to.
use std::{
    io::{BufRead as _, BufReader, Read as _},
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Child, ChildStdin, Command, ExitCode, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError, Sender},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    net,
    opts::{Opts, Plan, Role, share},
};

/// How long servers get to start listening.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(20);
/// After the deadline: clients may still be in one connect()/read() (bounded by their socket
/// timeouts, which never outlast the deadline by more than this).
const CLIENT_GRACE: Duration = Duration::from_secs(12);
/// How long servers get to accept the connections held, once clients have made them all.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a child gets to report and exit once told to stop.
const EXIT_GRACE: Duration = Duration::from_secs(15);

enum Msg {
    Line(usize, String),
    Eof(usize),
    StdinClosed,
}

#[derive(Default)]
struct Progress {
    listening: bool,
    accepted: u64,
    held: Option<(u64, u64)>,
    done: Option<Vec<u64>>,
    eof: bool,
}

struct Kid {
    role: Role,
    /// A client's share of the connections.
    share: u64,
    child: Child,
    stdin: Option<ChildStdin>,
    p: Progress,
}

impl Kid {
    fn apply(&mut self, line: &str) {
        let mut words = line.split_whitespace();
        let word = words.next().unwrap_or("");
        let nums: Vec<u64> = words.filter_map(|w| w.parse().ok()).collect();
        let n = |i: usize| nums.get(i).copied().unwrap_or(0);
        match word {
            "listening" => self.p.listening = true,
            "accepted" => self.p.accepted = n(0),
            "held" => self.p.held = Some((n(0), n(1))),
            "done" => self.p.done = Some(nums),
            _ => eprintln!("sockwatch-churn: unexpected line from a child: {line}"),
        }
    }

    /// A client that will make no more connections.
    fn finished(&self) -> bool {
        self.p.done.is_some() || self.p.eof
    }
}

struct Run {
    kids: Vec<Kid>,
    rx: Receiver<Msg>,
    tx: Sender<Msg>,
    stdin_closed: bool,
}

impl Run {
    fn spawn(
        &mut self,
        exe: &Path,
        role: Role,
        share: u64,
        args: &[String],
        stdin: bool,
    ) -> anyhow::Result<()> {
        let mut cmd = Command::new(exe);
        cmd.args(args)
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // SAFETY: prctl is async-signal-safe.
        unsafe { cmd.pre_exec(net::die_with_parent) };
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", exe.display()))?;
        let out = child.stdout.take().context("child stdout")?;
        let idx = self.kids.len();
        let tx = self.tx.clone();
        thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(Msg::Line(idx, line)).is_err() {
                    return;
                }
            }
            let _ = tx.send(Msg::Eof(idx));
        });
        let stdin = child.stdin.take();
        self.kids.push(Kid {
            role,
            share,
            child,
            stdin,
            p: Progress::default(),
        });
        Ok(())
    }

    /// Follows the children until `done` holds (true) or `until` passes (false).
    fn pump(&mut self, until: Instant, done: impl Fn(&Run) -> bool) -> bool {
        loop {
            if done(self) {
                return true;
            }
            let now = Instant::now();
            if now >= until {
                return false;
            }
            match self.rx.recv_timeout(until - now) {
                Ok(Msg::Line(i, line)) => self.kids[i].apply(&line),
                Ok(Msg::Eof(i)) => self.kids[i].p.eof = true,
                Ok(Msg::StdinClosed) => self.stdin_closed = true,
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                    return done(self);
                }
            }
        }
    }

    fn role(&self, role: Role) -> impl Iterator<Item = &Kid> {
        self.kids.iter().filter(move |k| k.role == role)
    }

    /// Closes the standard input of every child of `role`: they report and exit.
    fn tell_to_stop(&mut self, role: Role) {
        for k in self.kids.iter_mut().filter(|k| k.role == role) {
            k.stdin = None;
        }
    }

    /// Waits for every child to exit until `until`, then kills (by pid) those left.
    fn reap(&mut self, until: Instant) {
        for k in &mut self.kids {
            loop {
                match k.child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() < until => thread::sleep(Duration::from_millis(20)),
                    Ok(None) => {
                        eprintln!(
                            "sockwatch-churn: killing {:?} process {} (did not exit)",
                            k.role,
                            k.child.id()
                        );
                        let _ = k.child.kill();
                        let _ = k.child.wait();
                        break;
                    }
                }
            }
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        // On an early error: nothing is left running.
        for k in &mut self.kids {
            if let Ok(None) = k.child.try_wait() {
                let _ = k.child.kill();
                let _ = k.child.wait();
            }
        }
    }
}

/// The one JSON line printed at the end.
#[derive(serde::Serialize)]
struct Outcome {
    connections: u64,
    seconds: f64,
    /// Connections per second.
    rate: f64,
    errors: u64,
    /// The servers' port (on 127.0.0.1).
    port: u16,
    /// Inode of the network namespace the load ran in.
    netns: u64,
    /// Stopped by --max-seconds.
    timed_out: bool,
}

/// How often a --hold ramp says how far it is.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// `run.pump(until, done)`, calling `say` every PROGRESS_EVERY until it returns.
fn pump_saying(
    run: &mut Run,
    until: Instant,
    say: &impl Fn(&Run),
    done: impl Fn(&Run) -> bool,
) -> bool {
    loop {
        let step = (Instant::now() + PROGRESS_EVERY).min(until);
        if run.pump(step, &done) {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        say(run);
    }
}

fn remaining_ms(deadline: Instant) -> u64 {
    deadline
        .saturating_duration_since(Instant::now())
        .as_millis()
        .max(1) as u64
}

pub fn run(o: &Opts) -> anyhow::Result<ExitCode> {
    let deadline = Instant::now() + Duration::from_secs(o.max_seconds);
    if o.new_netns {
        net::enter_new_netns()?;
    }
    if let Some(path) = &o.netns {
        net::join_netns(path)?;
    }
    let fd_limit = net::raise_nofile();
    let plan = Plan::new(o, fd_limit, net::ephemeral_ports())?;
    for note in &plan.notes {
        eprintln!("sockwatch-churn: {note}");
    }
    let netns = net::netns_inode();
    // Port 0: hold a free port (bound, SO_REUSEPORT, not listening) until the servers have it.
    let probe = match o.port {
        0 => Some(net::reuseport_socket(0, false).context("cannot pick a free port")?),
        _ => None,
    };
    let port = match &probe {
        Some(p) => net::local_port(p)?,
        None => o.port,
    };
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let (tx, rx) = mpsc::channel();
    let mut run = Run {
        kids: Vec::new(),
        rx,
        tx,
        stdin_closed: false,
    };
    let common = |role: &str| -> Vec<String> {
        let mut v: Vec<String> = [
            "--role",
            role,
            "--port",
            &port.to_string(),
            "--close",
            o.close.name(),
            "--in-flight",
            &o.in_flight.to_string(),
            "--sources",
            &plan.sources.to_string(),
            "--budget-ms",
            &remaining_ms(deadline).to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if o.hold {
            v.push("--hold".into());
        }
        v
    };
    // Each client gets its share of --rate; the first ones take the remainder.
    let rate_of = |j: u32| o.rate.map(|r| share(r, plan.clients, j).0.max(1));

    for _ in 0..plan.servers {
        run.spawn(&exe, Role::Server, 0, &common("server"), true)?;
    }
    let listening = run.pump((Instant::now() + LISTEN_TIMEOUT).min(deadline), |r| {
        r.role(Role::Server).all(|k| k.p.listening) || r.role(Role::Server).any(|k| k.p.eof)
    });
    if !listening || run.role(Role::Server).any(|k| !k.p.listening) {
        bail!("the server processes did not all start listening on 127.0.0.1:{port} (see above)");
    }
    drop(probe);

    let t0 = Instant::now();
    for j in 0..plan.clients {
        let (count, first) = share(o.connections, plan.clients, j);
        if count == 0 {
            continue;
        }
        let mut args = common("client");
        args.extend([
            "--connections".to_string(),
            count.to_string(),
            "--first".to_string(),
            first.to_string(),
        ]);
        if let Some(r) = rate_of(j) {
            args.extend(["--rate".to_string(), r.to_string()]);
        }
        run.spawn(&exe, Role::Client, count, &args, o.hold)?;
    }

    let mut timed_out;
    let seconds;
    if o.hold {
        let held_sum = |r: &Run| -> u64 {
            r.role(Role::Client)
                .filter_map(|k| k.p.held)
                .map(|h| h.0)
                .sum()
        };
        let accepted_sum = |r: &Run| -> u64 { r.role(Role::Server).map(|k| k.p.accepted).sum() };
        // Progress on stderr every few seconds: a large ramp takes a while.
        let say = |r: &Run| {
            eprintln!(
                "sockwatch-churn: {:.0} s: {} of {} connections accepted",
                t0.elapsed().as_secs_f64(),
                accepted_sum(r),
                o.connections
            );
        };
        let mut all_held = pump_saying(&mut run, deadline, &say, |r| {
            r.role(Role::Client)
                .all(|k| k.p.held.is_some() || k.finished())
        });
        // Then the servers' accepts: their counts come every 0.1 s. Not forever: a connection
        // left in an accept queue (say, a server out of descriptors) must not stall the run.
        if all_held
            && !pump_saying(
                &mut run,
                (Instant::now() + ACCEPT_TIMEOUT).min(deadline),
                &say,
                |r| accepted_sum(r) >= held_sum(r),
            )
        {
            eprintln!(
                "sockwatch-churn: the servers accepted {} of the {} connections held",
                accepted_sum(&run),
                held_sum(&run)
            );
            all_held = Instant::now() < deadline;
        }
        seconds = t0.elapsed().as_secs_f64();
        timed_out = !all_held;
        let held = held_sum(&run);
        if held < o.connections {
            eprintln!(
                "sockwatch-churn: only {held} of {} connections established{}",
                o.connections,
                if timed_out {
                    " before --max-seconds"
                } else {
                    ""
                }
            );
        }
        println!("held {held}");
        let tx = run.tx.clone();
        thread::spawn(move || {
            let _ = std::io::stdin().lock().read_to_end(&mut Vec::new());
            let _ = tx.send(Msg::StdinClosed);
        });
        if !run.pump(deadline, |r| r.stdin_closed) {
            timed_out = true;
            eprintln!(
                "sockwatch-churn: --max-seconds {} reached while holding; closing",
                o.max_seconds
            );
        }
        eprintln!("sockwatch-churn: closing the {held} connections held");
        run.tell_to_stop(Role::Client);
        let by = Instant::now() + EXIT_GRACE;
        run.pump(by, |r| r.role(Role::Client).all(Kid::finished));
    } else {
        let finished = run.pump(deadline + CLIENT_GRACE, |r| {
            r.role(Role::Client).all(Kid::finished)
        });
        seconds = t0.elapsed().as_secs_f64();
        timed_out = !finished;
    }
    run.tell_to_stop(Role::Server);
    let by = Instant::now() + EXIT_GRACE;
    run.pump(by, |r| {
        r.role(Role::Server).all(|k| k.p.done.is_some() || k.p.eof)
    });
    run.reap(Instant::now() + EXIT_GRACE);

    let mut connections = 0u64;
    let mut errors = 0u64;
    for k in &run.kids {
        let n = |i: usize| {
            k.p.done
                .as_ref()
                .and_then(|d| d.get(i).copied())
                .unwrap_or(0)
        };
        match k.role {
            Role::Server => errors += n(1),
            Role::Client => match (&k.p.done, k.p.held) {
                (Some(_), _) => {
                    connections += n(0);
                    errors += n(1);
                    timed_out |= n(2) != 0;
                }
                (None, Some((ok, err))) => {
                    connections += ok;
                    errors += err;
                }
                (None, None) if k.p.eof => {
                    eprintln!(
                        "sockwatch-churn: a client process exited without reporting; its {} \
                         connections count as errors",
                        k.share
                    );
                    errors += k.share;
                }
                (None, None) => {}
            },
        }
    }
    if timed_out {
        eprintln!(
            "sockwatch-churn: stopped early at --max-seconds {}: {connections} of {} connections made",
            o.max_seconds, o.connections
        );
    }
    let rate = if seconds > 0.0 {
        connections as f64 / seconds
    } else {
        0.0
    };
    let result = Outcome {
        connections,
        seconds: (seconds * 1e6).round() / 1e6,
        rate: rate.round(),
        errors,
        port,
        netns,
        timed_out,
    };
    println!("{}", serde_json::to_string(&result)?);
    if connections == 0 {
        eprintln!("sockwatch-churn: every connection failed ({errors} errors)");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
