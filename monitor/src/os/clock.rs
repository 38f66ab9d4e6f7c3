//! Time as confgate carries it: wall-clock instants as milliseconds (the store, the
//! ledger, the API) or nanoseconds (events) since the Unix epoch, RFC 3339 text, and the
//! kernel's clocks (`CLOCK_MONOTONIC` is what the eBPF programs stamp records with).
use std::io;
use std::mem::MaybeUninit;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::cvt;

/// `t` in milliseconds since the Unix epoch: 0 for an instant before it (a clock set
/// back), `i64::MAX` for one too far after it.
pub fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Now, in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    unix_ms(SystemTime::now())
}

/// Now, in nanoseconds since the Unix epoch (0 before it).
pub fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

/// The instant `ms` milliseconds after (or, negative, before) the Unix epoch; `None` if
/// it cannot be represented.
pub fn at_unix_ms(ms: i64) -> Option<SystemTime> {
    let d = Duration::from_millis(ms.unsigned_abs());
    if ms >= 0 {
        UNIX_EPOCH.checked_add(d)
    } else {
        UNIX_EPOCH.checked_sub(d)
    }
}

/// The instant `ms` milliseconds after the Unix epoch; `None` for 0 and negative values
/// (the wire's "unset") and for values out of range.
pub fn from_unix_ms(ms: i64) -> Option<SystemTime> {
    let ms = u64::try_from(ms).ok().filter(|ms| *ms > 0)?;
    UNIX_EPOCH.checked_add(Duration::from_millis(ms))
}

/// A `struct timespec`-like (seconds, nanoseconds) pair as an instant; seconds may be
/// negative (before the epoch), nanoseconds are clamped to one second.
pub fn from_timespec(sec: i64, nsec: i64) -> SystemTime {
    let nsec = nsec.clamp(0, 999_999_999) as u32;
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(sec.unsigned_abs()) + Duration::from_nanos(nsec.into())
    }
}

/// `ns` nanoseconds since the epoch as RFC 3339 UTC (full precision); the epoch itself
/// if it cannot be represented.
pub fn rfc3339_ns(ns: i128) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(ns)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".into())
}

/// Now as RFC 3339 UTC, to the second.
pub fn now_rfc3339() -> String {
    let now = OffsetDateTime::now_utc();
    let now = now.replace_nanosecond(0).unwrap_or(now);
    now.format(&Rfc3339)
        .unwrap_or_else(|_| now.unix_timestamp().to_string())
}

fn timespec(clock: libc::clockid_t) -> io::Result<libc::timespec> {
    let mut ts = MaybeUninit::<libc::timespec>::uninit();
    // SAFETY: valid out pointer.
    cvt(unsafe { libc::clock_gettime(clock, ts.as_mut_ptr()) })?;
    // SAFETY: filled by the successful call.
    Ok(unsafe { ts.assume_init() })
}

