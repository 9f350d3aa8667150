//! Time comes from an injected clock so that schedules, watermarks and point-in-time logic are
//! testable. Times are microseconds since the Unix epoch, UTC.

use std::time::{SystemTime, UNIX_EPOCH};

/// Source of the current time, in microseconds since the Unix epoch.
pub trait Clock: Send + Sync {
    fn now_micros(&self) -> i64;
}

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_micros(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    }
}

/// A clock stopped at one instant, for tests and for replaying a schedule tick.
#[derive(Debug, Clone, Copy)]
pub struct FixedClock(pub i64);

impl Clock for FixedClock {
    fn now_micros(&self) -> i64 {
        self.0
    }
}
