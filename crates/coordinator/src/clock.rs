//! Time as the coordinator sees it: wall-clock now for event timestamps, and
//! tokio instants for timers.
//!
//! Timers always sleep on tokio's clock (`tokio::time::sleep_until`). With a
//! [`VirtualClock`] on a runtime whose clock is paused (`start_paused`), tokio
//! jumps straight to the next timer whenever every task is idle, so an hour
//! of `Wait` takes no real time, and `now()` follows the jumps.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use tokio::time::Instant;

/// About 30 years: the horizon of a timer that must "never" fire (tokio
/// instants cannot represent arbitrary far futures).
const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

/// A source of the current time.
pub trait Clock: Send + Sync {
    /// The current time.
    fn now(&self) -> Timestamp;

    /// The tokio instant at which `at` happens on this clock (now when `at`
    /// is past; a far-future instant when `at` is too far to represent).
    fn instant_at(&self, at: Timestamp) -> Instant {
        let now = Instant::now();
        let ahead = at.duration_since(self.now());
        if ahead <= SignedDuration::ZERO {
            return now;
        }
        let ahead = Duration::try_from(ahead)
            .unwrap_or(FAR_FUTURE)
            .min(FAR_FUTURE);
        now.checked_add(ahead).unwrap_or(now)
    }
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A clock that starts at `base` and advances with tokio's clock: virtual
/// when tokio's clock is paused, real (but offset) otherwise.
#[derive(Debug, Clone)]
pub struct VirtualClock {
    base: Timestamp,
    start: Instant,
}

impl VirtualClock {
    /// A clock reading `base` now. Create it inside the runtime whose tokio
    /// clock it follows.
    pub fn new(base: Timestamp) -> VirtualClock {
        VirtualClock {
            base,
            start: Instant::now(),
        }
    }
}

impl Clock for VirtualClock {
    fn now(&self) -> Timestamp {
        let elapsed = SignedDuration::try_from(self.start.elapsed()).unwrap_or(SignedDuration::MAX);
        self.base.checked_add(elapsed).unwrap_or(Timestamp::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn virtual_clock_follows_paused_tokio_time() {
        let c = VirtualClock::new(ts("2024-01-01T00:00:00Z"));
        assert_eq!(c.now(), ts("2024-01-01T00:00:00Z"));
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert_eq!(c.now(), ts("2024-01-01T01:00:00Z"));
    }

    #[tokio::test(start_paused = true)]
    async fn timers_map_to_instants() {
        let c = VirtualClock::new(ts("2024-01-01T00:00:00Z"));
        let start = Instant::now();
        assert_eq!(
            c.instant_at(ts("2024-01-01T00:00:10Z")) - start,
            Duration::from_secs(10)
        );
        assert_eq!(c.instant_at(ts("2023-01-01T00:00:00Z")), start);
        assert_eq!(c.instant_at(Timestamp::MAX) - start, FAR_FUTURE);
        tokio::time::sleep_until(c.instant_at(ts("2024-01-01T00:05:00Z"))).await;
        assert_eq!(c.now(), ts("2024-01-01T00:05:00Z"));
    }

    #[test]
    fn system_clock_is_now() {
        let before = Timestamp::now();
        let now = SystemClock.now();
        assert!(now >= before);
    }
}
