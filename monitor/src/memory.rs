//! Giving back memory that only start-up needed, so that the idle daemon's resident set is
//! what it keeps using: the heap that loading the eBPF object (and the kernel's BTF)
//! freed, and the pages of the embedded object itself.

/// Return the heap's free memory to the kernel. glibc keeps freed memory in its arenas;
/// after start-up that is ~12 MiB, freed by the eBPF loader. True if anything was
/// returned (always false where the C library has no `malloc_trim`).
pub fn trim_heap() -> bool {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: malloc_trim has no preconditions; it only releases free memory.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(target_env = "gnu"))]
    {
        false
    }
}

/// Drop the resident pages of `bytes`, a part of the executable's read-only data that will
/// not be read again (the embedded eBPF object once loaded). Should it be read, the pages
/// come back from the executable file unchanged. Returns the bytes released.
pub fn forget_pages(bytes: &'static [u8]) -> usize {
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    if page == 0 {
        return 0;
    }
    let start = (bytes.as_ptr() as usize).div_ceil(page) * page;
    let end = (bytes.as_ptr() as usize + bytes.len()) / page * page;
    if end <= start {
        return 0;
    }
    // SAFETY: [start, end) is whole pages inside a `'static` read-only mapping of the
    // executable; MADV_DONTNEED on it only drops the pages from this process, and a later
    // read faults them back in from the file with the same content.
    let r = unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
    if r == 0 { end - start } else { 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    static DATA: [u8; 64 * 1024] = [7u8; 64 * 1024];

    #[test]
    fn forgotten_pages_read_back_unchanged() {
        let released = forget_pages(&DATA);
        assert!(
            released >= 48 * 1024,
            "whole pages inside 64 KiB: {released}"
        );
        assert!(DATA.iter().all(|&b| b == 7));
        trim_heap();
    }
}
