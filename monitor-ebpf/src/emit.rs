//! Ring-buffer output: the common header, fixed-size records reserved in place, staged
//! records cut after their last used byte, and the two-path syscall record (the second
//! path packed right after the first). Every record is a `Record<B>` (header first);
//! every lost record is counted, and logged at debug level (see `main.rs`).
use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_uid_gid, bpf_ktime_get_ns,
    generated::bpf_probe_read_kernel,
};
use aya_log_ebpf::debug;
use monitor_common::{
    Body, Counter, EventHeader, PATH_MAX, Record, SYSCALL_FLAG_PATH2, SYSCALL_PATH1_OFFSET,
    SYSCALL_PATH2_OFFSET, SyscallEvent,
};

use crate::maps::{EVENTS, SYSCALL_PACKED, count};

/// The header of a record of kind `B::KIND` by the current task.
#[inline(always)]
fn header<B: Body>(flags: u32, pid_tgid: u64, session_id: u64) -> EventHeader {
    let uid_gid = bpf_get_current_uid_gid();
    EventHeader {
        kind: B::KIND as u32,
        flags,
        // SAFETY: the helper takes no arguments and only reads the monotonic clock.
        ktime_ns: unsafe { bpf_ktime_get_ns() },
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        session_id,
        // SAFETY: the helper takes no arguments and only reads the current task's cgroup id.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    }
}

/// Fill the header of a record staged in a per-CPU map value.
#[inline(always)]
pub(crate) fn fill_header<B: Body>(rec: &mut Record<B>, pid_tgid: u64, session_id: u64) {
    rec.header = header::<B>(0, pid_tgid, session_id);
}

/// Reserve a fixed-size record, write the current task's header (with `flags`) and `body`
/// into it, and submit it. A full ring buffer is counted as a drop.
#[inline(always)]
pub(crate) fn emit<B: Body>(pid_tgid: u64, session_id: u64, flags: u32, body: B) {
    let Some(mut entry) = EVENTS.reserve::<Record<B>>(0) else {
        count(Counter::RingbufDrops);
        debug!(
            &(),
            target: crate::LOG_TARGET,
            "ring buffer full: a record of kind {} from tid {} lost",
            B::KIND as u32,
            pid_tgid as u32
        );
        return;
    };
    entry.write(Record {
        header: header::<B>(flags, pid_tgid, session_id),
        body,
    });
    entry.submit(0);
    count(Counter::EventsEmitted);
}

/// Output bytes as one record; false when the ring buffer is full (counted).
#[inline(always)]
fn output(bytes: &[u8]) -> bool {
    if EVENTS.output::<[u8]>(bytes, 0).is_err() {
        count(Counter::RingbufDrops);
        debug!(
            &(),
            target: crate::LOG_TARGET,
            "ring buffer full: a record of {} bytes lost",
            bytes.len()
        );
        return false;
    }
    count(Counter::EventsEmitted);
    true
}

/// Output the first `len` bytes of a staged record (the rest of its buffers unused);
/// false when the ring buffer is full (counted).
#[inline(always)]
pub(crate) fn output_prefix<B: Body>(rec: &Record<B>, len: usize) -> bool {
    let len = if len < size_of::<Record<B>>() {
        len
    } else {
        size_of::<Record<B>>()
    };
    // SAFETY: `rec` is a live record of `size_of::<Record<B>>()` bytes, all initialised
    // (repr(C) without implicit padding, sizes asserted in monitor-common), and `len` is at
    // most that size.
    let bytes = unsafe { core::slice::from_raw_parts((rec as *const Record<B>).cast::<u8>(), len) };
    output(bytes)
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
    fill_header(ev, pid_tgid, session_id);
    let l1 = ev.body.path1_len as usize & (PATH_MAX - 1);
    if !has_path2 {
        return output_prefix(ev, SYSCALL_PATH1_OFFSET + l1);
    }
    ev.header.flags = SYSCALL_FLAG_PATH2;
    let Some(out) = SYSCALL_PACKED.get_ptr_mut(0) else {
        count(Counter::RingbufDrops);
        return false;
    };
    let out = out.cast::<u8>();
    let l2 = ev.body.path2_len as usize & (PATH_MAX - 1);
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
        output(core::slice::from_raw_parts(out.cast_const(), head + tail))
    }
}
