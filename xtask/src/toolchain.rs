//! Installs what building the eBPF programs needs, when it is missing: the nightly toolchain
//! with rust-src (for `-Z build-std=core`) and bpf-linker at the version that matches
//! nightly's LLVM.
use std::{
    env,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

const BPF_LINKER_VERSION: &str = "0.10.4";

pub fn ensure() -> anyhow::Result<()> {
    add_cargo_bin_to_path();
    ensure_nightly_rust_src()?;
    ensure_bpf_linker()?;
    Ok(())
}

/// `cargo install` puts binaries in $CARGO_HOME/bin; make sure child processes find them even
/// when the caller's PATH lacks it.
fn add_cargo_bin_to_path() {
    let cargo_home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    let Some(bin) = cargo_home.map(|h| h.join("bin")) else {
        return;
    };
    let path = env::var_os("PATH").unwrap_or_default();
    if env::split_paths(&path).any(|p| p == bin) {
        return;
    }
    let joined = env::join_paths(std::iter::once(bin).chain(env::split_paths(&path)));
    if let Ok(joined) = joined {
        // SAFETY: xtask is single-threaded here.
        unsafe { env::set_var("PATH", joined) };
    }
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

fn ensure_nightly_rust_src() -> anyhow::Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))
        .context("rustup is needed to build the eBPF programs (https://rustup.rs)")?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        eprintln!("xtask: installing the nightly Rust toolchain (the eBPF programs need it)");
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))?;
        return Ok(());
    }
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .unwrap_or_default();
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("xtask: adding rust-src to the nightly toolchain (to build core for bpf)");
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(())
}

fn ensure_bpf_linker() -> anyhow::Result<()> {
    let found = output(Command::new("bpf-linker").arg("--version"));
    let wanted = format!("bpf-linker {BPF_LINKER_VERSION}");
    if found.as_deref().map(str::trim) == Some(wanted.as_str()) {
        return Ok(());
    }
    match found {
        Some(other) => eprintln!(
            "xtask: found {}, need {wanted} (its LLVM must match nightly's); installing it (about a minute)",
            other.trim()
        ),
        None => eprintln!("xtask: installing {wanted} (links the eBPF programs; about a minute)"),
    }
    run(Command::new("cargo").args([
        "install",
        &format!("bpf-linker@{BPF_LINKER_VERSION}"),
        "--locked",
        "--force",
    ]))
}
