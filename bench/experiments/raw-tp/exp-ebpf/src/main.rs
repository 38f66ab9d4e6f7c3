//! The two ways of hooking syscalls, each with a trivial body that reads three arguments
//! (as confgate's handlers do) and counts: classic `syscalls:sys_{enter,exit}_*`
//! tracepoint programs, one attachment per syscall; or raw tracepoints on `sys_enter` /
//! `sys_exit` that run for every syscall and tail-call a handler by syscall number.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::bpf_probe_read_kernel,
    macros::{map, raw_tracepoint, tracepoint},
    maps::{PerCpuArray, ProgramArray},
    programs::{RawTracePointContext, TracePointContext},
};

#[map]
static COUNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(4, 0);
#[map]
static ENTER: ProgramArray = ProgramArray::with_max_entries(512, 0);
#[map]
static EXIT: ProgramArray = ProgramArray::with_max_entries(512, 0);

#[inline(always)]
fn bump(slot: u32, mix: u64) {
    if let Some(c) = COUNT.get_ptr_mut(slot) {
        unsafe { *c += 1 };
    }
    if let Some(c) = COUNT.get_ptr_mut(3) {
        unsafe { *c ^= mix };
    }
}

// x86_64 struct pt_regs offsets.
const DI: usize = 112;
const SI: usize = 104;
const DX: usize = 96;
const ORIG_AX: usize = 120;

#[inline(always)]
fn reg(regs: *const u8, off: usize) -> u64 {
    unsafe { bpf_probe_read_kernel(regs.add(off).cast::<u64>()) }.unwrap_or(0)
}

#[tracepoint]
pub fn tp_enter(ctx: TracePointContext) -> u32 {
    let a = |i: usize| unsafe { ctx.read_at::<u64>(16 + 8 * i) }.unwrap_or(0);
    bump(0, a(0) ^ a(1) ^ a(2));
    0
}

#[tracepoint]
pub fn tp_exit(ctx: TracePointContext) -> u32 {
    let ret = unsafe { ctx.read_at::<u64>(16) }.unwrap_or(0);
    bump(1, ret);
    0
}

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn raw_enter(ctx: RawTracePointContext) -> i32 {
    let id: u64 = ctx.arg(1);
    // Falls through (returns) when no handler is set for this syscall.
    unsafe { ENTER.tail_call(&ctx, id as u32) };
    0
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn raw_exit(ctx: RawTracePointContext) -> i32 {
    let regs: u64 = ctx.arg(0);
    let id = reg(regs as *const u8, ORIG_AX);
    unsafe { EXIT.tail_call(&ctx, id as u32) };
    0
}

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn raw_h_enter(ctx: RawTracePointContext) -> i32 {
    let regs: u64 = ctx.arg(0);
    let r = regs as *const u8;
    bump(0, reg(r, DI) ^ reg(r, SI) ^ reg(r, DX));
    0
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn raw_h_exit(ctx: RawTracePointContext) -> i32 {
    let ret: u64 = ctx.arg(1);
    bump(1, ret);
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
