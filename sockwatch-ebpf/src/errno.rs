//! What the accept and connect hooks share: return-value decoding.

pub const EINTR: u16 = 4;
pub const EBADF: u16 = 9;
pub const EAGAIN: u16 = 11;
pub const ENOTSOCK: u16 = 88;
pub const EISCONN: u16 = 106;
pub const EALREADY: u16 = 114;
pub const EINPROGRESS: u16 = 115;
/// Kernel-internal restart codes (ERESTARTSYS..=ERESTART_RESTARTBLOCK) are what a syscall exit
/// sees before signal handling turns them into EINTR or a restart.
const ERESTARTSYS: u16 = 512;
const ERESTART_RESTARTBLOCK: u16 = 516;

/// The errno of a failed syscall's return value; None on success.
#[inline(always)]
pub fn errno_of(ret: i64) -> Option<u16> {
    (-4095..0).contains(&ret).then_some((-ret) as u16)
}

/// A signal interrupted the call: not a failure of the socket.
#[inline(always)]
pub fn interrupted(errno: u16) -> bool {
    errno == EINTR || (ERESTARTSYS..=ERESTART_RESTARTBLOCK).contains(&errno)
}
