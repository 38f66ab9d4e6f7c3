//! Giving back memory that only start-up needed, so that the idle daemon's resident set is
//! what it keeps using: the heap that loading the eBPF object (and the kernel's BTF)
//! freed, the pages of the embedded object itself, and the mapped pages of the code.

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

/// Unmap the resident pages of this executable's code (its `r-xp` mappings) from this
/// process. At idle most of them are pages that start-up ran once, or that the kernel
/// mapped around a fault (it maps up to 64 KiB around each): 10 of the 12 MiB of code were
/// resident in an idle daemon. They stay in the page cache, and the code still running
/// faults its pages back in (minor faults, from the file, unchanged: code is never
/// written). Only the executable's code is touched: its other mappings hold relocated
/// data. Returns the bytes unmapped.
pub fn forget_code() -> usize {
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
        return 0;
    };
    let Ok(maps) = std::fs::read("/proc/self/maps") else {
        return 0;
    };
    let exe = exe.as_os_str().as_encoded_bytes();
    let mut released = 0;
    for line in maps.split(|&b| b == b'\n') {
        let Some((start, end)) = code_range(line, exe) else {
            continue;
        };
        // SAFETY: [start, end) is a private, never-written, executable mapping of our own
        // binary (checked above); MADV_DONTNEED only drops its page-table entries, and the
        // next execution there faults the same bytes back in from the file.
        let r =
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
        if r == 0 {
            released += end - start;
        }
    }
    released
}

/// The range of a `/proc/self/maps` line if it is an `r-xp` mapping of `exe`.
fn code_range(line: &[u8], exe: &[u8]) -> Option<(usize, usize)> {
    let text = std::str::from_utf8(line).ok()?;
    let mut f = text.split_ascii_whitespace();
    let range = f.next()?;
    if f.next()? != "r-xp" {
        return None;
    }
    let path = f.nth(3)?;
    if path.as_bytes() != exe {
        return None;
    }
    let (a, b) = range.split_once('-')?;
    let (a, b) = (
        usize::from_str_radix(a, 16).ok()?,
        usize::from_str_radix(b, 16).ok()?,
    );
    (b > a).then_some((a, b))
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

    #[test]
    fn code_runs_on_after_its_pages_are_forgotten() {
        assert!(forget_code() > 0, "the test binary has code mappings");
        // Code (formatting, allocation, this test) still runs: its pages fault back in.
        let s = format!("{:?}", (1..100).collect::<Vec<_>>());
        assert!(s.ends_with("99]"));
    }

    #[test]
    fn only_executable_mappings_of_the_binary_are_taken() {
        let exe = b"/usr/bin/confgate";
        let line = |s: &str| code_range(s.as_bytes(), exe);
        assert_eq!(
            line("55d0c0a00000-55d0c1600000 r-xp 00585000 fd:00 123 /usr/bin/confgate"),
            Some((0x55d0c0a00000, 0x55d0c1600000))
        );
        assert_eq!(
            line("55d0c0a00000-55d0c1600000 r--p 0 fd:00 123 /usr/bin/confgate"),
            None
        );
        assert_eq!(
            line("55d0c0a00000-55d0c1600000 r-xp 0 fd:00 9 /usr/lib/libc.so.6"),
            None
        );
        assert_eq!(line("7ffd-7fff r-xp 0 00:00 0 [vdso]"), None);
        assert_eq!(line("garbage"), None);
    }
}
