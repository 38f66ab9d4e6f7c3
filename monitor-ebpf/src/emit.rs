//! Ring-buffer output: the common header, fixed-size records reserved in place, and the
//! variable-length syscall record (a second path packed right after the first).
use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_uid_gid, bpf_ktime_get_ns,
    generated::bpf_probe_read_kernel,
};
use monitor_common::{
    Counter, EventHeader, EventKind, PATH_MAX, SYSCALL_FLAG_PATH2, SYSCALL_PATH1_OFFSET,
    SYSCALL_PATH2_OFFSET, SyscallEvent,
};

use crate::maps::{EVENTS, SYSCALL_PACKED, count};

#[inline(always)]
pub(crate) fn fill_header(h: &mut EventHeader, kind: EventKind, pid_tgid: u64, session_id: u64) {
    let uid_gid = bpf_get_current_uid_gid();
    h.kind = kind as u32;
    h.flags = 0;
    // SAFETY: the helper takes no arguments and only reads the monotonic clock.
    h.ktime_ns = unsafe { bpf_ktime_get_ns() };
    h.tgid = (pid_tgid >> 32) as u32;
    h.tid = pid_tgid as u32;
    h.uid = uid_gid as u32;
    h.gid = (uid_gid >> 32) as u32;
    h.session_id = session_id;
    // SAFETY: the helper takes no arguments and only reads the current task's cgroup id.
    h.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    h.comm = bpf_get_current_comm().unwrap_or([0; 16]);
}

/// Reserve a fixed-size record of type `T` (whose first field is its `EventHeader`),
/// fill the header and then the rest with `fill`, and submit it. A full ring buffer is
/// counted as a drop.
#[inline(always)]
pub(crate) fn emit<T: 'static>(
    kind: EventKind,
    pid_tgid: u64,
    session_id: u64,
    fill: impl FnOnce(&mut T),
) {
    match EVENTS.reserve::<T>(0) {
        Some(mut entry) => {
            let ev = entry.as_mut_ptr();
            // SAFETY: `ev` points to a reservation of `size_of::<T>()` bytes that is exclusively
            // ours until submit; every record type is repr(C) with its `EventHeader` as the
            // first field, so the cast to the header is in bounds and aligned, and both
            // references end before `submit` is called.
            unsafe {
                fill_header(&mut *ev.cast::<EventHeader>(), kind, pid_tgid, session_id);
                fill(&mut *ev);
            }
            entry.submit(0);
            count(Counter::EventsEmitted);
        }
        None => count(Counter::RingbufDrops),
    }
}

/// Emit the staged syscall record; false when the ring buffer is full (counted). A
/// two-path record is packed first: `path2_len` and `path2` right after `path1`.
#[inline(always)]
pub(crate) fn emit_syscall(
    ev: &mut SyscallEvent,
    pid_tgid: u64,
    session_id: u64,
    has_path2: bool,
) -> bool {
    fill_header(&mut ev.header, EventKind::Syscall, pid_tgid, session_id);
    let l1 = ev.path1_len as usize & (PATH_MAX - 1);
    let sent = if has_path2 {
        ev.header.flags = SYSCALL_FLAG_PATH2;
        let Some(out) = SYSCALL_PACKED.get_ptr_mut(0) else {
            count(Counter::RingbufDrops);
            return false;
        };
        let out = out.cast::<u8>();
        let l2 = ev.path2_len as usize & (PATH_MAX - 1);
        let src = (ev as *const SyscallEvent).cast::<u8>();
        let head = SYSCALL_PATH1_OFFSET + l1;
        let tail = 4 + l2;
        // SAFETY: both areas are per-CPU map values of `size_of::<SyscallEvent>()` bytes;
        // head <= PATH1_OFFSET + 4095 and head + tail <= PATH1_OFFSET + 4095 + 4 + 4095,
        // which is less than that size. Kernel-to-kernel copies of bytes we own; the slice
        // then covers exactly the `head + tail` bytes those copies initialised.
        unsafe {
            if bpf_probe_read_kernel(out.cast(), head as u32, src.cast()) != 0
                || bpf_probe_read_kernel(
                    out.add(head).cast(),
                    tail as u32,
                    src.add(SYSCALL_PATH2_OFFSET - 4).cast(),
                ) != 0
            {
                // Cannot fail in practice (our own map memory); counted as a lost record.
                count(Counter::RingbufDrops);
                return false;
            }
            let bytes = core::slice::from_raw_parts(out.cast_const(), head + tail);
            EVENTS.output::<[u8]>(bytes, 0).is_ok()
        }
    } else {
        // SAFETY: `ev` is a live `SyscallEvent` (a per-CPU map value) and
        // `SYSCALL_PATH1_OFFSET + l1 <= SYSCALL_PATH1_OFFSET + 4095 < size_of::<SyscallEvent>()`;
        // all of its bytes are initialised (repr(C), no implicit padding).
        let bytes = unsafe {
            core::slice::from_raw_parts(
                (ev as *const SyscallEvent).cast::<u8>(),
                SYSCALL_PATH1_OFFSET + l1,
            )
        };
        EVENTS.output::<[u8]>(bytes, 0).is_ok()
    };
    if !sent {
        count(Counter::RingbufDrops);
        return false;
    }
    count(Counter::EventsEmitted);
    true
}
