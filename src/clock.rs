//! The wall clock archway dates records by (tag confirmations, lease expiries), with an offset
//! that only tests set: a replica whose clock runs ahead is one of the fleet's failure modes, and
//! the tests need one without changing the machine's clock.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The system clock, shifted by `offset_ms` (0 outside tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Clock {
    offset_ms: i64,
}

impl Clock {
    /// The system clock as it is.
    pub fn system() -> Self {
        Clock::default()
    }

    /// The system clock shifted by `offset_ms` (tests: a replica whose clock runs ahead).
    #[doc(hidden)]
    pub fn offset_by_ms(offset_ms: i64) -> Self {
        Clock { offset_ms }
    }

    /// Milliseconds since the Unix epoch (0 for a time before it).
    pub fn now_ms(&self) -> u64 {
        let real = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        u64::try_from(real.saturating_add(self.offset_ms)).unwrap_or(0)
    }

    /// Now, as a `SystemTime`.
    pub fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.now_ms())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offset_moves_now() {
        let real = Clock::system().now_ms();
        let ahead = Clock::offset_by_ms(3_600_000).now_ms();
        assert!(ahead >= real + 3_600_000 && ahead < real + 3_610_000);
        assert_eq!(Clock::offset_by_ms(i64::MIN).now_ms(), 0);
    }
}
