//! Stores that stay stores.
//!
//! LLVM merges runs of zero stores (a `[0; N]`, or a few zeroed fields in a row) into a memset,
//! and the BPF backend turns every memset into a call to a byte-at-a-time loop: on the hot path
//! that loop cost more than the rest of the program. Volatile stores are never merged, so the
//! zeros written through these helpers stay a handful of plain stores.
use core::ptr::write_volatile;

/// `*dst = v`, never merged into a memset.
#[inline(always)]
pub fn put<T: Copy>(dst: &mut T, v: T) {
    // SAFETY: `dst` is a valid, aligned, exclusive reference.
    unsafe { write_volatile(dst, v) }
}

/// Writes 16 bytes as two 8-byte stores. `dst` must be 8-aligned: the shared structs assert it
/// for every 16-byte field written this way.
#[inline(always)]
pub fn put16(dst: &mut [u8; 16], lo: [u8; 8], hi: [u8; 8]) {
    let p = dst.as_mut_ptr().cast::<u64>();
    // SAFETY: 16 writable bytes, 8-aligned (see above).
    unsafe {
        write_volatile(p, u64::from_ne_bytes(lo));
        write_volatile(p.add(1), u64::from_ne_bytes(hi));
    }
}

/// Zeroes 16 bytes (8-aligned, as for [`put16`]).
#[inline(always)]
pub fn zero16(dst: &mut [u8; 16]) {
    put16(dst, [0; 8], [0; 8]);
}

/// Copies 16 bytes (8-aligned destination, as for [`put16`]).
#[inline(always)]
pub fn copy16(dst: &mut [u8; 16], src: &[u8; 16]) {
    let mut lo = [0u8; 8];
    let mut hi = [0u8; 8];
    lo.copy_from_slice(&src[..8]);
    hi.copy_from_slice(&src[8..]);
    put16(dst, lo, hi);
}

/// Zeroes a short byte array (padding) with one-byte stores.
#[inline(always)]
pub fn zero_bytes<const N: usize>(dst: &mut [u8; N]) {
    for b in dst.iter_mut() {
        put(b, 0);
    }
}

/// `*dst = *src` for a struct of whole 8-byte words (8-aligned), as one load and one store per
/// word: a plain copy may become a memcpy call.
#[inline(always)]
pub fn copy_words<T>(dst: &mut T, src: &T) {
    const { assert!(core::mem::size_of::<T>() % 8 == 0 && core::mem::align_of::<T>() >= 8) };
    let d = (dst as *mut T).cast::<u64>();
    let s = (src as *const T).cast::<u64>();
    for i in 0..core::mem::size_of::<T>() / 8 {
        // SAFETY: both point to `size_of::<T>()` valid, 8-aligned bytes, and cannot overlap
        // (`dst` is exclusive).
        unsafe { write_volatile(d.add(i), core::ptr::read_volatile(s.add(i))) };
    }
}
