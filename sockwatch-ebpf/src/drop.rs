//! `skb:kfree_skb`: connections dropped because a listener's accept queue was full. Every
//! dropped packet passes here, so anything but that one drop reason leaves at the first compare.
use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use sockwatch_common::{KFREE_SKB_REASON_ARG, KFREE_SKB_SK_ARG, kind, tcp_state};

use crate::{
    emit::emit,
    maps::{SOCKS, offsets},
    sock::is_tcp,
};

#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn kfree_skb(ctx: RawTracePointContext) -> i32 {
    if crate::hooks_only() {
        return 0;
    }
    let reason = ctx.arg::<u64>(KFREE_SKB_REASON_ARG) as u32;
    let off = offsets();
    if reason != off.drop_reason_listen_overflow {
        return 0;
    }
    // The listening socket the packet was for.
    let sk: u64 = ctx.arg(KFREE_SKB_SK_ARG);
    if sk == 0 || !is_tcp(sk, &off) {
        return 0;
    }
    // A reference into the map, not a copy: an absent record is then a null pointer rather
    // than an undefined copy, which LLVM may spill and the verifier refuses.
    let info = SOCKS.get_ptr(sk).map(|p| unsafe { &*p });
    let _ = emit(
        sk,
        kind::OVERFLOW,
        tcp_state::LISTEN,
        tcp_state::LISTEN,
        info,
        0,
    );
    0
}
