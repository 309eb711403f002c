//! How long a partition's lease surely stays its owner's, by this
//! process's own clocks.
//!
//! A lease is a key in the leases bucket whose entries expire `lease_ttl`
//! after they were written. Its owner renews it every third of that; once
//! a renewal is missed for a whole TTL, another coordinator may take the
//! partition. A coordinator that was paused meanwhile (stopped, swapped
//! out, its VM frozen) wakes up still holding executions in memory, and
//! until its lease loop notices the loss it could append to their
//! histories. Optimistic concurrency makes such an append fail when the
//! new owner advanced the execution first, but not when the stale owner
//! wins the race: the new owner's copy then falls behind without knowing
//! it. [`LeaseTerm`] closes that door: before it writes, a partition checks
//! that its lease is still surely its own: that less than the TTL (less a
//! margin) has passed since the request that last took or renewed it was
//! sent. The request reached the server after it was sent, so the entry
//! expires no earlier than that by the server's clock.
//!
//! Two clocks are asked: the monotonic clock (immune to wall-clock jumps,
//! but on Linux it stands still while the machine sleeps) and the wall
//! clock (which runs on through a suspend). The lease is held only while
//! both say so; a wall clock set forward merely makes a partition wait for
//! its next renewal.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

/// A moment by both clocks.
#[derive(Debug, Clone, Copy)]
pub(super) struct Stamp {
    mono: Instant,
    wall: SystemTime,
}

impl Stamp {
    /// Now, by both clocks.
    pub(super) fn now() -> Stamp {
        Stamp {
            mono: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    fn after(self, d: Duration) -> Option<Stamp> {
        Some(Stamp {
            mono: self.mono.checked_add(d)?,
            wall: self.wall.checked_add(d)?,
        })
    }
}

/// Until when a partition's lease is surely its owner's. Written by the
/// lease loop (on taking and on each renewal), read by the partition before
/// each write.
#[derive(Debug, Default)]
pub(super) struct LeaseTerm {
    until: Mutex<Option<Stamp>>,
}

impl LeaseTerm {
    /// Records that the request sent at `sent` took or renewed the lease,
    /// whose entry lives `ttl`.
    pub(super) fn renewed(&self, sent: Stamp, ttl: Duration) {
        let until = sent.after(ttl.saturating_sub(margin(ttl)));
        let mut held = self.until.lock().unwrap_or_else(PoisonError::into_inner);
        *held = match (*held, until) {
            // Renewals are made one after the other; the later one counts.
            (Some(old), Some(new)) if old.mono > new.mono => Some(old),
            (_, new) => new,
        };
    }

    /// Whether the lease is surely still held now.
    pub(super) fn holds(&self) -> bool {
        self.holds_at(Stamp::now())
    }

    fn holds_at(&self, now: Stamp) -> bool {
        let held = *self.until.lock().unwrap_or_else(PoisonError::into_inner);
        held.is_some_and(|until| now.mono < until.mono && now.wall < until.wall)
    }
}

/// What is kept off a lease's TTL for the clocks' drift and the server's
/// own delay in expiring entries: a tenth of it.
fn margin(ttl: Duration) -> Duration {
    ttl / 10
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(10);

    #[test]
    fn a_lease_never_taken_is_not_held() {
        assert!(!LeaseTerm::default().holds());
    }

    #[test]
    fn held_until_the_ttl_less_the_margin_after_the_request_was_sent() {
        let term = LeaseTerm::default();
        let sent = Stamp::now();
        term.renewed(sent, TTL);
        assert!(term.holds_at(sent));
        assert!(term.holds_at(sent.after(Duration::from_millis(8_999)).unwrap()));
        assert!(!term.holds_at(sent.after(Duration::from_secs(9)).unwrap()));
        // A pause past the TTL.
        assert!(!term.holds_at(sent.after(Duration::from_secs(60)).unwrap()));
    }

    #[test]
    fn either_clock_past_the_term_ends_it() {
        let term = LeaseTerm::default();
        let sent = Stamp::now();
        term.renewed(sent, TTL);
        let later = sent.after(Duration::from_secs(30)).unwrap();
        // The machine slept: the monotonic clock stood still.
        let slept = Stamp {
            mono: sent.mono,
            wall: later.wall,
        };
        assert!(!term.holds_at(slept));
        // The wall clock was set back.
        let set_back = Stamp {
            mono: later.mono,
            wall: sent.wall,
        };
        assert!(!term.holds_at(set_back));
    }

    #[test]
    fn a_renewal_extends_the_term_and_an_older_one_does_not_shorten_it() {
        let term = LeaseTerm::default();
        let first = Stamp::now();
        term.renewed(first, TTL);
        let second = first.after(Duration::from_secs(3)).unwrap();
        term.renewed(second, TTL);
        let at = first.after(Duration::from_secs(11)).unwrap();
        assert!(term.holds_at(at));
        term.renewed(first, TTL);
        assert!(term.holds_at(at), "the later renewal still counts");
        assert!(!term.holds_at(second.after(Duration::from_secs(9)).unwrap()));
    }
}
