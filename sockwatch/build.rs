//! Builds the eBPF programs (sockwatch-ebpf, nightly + bpf-linker) and leaves the object in
//! OUT_DIR, where `include_bytes_aligned!` embeds it into the binary.
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../sockwatch-ebpf");
    // sockwatch's `hooks-only` feature (the benchmark's floor) is the eBPF crate's.
    let features: &[&str] = if std::env::var_os("CARGO_FEATURE_HOOKS_ONLY").is_some() {
        &["hooks-only"]
    } else {
        &[]
    };
    aya_build::build_ebpf(
        [Package {
            name: "sockwatch-ebpf",
            root_dir: root,
            features,
            ..Default::default()
        }],
        Toolchain::default(),
    )
}
