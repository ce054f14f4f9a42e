//! Checks on the compiled eBPF object itself.
use object::{Object as _, ObjectSection as _, ObjectSymbol as _, RelocationTarget, SectionKind};

use crate::kernel::loader::OBJECT;

/// No program may call memset, memcpy or memmove: in BPF these are byte-at-a-time loops run as
/// subprograms, which once cost more than the rest of `inet_sock_set_state` (see the
/// sockwatch-ebpf `store` module for how zeros are written instead).
#[test]
fn programs_call_no_mem_functions() {
    let file = object::File::parse(OBJECT).expect("the embedded eBPF object parses");
    let mut calls = Vec::new();
    for section in file.sections() {
        if section.kind() != SectionKind::Text {
            continue;
        }
        let name = section.name().unwrap_or("?").to_string();
        for (_, reloc) in section.relocations() {
            let RelocationTarget::Symbol(index) = reloc.target() else {
                continue;
            };
            let Ok(symbol) = file.symbol_by_index(index) else {
                continue;
            };
            let target = symbol.name().unwrap_or("");
            if matches!(target, "memset" | "memcpy" | "memmove") {
                calls.push(format!("{name} -> {target}"));
            }
        }
    }
    assert!(calls.is_empty(), "calls to mem functions: {calls:?}");
}
