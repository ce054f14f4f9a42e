//! Builds the eBPF programs (sockwatch-ebpf, nightly + bpf-linker) twice and leaves both
//! objects in OUT_DIR, where `include_bytes_aligned!` embeds them into the binary:
//! `sockwatch-ebpf` for current kernels and `sockwatch-ebpf-compat` (the `compat` feature) for
//! kernels without task storage, `bpf_task_pt_regs` or BPF compare-and-swap. The loader picks
//! one by probing the running kernel.
use std::{env, fs, path::PathBuf};

use anyhow::Context as _;
use aya_build::{Package, Toolchain};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../sockwatch-ebpf");
const OBJECT: &str = "sockwatch-ebpf";

fn build(features: &[&str]) -> anyhow::Result<()> {
    aya_build::build_ebpf(
        [Package {
            name: OBJECT,
            root_dir: ROOT,
            features,
            ..Default::default()
        }],
        Toolchain::default(),
    )
}

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    // sockwatch's `hooks-only` feature (the benchmark's floor) is the eBPF crate's.
    let hooks_only = env::var_os("CARGO_FEATURE_HOOKS_ONLY").is_some();
    let base: &[&str] = if hooks_only { &["hooks-only"] } else { &[] };
    // Both builds write OUT_DIR/sockwatch-ebpf: the compat one first, then renamed.
    let compat: Vec<&str> = base.iter().copied().chain(["compat"]).collect();
    build(&compat)?;
    let built = out_dir.join(OBJECT);
    if built.exists() {
        fs::rename(&built, out_dir.join(format!("{OBJECT}-compat")))
            .context("renaming the compat object")?;
    }
    build(base)
}