/// Read `clock`.
pub(crate) fn clock_ns(clock: libc::clockid_t) -> io::Result<Duration> {
    let ts = timespec(clock)?;
    Ok(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

/// Resolution of `clock`.
pub(crate) fn clock_res(clock: libc::clockid_t) -> io::Result<Duration> {
    let mut ts = MaybeUninit::<libc::timespec>::uninit();
    // SAFETY: valid out pointer.
    cvt(unsafe { libc::clock_getres(clock, ts.as_mut_ptr()) })?;
    // SAFETY: filled by the successful call.
    let ts = unsafe { ts.assume_init() };
    Ok(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

/// `CLOCK_REALTIME` minus `CLOCK_MONOTONIC`, in nanoseconds, read once: added to a
/// monotonic timestamp it gives wall-clock time (as of now: a later change of the wall
/// clock is not followed). A clock that cannot be read counts as 0.
pub fn monotonic_offset_ns() -> i128 {
    let ns = |clock| {
        timespec(clock).map_or(0, |t| {
            i128::from(t.tv_sec) * 1_000_000_000 + i128::from(t.tv_nsec)
        })
    };
    ns(libc::CLOCK_REALTIME) - ns(libc::CLOCK_MONOTONIC)
}

/// Convert a `CLOCK_MONOTONIC` time (as the eBPF programs record it) to wall-clock time,
/// by sampling both clocks now. `None` when the clocks cannot be read.
pub fn monotonic_to_realtime(mono_ns: u64) -> Option<SystemTime> {
    let real_before = clock_ns(libc::CLOCK_REALTIME).ok()?;
    let mono = clock_ns(libc::CLOCK_MONOTONIC).ok()?;
    let real_after = clock_ns(libc::CLOCK_REALTIME).ok()?;
    // The realtime instant matching `mono`: midway between the two samples around it.
    let real = real_before + (real_after.saturating_sub(real_before)) / 2;
    let then = Duration::from_nanos(mono_ns);
    let at = if then <= mono {
        real.checked_sub(mono - then)?
    } else {
        real + (then - mono)
    };
    Some(UNIX_EPOCH + at)
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`), the unit of procfs start times.
pub fn clock_ticks_per_second() -> Option<u64> {
    // SAFETY: sysconf takes a constant name, touches no memory of ours and is thread-safe.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(hz).ok().filter(|h| *h > 0)
}

/// `CLOCK_BOOTTIME` now, in clock ticks (comparable with a process's start time,
/// `crate::os::procfs::start_ticks`).
pub fn boot_ticks_now() -> Option<u64> {
    let ts = timespec(libc::CLOCK_BOOTTIME).ok()?;
    let hz = clock_ticks_per_second()?;
    let ns = u64::try_from(ts.tv_sec)
        .ok()?
        .checked_mul(1_000_000_000)?
        .checked_add(u64::try_from(ts.tv_nsec).ok()?)?;
    Some(ns / (1_000_000_000 / hz))
}

/// The local time zone's offset from UTC, in seconds, at `unix_secs` (`localtime_r`);
/// `None` if the C library cannot tell.
pub fn local_offset_secs(unix_secs: i64) -> Option<i64> {
    let t: libc::time_t = unix_secs;
    // SAFETY: `libc::tm` is plain integers and a nullable pointer: all-zero is a valid value.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: localtime_r only writes the caller's `tm`; confgate never changes TZ or the
    // environment, so the time zone data it reads is not modified concurrently.
    let ok = unsafe { !libc::localtime_r(&t, &mut tm).is_null() };
    ok.then_some(tm.tm_gmtoff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds() {
        assert_eq!(unix_ms(UNIX_EPOCH), 0);
        assert_eq!(unix_ms(UNIX_EPOCH - Duration::from_secs(1)), 0);
        assert_eq!(unix_ms(UNIX_EPOCH + Duration::from_millis(1_234)), 1_234);
        assert!(now_ms() > 1_700_000_000_000);
        assert!(now_ns() > 1_700_000_000_000_000_000);
    }

    #[test]
    fn milliseconds_and_timespecs_to_instants() {
        assert_eq!(from_unix_ms(0), None);
        assert_eq!(from_unix_ms(-5), None);
        assert_eq!(
            from_unix_ms(1_234),
            Some(UNIX_EPOCH + Duration::from_millis(1_234))
        );
        assert_eq!(
            unix_ms(from_unix_ms(1_700_000_000_123).unwrap()),
            1_700_000_000_123
        );
        assert_eq!(from_timespec(3, 5), UNIX_EPOCH + Duration::new(3, 5));
        assert_eq!(
            from_timespec(-2, 500_000_000),
            UNIX_EPOCH - Duration::from_millis(1_500)
        );
        assert_eq!(
            from_timespec(0, 2_000_000_000),
            UNIX_EPOCH + Duration::new(0, 999_999_999)
        );
    }

    #[test]
    fn rfc3339_text() {
        assert_eq!(rfc3339_ns(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_ns(1_500_000_000), "1970-01-01T00:00:01.5Z");
        assert_eq!(rfc3339_ns(i128::MAX), "1970-01-01T00:00:00Z");
        let now = now_rfc3339();
        assert!(now.ends_with('Z') && !now.contains('.'), "{now}");
    }

    #[test]
    fn monotonic_times_map_to_now() {
        let mono = clock_ns(libc::CLOCK_MONOTONIC).unwrap();
        let wall = monotonic_to_realtime(mono.as_nanos() as u64).unwrap();
        let off = monotonic_offset_ns();
        let via_offset = mono.as_nanos() as i128 + off;
        let wall_ns = wall.duration_since(UNIX_EPOCH).unwrap().as_nanos() as i128;
        assert!((wall_ns - via_offset).abs() < 1_000_000_000);
        assert!(clock_res(libc::CLOCK_REALTIME_COARSE).unwrap() > Duration::ZERO);
    }
}
