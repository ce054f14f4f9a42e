//! Builds the eBPF programs (sockwatch-ebpf, nightly + bpf-linker) and leaves the object in
//! OUT_DIR, where `include_bytes_aligned!` embeds it into the binary.
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../sockwatch-ebpf");
    aya_build::build_ebpf(
        [Package {
            name: "sockwatch-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        Toolchain::default(),
    )
}
