//! `--baseline REV`: sockwatch built at another git revision, for `trace` and `top` rows of that
//! build in every round. The revision is checked out in a worktree of its own under
//! target/bench/ (`git worktree add --detach`; reused when it is already at that commit) and
//! built there in release mode with a target directory of its own, so neither the working tree
//! nor target/release is touched.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use serde::Serialize;

use super::progress;

#[derive(Debug, Clone, Serialize)]
pub(super) struct Baseline {
    /// As given on the command line.
    pub(super) rev: String,
    /// The full commit it names.
    pub(super) commit: String,
    /// Its first line.
    pub(super) subject: String,
    pub(super) worktree: PathBuf,
    pub(super) binary: PathBuf,
}

fn git(root: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("git")
        .current_dir(root)
        .args(args)
        .output()
        .with_context(|| format!("cannot run git {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The directory name for a commit's worktree (and, with `-target`, its build).
pub(super) fn dir_name(commit: &str) -> String {
    format!("baseline-{}", &commit[..commit.len().min(12)])
}

/// Checks `rev` out in target/bench/baseline-COMMIT and builds its sockwatch there.
pub(super) fn prepare(root: &Path, rev: &str) -> anyhow::Result<Baseline> {
    let commit = git(
        root,
        &["rev-parse", "--verify", &format!("{rev}^{{commit}}")],
    )
    .with_context(|| format!("--baseline {rev} is not a commit of this repository"))?;
    let subject = git(root, &["log", "-1", "--format=%s", &commit])?;
    let base = root.join("target/bench");
    let worktree = base.join(dir_name(&commit));
    let target = base.join(format!("{}-target", dir_name(&commit)));
    let at = worktree
        .join(".git")
        .exists()
        .then(|| git(&worktree, &["rev-parse", "HEAD"]).ok())
        .flatten();
    if at.as_deref() == Some(commit.as_str()) {
        progress(format!(
            "baseline: reusing the worktree {} at {commit}",
            worktree.display()
        ));
    } else {
        if worktree.exists() {
            progress(format!(
                "baseline: removing the stale worktree {}",
                worktree.display()
            ));
            let _ = git(
                root,
                &[
                    "worktree",
                    "remove",
                    "--force",
                    &worktree.display().to_string(),
                ],
            );
            let _ = std::fs::remove_dir_all(&worktree);
            git(root, &["worktree", "prune"])?;
        }
        progress(format!(
            "baseline: checking out {rev} ({commit}: {subject}) in {}",
            worktree.display()
        ));
        git(
            root,
            &[
                "worktree",
                "add",
                "--detach",
                &worktree.display().to_string(),
                &commit,
            ],
        )?;
    }
    progress(format!(
        "baseline: building its sockwatch (release, target dir {}; the first time takes minutes)",
        target.display()
    ));
    let built = Command::new("cargo")
        .current_dir(&worktree)
        .args(["build", "--release", "-p", "sockwatch", "--target-dir"])
        .arg(&target)
        .status()
        .context("cannot run cargo build")?;
    if !built.success() {
        bail!(
            "building sockwatch at {rev} ({commit}) in {} failed (see above)",
            worktree.display()
        );
    }
    Ok(Baseline {
        rev: rev.to_string(),
        commit,
        subject,
        worktree,
        binary: target.join("release/sockwatch"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worktree_names_use_the_commit() {
        assert_eq!(
            dir_name("ab138b1f00d2c0ffee0123456789abcdef012345"),
            "baseline-ab138b1f00d2"
        );
        assert_eq!(dir_name("ab1"), "baseline-ab1");
    }
}
