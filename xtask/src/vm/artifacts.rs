//! The test binaries to run in the VMs, from cargo's own list of what `cargo test` builds.
//! Same command, profile and target dir as the host's `cargo test`, so after it nothing
//! rebuilds.
use std::{
    io::BufRead as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

/// Packages whose integration tests can run in a VM, by directory.
pub const PACKAGES: &[&str] = &["sockwatch", "churn"];

#[derive(Debug, Clone)]
pub struct TestBinary {
    /// The target name (`accept` for tests/accept.rs).
    pub name: String,
    /// The package directory: where cargo runs it.
    pub dir: PathBuf,
    pub exe: PathBuf,
}

pub struct Built {
    /// Integration test binaries of PACKAGES.
    pub tests: Vec<TestBinary>,
    /// Plain binaries of PACKAGES (sockwatch, sockwatch-churn), by target name.
    pub bins: Vec<(String, PathBuf)>,
}

pub fn build(root: &Path) -> anyhow::Result<Built> {
    let mut child = Command::new("cargo")
        .args([
            "test",
            "--workspace",
            "--all-targets",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(root)
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run cargo test --no-run")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut built = Built {
        tests: Vec::new(),
        bins: Vec::new(),
    };
    for line in std::io::BufReader::new(stdout).lines() {
        let Ok(msg) = serde_json::from_str::<Value>(&line?) else {
            continue;
        };
        add(&mut built, root, &msg);
    }
    if !child.wait()?.success() {
        bail!("cargo test --no-run failed: the test binaries did not build");
    }
    built
        .tests
        .sort_by(|a, b| (&a.dir, &a.name).cmp(&(&b.dir, &b.name)));
    Ok(built)
}

fn add(built: &mut Built, root: &Path, msg: &Value) {
    if msg["reason"] != "compiler-artifact" {
        return;
    }
    let (Some(exe), Some(manifest), Some(name)) = (
        msg["executable"].as_str(),
        msg["manifest_path"].as_str(),
        msg["target"]["name"].as_str(),
    ) else {
        return;
    };
    let dir = Path::new(manifest).parent().unwrap_or(root).to_path_buf();
    if !PACKAGES.iter().any(|p| root.join(p) == dir) {
        return;
    }
    let kinds = msg["target"]["kind"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let is = |k: &str| kinds.iter().any(|v| v == k);
    let test_profile = msg["profile"]["test"].as_bool().unwrap_or(false);
    if is("test") {
        built.tests.push(TestBinary {
            name: name.to_string(),
            dir,
            exe: PathBuf::from(exe),
        });
    } else if is("bin") && !test_profile {
        built.bins.push((name.to_string(), PathBuf::from(exe)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_integration_tests_and_plain_bins() {
        let root = Path::new("/w");
        let mut b = Built {
            tests: Vec::new(),
            bins: Vec::new(),
        };
        let msg = |name: &str, kind: &str, test: bool, dir: &str, exe: &str| {
            serde_json::json!({
                "reason": "compiler-artifact",
                "manifest_path": format!("/w/{dir}/Cargo.toml"),
                "target": {"name": name, "kind": [kind]},
                "profile": {"test": test},
                "executable": exe,
            })
        };
        add(
            &mut b,
            root,
            &msg(
                "accept",
                "test",
                true,
                "sockwatch",
                "/w/target/debug/deps/accept-1",
            ),
        );
        add(
            &mut b,
            root,
            &msg(
                "sockwatch",
                "bin",
                false,
                "sockwatch",
                "/w/target/debug/sockwatch",
            ),
        );
        add(
            &mut b,
            root,
            &msg(
                "sockwatch",
                "bin",
                true,
                "sockwatch",
                "/w/target/debug/deps/sockwatch-2",
            ),
        );
        add(
            &mut b,
            root,
            &msg("xtask", "bin", false, "xtask", "/w/target/debug/xtask"),
        );
        add(
            &mut b,
            root,
            &msg(
                "smoke",
                "test",
                true,
                "churn",
                "/w/target/debug/deps/smoke-3",
            ),
        );
        let tests: Vec<&str> = b.tests.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(tests, ["accept", "smoke"]);
        assert_eq!(b.tests[1].dir, Path::new("/w/churn"));
        assert_eq!(
            b.bins,
            [(
                "sockwatch".to_string(),
                PathBuf::from("/w/target/debug/sockwatch")
            )]
        );
    }
}
