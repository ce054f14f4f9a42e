//! What a VM reports, and the parser that reads it.
//!
//! Inside the VM, /init writes everything to the second serial port (kept apart from the
//! kernel's console): marker lines starting with `@@vm ` frame the parts (the kernel release,
//! `sockwatch check` output, each test binary's run) and between them is the plain output of
//! the programs. Test results come from libtest's own lines (`test NAME ... ok`), since stable
//! Rust has no machine-readable test output. The parser is fed line by line while the VM runs,
//! so results can be shown as they arrive.
use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

const MARK: &str = "@@vm ";
/// A report a test prints for people (a measurement's table) starts with a line
/// `=== report: TITLE ===` and ends with `=== end report ===`; it is kept whole.
const REPORT_BEGIN: &str = "=== report: ";
const REPORT_END: &str = "=== end report ===";
/// Lines of a failed test's captured output kept as its detail.
const DETAIL_LINES: usize = 40;

/// target/vm/results.json.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResults {
    pub sockwatch_version: String,
    pub date: String,
    /// "core" or "full".
    pub test_set: String,
    pub filter: Option<String>,
    pub kernels: Vec<KernelResult>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct KernelResult {
    pub suite: String,
    /// The versioned image package and its Debian version.
    pub package: String,
    pub version: String,
    /// What `uname -r` said inside the VM (or, if it never said, the modules directory name).
    pub release: String,
    pub duration_secs: f64,
    /// "ok", or what went wrong with the VM itself: "fetch failed", "timeout", "crashed",
    /// "no results", "error".
    pub outcome: String,
    pub problem: Option<String>,
    /// `sockwatch check --format json` output, when it gave some.
    pub check: Option<Value>,
    pub check_error: Option<String>,
    pub binaries: Vec<BinaryResult>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BinaryResult {
    pub name: String,
    /// None when the VM stopped before the binary finished.
    pub exit_code: Option<i32>,
    /// libtest printed its `test result:` line.
    pub complete: bool,
    pub tests: Vec<TestResult>,
    /// Reports the binary printed (see REPORT_BEGIN), in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reports: Vec<Report>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub title: String,
    /// The lines between the frame's two lines.
    pub text: String,
    /// False when the output stopped before the closing line.
    pub complete: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestResult {
    pub name: String,
    pub outcome: Outcome,
    /// For failures: the start of the test's captured output (the panic message).
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    Failed,
    Ignored,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub passed: usize,
    pub failed: usize,
    pub ignored: usize,
}

impl KernelResult {
    /// Test counts; a VM that did not finish properly counts as one more failure, so that the
    /// totals never read "0 failed" for a run that failed.
    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for t in self.binaries.iter().flat_map(|b| &b.tests) {
            match t.outcome {
                Outcome::Ok => c.passed += 1,
                Outcome::Failed => c.failed += 1,
                Outcome::Ignored => c.ignored += 1,
            }
        }
        if self.outcome != "ok" {
            c.failed += 1;
        }
        c
    }
}

/// Something to show while the VM runs.
#[derive(Debug, PartialEq)]
pub enum Event {
    Uname(String),
    Check {
        exit_code: String,
    },
    Start(String),
    Test {
        binary: String,
        name: String,
        outcome: Outcome,
    },
    End {
        binary: String,
        exit_code: String,
    },
    Warn(String),
}

/// The results channel of one VM, parsed as it arrives.
#[derive(Default)]
pub struct Channel {
    pub uname: Option<String>,
    pub done: bool,
    check_out: Option<String>,
    check_rc: Option<String>,
    check_err: Option<String>,
    mode: Mode,
    current: Option<Libtest>,
    binaries: Vec<BinaryResult>,
}

#[derive(Default, PartialEq)]
enum Mode {
    #[default]
    Idle,
    Check,
    CheckErr,
    Run,
}

/// What the channel said once the VM is gone.
pub struct Parsed {
    pub uname: Option<String>,
    pub done: bool,
    pub check: Option<Value>,
    pub check_error: Option<String>,
    pub binaries: Vec<BinaryResult>,
}

impl Channel {
    pub fn line(&mut self, line: &str) -> Vec<Event> {
        let line = line.trim_end_matches('\r');
        let Some(mark) = line.strip_prefix(MARK) else {
            match self.mode {
                Mode::Check => push_line(self.check_out.get_or_insert_default(), line),
                Mode::CheckErr => push_line(self.check_err.get_or_insert_default(), line),
                Mode::Run => {
                    if let Some(lt) = self.current.as_mut() {
                        return lt.line(line);
                    }
                }
                Mode::Idle => {}
            }
            return Vec::new();
        };
        let (word, rest) = mark.split_once(' ').unwrap_or((mark, ""));
        match word {
            "uname" => {
                self.uname = Some(rest.to_string());
                vec![Event::Uname(rest.to_string())]
            }
            "check-begin" => {
                self.mode = Mode::Check;
                self.check_out = Some(String::new());
                Vec::new()
            }
            "check-end" => {
                self.mode = Mode::Idle;
                self.check_rc = Some(rest.to_string());
                vec![Event::Check {
                    exit_code: rest.to_string(),
                }]
            }
            "check-stderr-begin" => {
                self.mode = Mode::CheckErr;
                Vec::new()
            }
            "check-stderr-end" => {
                self.mode = Mode::Idle;
                Vec::new()
            }
            "run-begin" => {
                let mut events = self.close_binary(None);
                self.mode = Mode::Run;
                self.current = Some(Libtest::new(rest));
                events.push(Event::Start(rest.to_string()));
                events
            }
            "run-end" => {
                let (name, rc) = rest.rsplit_once(' ').unwrap_or((rest, ""));
                let mut events = self.close_binary(rc.parse().ok());
                self.mode = Mode::Idle;
                events.push(Event::End {
                    binary: name.to_string(),
                    exit_code: rc.to_string(),
                });
                events
            }
            "warn" => vec![Event::Warn(rest.to_string())],
            "done" => {
                self.done = true;
                Vec::new()
            }
            _ => vec![Event::Warn(format!("unknown marker: {line}"))],
        }
    }

    /// Ends the binary being run: with `None` the VM stopped before it finished.
    fn close_binary(&mut self, exit_code: Option<i32>) -> Vec<Event> {
        let Some(lt) = self.current.take() else {
            return Vec::new();
        };
        let (result, events) = lt.finish(exit_code);
        self.binaries.push(result);
        events
    }

    pub fn finish(mut self) -> (Parsed, Vec<Event>) {
        let events = self.close_binary(None);
        let (check, check_error) = self.check_result();
        let parsed = Parsed {
            uname: self.uname,
            done: self.done,
            check,
            check_error,
            binaries: self.binaries,
        };
        (parsed, events)
    }

    fn check_result(&self) -> (Option<Value>, Option<String>) {
        let Some(rc) = &self.check_rc else {
            return (None, Some("sockwatch check did not finish".into()));
        };
        let out = self.check_out.as_deref().unwrap_or_default().trim();
        let err = self.check_err.as_deref().unwrap_or_default().trim();
        let first_err = err.lines().next().unwrap_or("");
        match serde_json::from_str::<Value>(out) {
            Ok(v) if rc == "0" => (Some(v), None),
            Ok(v) => (Some(v), Some(format!("exit code {rc}: {first_err}"))),
            Err(_) if out.is_empty() => (
                None,
                Some(format!("exit code {rc}, no output: {first_err}")),
            ),
            Err(e) => (
                None,
                Some(format!(
                    "exit code {rc}, output is not JSON ({e}): {first_err}"
                )),
            ),
        }
    }
}

fn push_line(buf: &mut String, line: &str) {
    buf.push_str(line);
    buf.push('\n');
}

/// One test binary's libtest output.
struct Libtest {
    binary: String,
    tests: Vec<TestResult>,
    /// Started tests whose result line was split by other output (a child process of the test
    /// writes to the same stream, uncaptured); settled by the closing summary.
    pending: Vec<String>,
    section: Section,
    detail_of: Option<String>,
    details: HashMap<String, Vec<String>>,
    failure_list: Vec<String>,
    complete: bool,
    /// The report being read: its title and lines so far.
    report: Option<(String, Vec<String>)>,
    reports: Vec<Report>,
}

#[derive(PartialEq)]
enum Section {
    Tests,
    /// `---- NAME stdout ----` blocks.
    Details,
    /// The closing list of failed test names.
    List,
}

fn outcome(word: &str) -> Option<Outcome> {
    match word.trim() {
        "ok" => Some(Outcome::Ok),
        "FAILED" => Some(Outcome::Failed),
        w if w == "ignored" || w.starts_with("ignored, ") => Some(Outcome::Ignored),
        _ => None,
    }
}

impl Libtest {
    fn new(binary: &str) -> Self {
        Self {
            binary: binary.to_string(),
            tests: Vec::new(),
            pending: Vec::new(),
            section: Section::Tests,
            detail_of: None,
            details: HashMap::new(),
            failure_list: Vec::new(),
            complete: false,
            report: None,
            reports: Vec::new(),
        }
    }

    fn record(&mut self, name: String, o: Outcome) -> Event {
        self.tests.push(TestResult {
            name: name.clone(),
            outcome: o,
            detail: None,
        });
        Event::Test {
            binary: self.binary.clone(),
            name,
            outcome: o,
        }
    }

    fn line(&mut self, line: &str) -> Vec<Event> {
        if let Some((title, lines)) = self.report.as_mut() {
            if line == REPORT_END {
                self.reports.push(Report {
                    title: std::mem::take(title),
                    text: lines.join("\n"),
                    complete: true,
                });
                self.report = None;
            } else {
                lines.push(line.to_string());
            }
            return Vec::new();
        }
        if let Some(title) = line
            .strip_prefix(REPORT_BEGIN)
            .and_then(|t| t.strip_suffix(" ==="))
        {
            self.report = Some((title.to_string(), Vec::new()));
            return Vec::new();
        }
        if line.starts_with("test result: ") {
            self.complete = true;
            let pending = std::mem::take(&mut self.pending);
            return pending
                .into_iter()
                .map(|name| {
                    let o = if self.failure_list.contains(&name) {
                        Outcome::Failed
                    } else {
                        Outcome::Ok
                    };
                    self.record(name, o)
                })
                .collect();
        }
        match self.section {
            Section::Tests => {
                if line == "failures:" {
                    self.section = Section::Details;
                } else if let Some(rest) = line.strip_prefix("test ")
                    && let Some((name, result)) = rest.split_once(" ... ")
                {
                    let name = name.trim_end_matches(" - should panic").to_string();
                    match outcome(result) {
                        Some(o) => return vec![self.record(name, o)],
                        None => self.pending.push(name),
                    }
                } else if let Some(o) = outcome(line)
                    && let Some(name) = self.pending.pop()
                {
                    return vec![self.record(name, o)];
                }
            }
            Section::Details => {
                if let Some(name) = line.strip_prefix("---- ").and_then(|l| {
                    l.strip_suffix(" stdout ----")
                        .or(l.strip_suffix(" stderr ----"))
                }) {
                    self.detail_of = Some(name.to_string());
                } else if line == "failures:" {
                    self.section = Section::List;
                } else if let Some(name) = &self.detail_of {
                    let d = self.details.entry(name.clone()).or_default();
                    if d.len() < DETAIL_LINES {
                        d.push(line.to_string());
                    }
                }
            }
            Section::List => {
                if let Some(name) = line.strip_prefix("    ") {
                    self.failure_list.push(name.trim().to_string());
                }
            }
        }
        Vec::new()
    }

    fn finish(mut self, exit_code: Option<i32>) -> (BinaryResult, Vec<Event>) {
        let mut events = Vec::new();
        // Without libtest's summary the run was cut short: the test it was in never ended.
        for name in std::mem::take(&mut self.pending) {
            events.push(self.record(name.clone(), Outcome::Failed));
            if let Some(t) = self.tests.last_mut() {
                t.detail = Some(match exit_code {
                    None => "no result: the VM stopped during this test".to_string(),
                    Some(rc) => {
                        format!("no result: the test binary exited ({rc}) during this test")
                    }
                });
            }
        }
        for t in &mut self.tests {
            if t.outcome == Outcome::Failed
                && t.detail.is_none()
                && let Some(d) = self.details.get(&t.name)
            {
                let text = d.join("\n").trim().to_string();
                t.detail = (!text.is_empty()).then_some(text);
            }
        }
        if let Some((title, lines)) = self.report.take() {
            self.reports.push(Report {
                title,
                text: lines.join("\n"),
                complete: false,
            });
        }
        let result = BinaryResult {
            name: self.binary,
            exit_code,
            complete: self.complete,
            tests: self.tests,
            reports: self.reports,
        };
        (result, events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(text: &str) -> (Parsed, Vec<Event>) {
        let mut ch = Channel::default();
        let mut events = Vec::new();
        for l in text.lines() {
            events.extend(ch.line(l));
        }
        let (parsed, more) = ch.finish();
        events.extend(more);
        (parsed, events)
    }

    fn outcomes(b: &BinaryResult) -> Vec<(&str, Outcome)> {
        b.tests
            .iter()
            .map(|t| (t.name.as_str(), t.outcome))
            .collect()
    }

    const CHECK: &str = "@@vm uname 6.1.0-50-cloud-amd64\r\n@@vm check-begin\n{\"kernel\": \"6.1.0-50-cloud-amd64\", \"capabilities\": []}\n@@vm check-end 0\n@@vm check-stderr-begin\n@@vm check-stderr-end\n";

    #[test]
    fn ok_failed_ignored_and_details() {
        let text = format!(
            "{CHECK}@@vm run-begin accept\n\
             \n\
             running 4 tests\n\
             test accepts_counted ... ok\n\
             test emfile_reported ... FAILED\n\
             test slow_one ... ignored, takes minutes\n\
             test panics - should panic ... ok\n\
             \n\
             failures:\n\
             \n\
             ---- emfile_reported stdout ----\n\
             \n\
             thread 'emfile_reported' panicked at sockwatch/tests/accept.rs:10:5:\n\
             sockwatch did not start: exit status: 1\n\
             \n\
             \n\
             failures:\n\
             \x20   emfile_reported\n\
             \n\
             test result: FAILED. 2 passed; 1 failed; 1 ignored; 0 measured; 0 filtered out; finished in 1.00s\n\
             \n\
             @@vm run-end accept 101\n\
             @@vm done\n"
        );
        let (p, events) = feed(&text);
        assert!(p.done);
        assert_eq!(p.uname.as_deref(), Some("6.1.0-50-cloud-amd64"));
        assert_eq!(p.check.unwrap()["kernel"], "6.1.0-50-cloud-amd64");
        assert_eq!(p.check_error, None);
        let b = &p.binaries[0];
        assert!(b.complete);
        assert_eq!(b.exit_code, Some(101));
        assert_eq!(
            outcomes(b),
            [
                ("accepts_counted", Outcome::Ok),
                ("emfile_reported", Outcome::Failed),
                ("slow_one", Outcome::Ignored),
                ("panics", Outcome::Ok),
            ]
        );
        let detail = b.tests[1].detail.as_deref().unwrap();
        assert!(
            detail.starts_with("thread 'emfile_reported' panicked"),
            "{detail}"
        );
        assert!(detail.contains("did not start"));
        assert!(events.contains(&Event::Test {
            binary: "accept".into(),
            name: "emfile_reported".into(),
            outcome: Outcome::Failed
        }));
    }

    #[test]
    fn output_of_a_child_in_the_middle_of_a_result_line() {
        let text = "@@vm run-begin trace\n\
             running 2 tests\n\
             test traced ... sockwatch: warning: something\n\
             more child output\n\
             ok\n\
             test other ... child says hi\n\
             FAILED\n\
             \n\
             failures:\n\
             \n\
             ---- other stdout ----\n\
             thread 'other' panicked at x.rs:1:1:\n\
             boom\n\
             \n\
             failures:\n\
             \x20   other\n\
             \n\
             test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.00s\n\
             @@vm run-end trace 101\n@@vm done\n";
        let (p, _) = feed(text);
        assert_eq!(
            outcomes(&p.binaries[0]),
            [("traced", Outcome::Ok), ("other", Outcome::Failed)]
        );
    }

    #[test]
    fn result_lost_in_child_output_is_settled_by_the_summary() {
        let text = "@@vm run-begin t\n\
             test a ... child output without newlineok\n\
             test b ... child output without newlineFAILED\n\
             failures:\n\
             ---- b stdout ----\n\
             boom\n\
             failures:\n\
             \x20   b\n\
             test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.00s\n\
             @@vm run-end t 101\n@@vm done\n";
        let (p, _) = feed(text);
        assert_eq!(
            outcomes(&p.binaries[0]),
            [("a", Outcome::Ok), ("b", Outcome::Failed)]
        );
        assert_eq!(p.binaries[0].tests[1].detail.as_deref(), Some("boom"));
    }

    #[test]
    fn panic_aborting_the_binary_mid_test() {
        // A panic outside the test's thread (or an abort) kills the binary: no summary.
        let text = "@@vm run-begin t\n\
             running 3 tests\n\
             test first ... ok\n\
             test second ... thread '<unnamed>' panicked at src/x.rs:3:3:\n\
             fatal runtime error: something, aborting\n\
             @@vm run-end t 134\n\
             @@vm run-begin u\n\
             running 1 test\n\
             test third ... ok\n\
             test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.10s\n\
             @@vm run-end u 0\n@@vm done\n";
        let (p, _) = feed(text);
        let t = &p.binaries[0];
        assert!(!t.complete);
        assert_eq!(t.exit_code, Some(134));
        assert_eq!(
            outcomes(t),
            [("first", Outcome::Ok), ("second", Outcome::Failed)]
        );
        assert!(
            t.tests[1]
                .detail
                .as_deref()
                .unwrap()
                .contains("exited (134)")
        );
        assert!(p.binaries[1].complete);
        assert!(p.done);
    }

    #[test]
    fn a_report_between_its_frame_lines_is_kept_whole() {
        let text = "@@vm run-begin hook_cost\n\
             running 1 test\n\
             test measure_hook_cost ... \n\
             === report: hook cost ===\n\
             configuration  ratio\n\
             \n\
             test this ... is not a result\n\
             ok\n\
             === end report ===\n\
             ok\n\
             test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 2 filtered out; finished in 9.00s\n\
             @@vm run-end hook_cost 0\n@@vm done\n";
        let (p, _) = feed(text);
        let b = &p.binaries[0];
        assert_eq!(outcomes(b), [("measure_hook_cost", Outcome::Ok)]);
        assert_eq!(
            b.reports,
            [Report {
                title: "hook cost".into(),
                text: "configuration  ratio\n\ntest this ... is not a result\nok".into(),
                complete: true,
            }]
        );
        let (p, _) = feed("@@vm run-begin t\n=== report: x ===\nhalf a table\n");
        assert_eq!(p.binaries[0].reports[0].text, "half a table");
        assert!(!p.binaries[0].reports[0].complete);
    }

    #[test]
    fn truncated_run_vm_died() {
        let text = format!(
            "{CHECK}@@vm run-begin accept\nrunning 3 tests\ntest one ... ok\ntest two ... "
        );
        let (p, events) = feed(&text);
        assert!(!p.done);
        let b = &p.binaries[0];
        assert!(!b.complete);
        assert_eq!(b.exit_code, None);
        assert_eq!(
            outcomes(b),
            [("one", Outcome::Ok), ("two", Outcome::Failed)]
        );
        assert!(b.tests[1].detail.as_deref().unwrap().contains("VM stopped"));
        assert!(matches!(
            events.last(),
            Some(Event::Test {
                outcome: Outcome::Failed,
                ..
            })
        ));
    }

    #[test]
    fn check_missing_or_failing() {
        let text = "@@vm check-begin\n@@vm check-end 2\n@@vm check-stderr-begin\nerror: unrecognized subcommand 'check'\n@@vm check-stderr-end\n@@vm done\n";
        let (p, _) = feed(text);
        assert!(p.check.is_none());
        let e = p.check_error.unwrap();
        assert!(
            e.contains("exit code 2") && e.contains("unrecognized subcommand"),
            "{e}"
        );
        let (p, _) = feed("@@vm uname x\n");
        assert!(p.check_error.unwrap().contains("did not finish"));
    }

    #[test]
    fn counts_add_a_failure_for_a_broken_vm() {
        let mut k = KernelResult {
            outcome: "ok".into(),
            binaries: vec![BinaryResult {
                name: "t".into(),
                exit_code: Some(0),
                complete: true,
                reports: Vec::new(),
                tests: vec![
                    TestResult {
                        name: "a".into(),
                        outcome: Outcome::Ok,
                        detail: None,
                    },
                    TestResult {
                        name: "b".into(),
                        outcome: Outcome::Ignored,
                        detail: None,
                    },
                ],
            }],
            ..Default::default()
        };
        assert_eq!(
            k.counts(),
            Counts {
                passed: 1,
                failed: 0,
                ignored: 1
            }
        );
        k.outcome = "timeout".into();
        assert_eq!(k.counts().failed, 1);
    }
}
