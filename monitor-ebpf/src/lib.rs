//! Host-side placeholder so that `monitor` can list this crate as a build-dependency:
//! cargo then re-runs `monitor/build.rs` (which builds the real eBPF binary) whenever this
//! crate or `monitor-common` changes. The programs live in `main.rs`.
#![no_std]
