//! A TCP server in a separate process (the test binary re-executed), so that its pid, file
//! limit and cgroup are its own. It takes commands on stdin and answers on stdout.
use std::{
    fs,
    io::{self, BufRead, BufReader, Read, Write},
    net::TcpListener,
    os::unix::fs::MetadataExt,
    path::PathBuf,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
};

const SERVER_ENV: &str = "SOCKWATCH_TEST_SERVER";
/// The accepting thread's name: libtest names it after the entry point (15 bytes kept).
pub const SERVER_THREAD_COMM: &str = "server_process_";

/// Entry point of the server process: does nothing in a normal test run.
/// Call from a test named `server_process_entry_point` in every test binary that uses
/// [`Server`]: in the re-executed binary it becomes the server; otherwise it returns at once.
pub fn entry_point() {
    if std::env::var(SERVER_ENV).is_ok() {
        server_main();
        std::process::exit(0);
    }
}

/// The server process. It reads commands from stdin, one per line, and answers on stdout:
/// - `listen ADDR` -> `port P`
/// - `accept N`    -> accepts N connections, reads each to EOF, closes it -> `accepted N`
/// - `fill-fds`    -> lowers RLIMIT_NOFILE so the next fd cannot be allocated -> `filled`
/// - `fail N`      -> calls accept() N times, expecting EMFILE each time -> `failed N`
/// - `restore-fds` -> raises the limit again -> `restored`
fn server_main() {
    let mut listener: Option<TcpListener> = None;
    let mut saved = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    let stdin = io::stdin();
    let mut out = io::stdout();
    for line in stdin.lock().lines() {
        let line = line.expect("stdin");
        let mut words = line.split_whitespace();
        let reply = match (words.next(), words.next()) {
            (Some("listen"), Some(addr)) => {
                let l = TcpListener::bind(addr).expect("bind");
                let port = l.local_addr().expect("addr").port();
                listener = Some(l);
                format!("port {port}")
            }
            (Some("accept"), Some(n)) => {
                let l = listener.as_ref().expect("listening");
                let n: usize = n.parse().expect("n");
                for _ in 0..n {
                    let (mut s, _) = l.accept().expect("accept");
                    let mut sink = Vec::new();
                    s.read_to_end(&mut sink).expect("read");
                }
                format!("accepted {n}")
            }
            (Some("fill-fds"), _) => {
                // The lowest free fd becomes the limit: the next fd allocation fails.
                let probe = fs::File::open("/dev/null").expect("open");
                let lowest = std::os::fd::AsRawFd::as_raw_fd(&probe);
                drop(probe);
                // SAFETY: valid pointers to rlimit structs.
                unsafe {
                    libc::getrlimit(libc::RLIMIT_NOFILE, &mut saved);
                    let lowered = libc::rlimit {
                        rlim_cur: lowest as libc::rlim_t,
                        rlim_max: saved.rlim_max,
                    };
                    assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lowered), 0);
                }
                "filled".to_string()
            }
            (Some("fail"), Some(n)) => {
                let l = listener.as_ref().expect("listening");
                let n: usize = n.parse().expect("n");
                for _ in 0..n {
                    let e = l.accept().expect_err("accept must fail");
                    assert_eq!(e.raw_os_error(), Some(libc::EMFILE), "{e}");
                }
                format!("failed {n}")
            }
            (Some("restore-fds"), _) => {
                // SAFETY: valid pointer to the saved limit.
                unsafe { assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &saved), 0) };
                "restored".to_string()
            }
            _ => panic!("unknown command {line}"),
        };
        writeln!(out, "{reply}").expect("stdout");
        out.flush().expect("flush");
    }
}

/// The test side of a server process.
pub struct Server {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    cgroup: Option<Cgroup>,
}

impl Server {
    /// Starts the server process in the caller's network namespace (and, if given, cgroup).
    pub fn start(cgroup: Option<Cgroup>) -> Self {
        let mut child = Command::new(std::env::current_exe().expect("exe"))
            .args([
                "--exact",
                "server_process_entry_point",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(SERVER_ENV, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn server");
        if let Some(cg) = &cgroup {
            cg.add(child.id());
        }
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Self {
            child,
            stdin,
            stdout,
            cgroup,
        }
    }

    pub fn pid(&self) -> u64 {
        u64::from(self.child.id())
    }

    /// Sends a command and returns the reply line (the test harness's own output, which
    /// libtest prints first, is skipped).
    pub fn ask(&mut self, cmd: &str) -> String {
        writeln!(self.stdin, "{cmd}").expect("send");
        self.stdin.flush().expect("flush");
        let want = cmd.split_whitespace().next().unwrap_or("");
        loop {
            let mut line = String::new();
            let n = self.stdout.read_line(&mut line).expect("reply");
            assert!(n > 0, "server exited while answering {cmd}");
            // libtest's "test NAME ... " has no newline: the first reply shares its line.
            let reply = line.trim().rsplit(" ... ").next().unwrap_or("");
            let word = reply.split_whitespace().next().unwrap_or("");
            let expected = match want {
                "listen" => "port",
                "accept" => "accepted",
                "fill-fds" => "filled",
                "fail" => "failed",
                "restore-fds" => "restored",
                _ => "",
            };
            if word == expected {
                return reply.to_string();
            }
        }
    }

    pub fn listen(&mut self, addr: &str) -> u16 {
        let reply = self.ask(&format!("listen {addr}"));
        reply
            .strip_prefix("port ")
            .and_then(|p| p.parse().ok())
            .expect("port")
    }

    pub fn stop(mut self) {
        drop(self.stdin);
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "server process failed: {status}");
        drop(self.cgroup.take());
    }
}

/// A cgroup v2 child group for the server process, removed on drop.
pub struct Cgroup {
    dir: PathBuf,
}

impl Cgroup {
    /// None where cgroup v2 is not mounted.
    pub fn new(tag: &str) -> Option<Self> {
        let mounts = fs::read_to_string("/proc/self/mounts").ok()?;
        let root = mounts
            .lines()
            .find(|l| l.split_whitespace().nth(2) == Some("cgroup2"))?
            .split_whitespace()
            .nth(1)?
            .to_string();
        let dir = PathBuf::from(root).join(format!("sockwatch-test-{}-{tag}", std::process::id()));
        fs::create_dir(&dir).ok()?;
        Some(Self { dir })
    }

    pub fn id(&self) -> u64 {
        fs::metadata(&self.dir).expect("cgroup dir").ino()
    }

    pub fn add(&self, pid: u32) {
        fs::write(self.dir.join("cgroup.procs"), pid.to_string()).expect("join cgroup");
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.dir);
    }
}
