//! Wall-clock instants as the store, the ledger and the API carry them: milliseconds since
//! the Unix epoch.
use std::time::{SystemTime, UNIX_EPOCH};

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bounds() {
        assert_eq!(unix_ms(UNIX_EPOCH), 0);
        assert_eq!(unix_ms(UNIX_EPOCH - Duration::from_secs(1)), 0);
        assert_eq!(unix_ms(UNIX_EPOCH + Duration::from_millis(1_234)), 1_234);
        assert!(now_ms() > 1_700_000_000_000);
    }
}
