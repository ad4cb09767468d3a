//! How long window buckets are kept and how fine: a namespace's `Tiers` (a fine tier, 1-second
//! buckets for an hour by default, and a coarse tier, 1-minute buckets for 30 days), and the age
//! rules that queries and compaction share.
//!
//! The rules are functions of `now` so that compaction (which runs at some `now_c`) and a later
//! query (at `now_q >= now_c`) always agree: a bucket is guaranteed at fine resolution when it
//! starts at or after `fine_from_ms(now)`, and guaranteed kept when it starts at or after
//! `kept_from_ms(now)`. Both boundaries only move forward with `now`, and both are aligned to the
//! coarse resolution, so a coarse bucket is never half fine and half coarse. Compaction may
//! coarsen only buckets before `fine_from_ms(now_c) <= fine_from_ms(now_q)` and drop only buckets
//! before `kept_from_ms(now_c) <= kept_from_ms(now_q)`: whatever a query accepts is still there at
//! the resolution it needs.

use crate::limits::{WINDOW_RESOLUTION_MS_MAX, WINDOW_RETENTION_MS_MAX};

/// One tier: buckets of `resolution_ms`, kept for `retention_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tier {
    pub resolution_ms: u64,
    pub retention_ms: u64,
}

/// The two tiers of a namespace. Memory always holds 1-second buckets (finer than any tier), so
/// tiers only matter on disk and for what a query may ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tiers {
    pub fine: Tier,
    pub coarse: Tier,
}

pub const SECOND_MS: u64 = 1_000;
pub const MINUTE_MS: u64 = 60 * SECOND_MS;
pub const HOUR_MS: u64 = 60 * MINUTE_MS;
pub const DAY_MS: u64 = 24 * HOUR_MS;

impl Default for Tiers {
    /// 1-second buckets for the last hour, 1-minute buckets for 30 days (the defaults).
    fn default() -> Tiers {
        Tiers {
            fine: Tier {
                resolution_ms: SECOND_MS,
                retention_ms: HOUR_MS,
            },
            coarse: Tier {
                resolution_ms: MINUTE_MS,
                retention_ms: 30 * DAY_MS,
            },
        }
    }
}

impl Tiers {
    /// Checks what the age rules rely on; the reason names the broken rule.
    pub fn check(&self) -> Result<(), &'static str> {
        let (fine, coarse) = (self.fine, self.coarse);
        if fine.resolution_ms == 0 || !aligned(fine.resolution_ms, SECOND_MS) {
            return Err("the fine resolution must be a whole number of seconds (memory keeps seconds)");
        }
        if !aligned(coarse.resolution_ms, fine.resolution_ms) {
            return Err("the coarse resolution must be a multiple of the fine one");
        }
        if coarse.resolution_ms > WINDOW_RESOLUTION_MS_MAX || !aligned(DAY_MS, coarse.resolution_ms) {
            return Err("resolutions must divide a day, so buckets align with every query step");
        }
        if fine.retention_ms < fine.resolution_ms || coarse.retention_ms < coarse.resolution_ms {
            return Err("a tier must keep at least one bucket");
        }
        if coarse.retention_ms < fine.retention_ms {
            return Err("the coarse tier must be kept at least as long as the fine one");
        }
        if coarse.retention_ms > WINDOW_RETENTION_MS_MAX {
            return Err("retention beyond WINDOW_RETENTION_MS_MAX");
        }
        Ok(())
    }

    /// Buckets starting at or after this are kept at the fine resolution.
    pub fn fine_from_ms(&self, now_ms: u64) -> u64 {
        floor_to(now_ms.saturating_sub(self.fine.retention_ms), self.coarse.resolution_ms)
    }

    /// Buckets starting at or after this are kept at all.
    pub fn kept_from_ms(&self, now_ms: u64) -> u64 {
        floor_to(
            now_ms.saturating_sub(self.coarse.retention_ms),
            self.coarse.resolution_ms,
        )
    }

    /// The resolution a bucket starting at `t_ms` is guaranteed to have at `now_ms`.
    pub fn resolution_at(&self, t_ms: u64, now_ms: u64) -> u64 {
        if t_ms >= self.fine_from_ms(now_ms) {
            self.fine.resolution_ms
        } else {
            self.coarse.resolution_ms
        }
    }

    /// Compaction's rule for one bucket at `now_ms`: the start of the bucket it rolls into, or
    /// `None` if it is past retention and is dropped.
    pub fn rollup(&self, t_ms: u64, now_ms: u64) -> Option<u64> {
        if t_ms < self.kept_from_ms(now_ms) {
            return None;
        }
        Some(floor_to(t_ms, self.resolution_at(t_ms, now_ms)))
    }
}

pub fn floor_to(t: u64, step: u64) -> u64 {
    assert!(step > 0);
    t - t % step
}

/// Whether `t` is a multiple of `step` (written without `is_multiple_of`, which is newer than
/// the workspace's rust-version).
pub fn aligned(t: u64, step: u64) -> bool {
    floor_to(t, step) == t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_tiers_are_refused() {
        assert_eq!(Tiers::default().check(), Ok(()));
        let mut t = Tiers::default();
        t.fine.resolution_ms = 500;
        assert!(t.check().is_err());
        let mut t = Tiers::default();
        t.coarse.resolution_ms = 7 * SECOND_MS;
        t.fine.resolution_ms = 2 * SECOND_MS;
        assert!(t.check().is_err());
        let mut t = Tiers::default();
        t.coarse.resolution_ms = 7 * MINUTE_MS;
        assert!(t.check().is_err(), "7 minutes do not divide a day");
        let mut t = Tiers::default();
        t.coarse.retention_ms = MINUTE_MS;
        assert!(t.check().is_err());
        let mut t = Tiers::default();
        t.coarse.retention_ms = WINDOW_RETENTION_MS_MAX + DAY_MS;
        assert!(t.check().is_err());
    }

    #[test]
    fn boundaries_are_coarse_aligned_and_rollup_follows_them() {
        let t = Tiers::default();
        let now = 40 * DAY_MS + 5 * HOUR_MS + 30 * SECOND_MS + 999;
        let fine_from = t.fine_from_ms(now);
        assert_eq!(fine_from, 40 * DAY_MS + 4 * HOUR_MS);
        assert_eq!(t.resolution_at(fine_from, now), SECOND_MS);
        assert_eq!(t.resolution_at(fine_from - 1, now), MINUTE_MS);
        assert_eq!(t.rollup(fine_from + 1_999, now), Some(fine_from + 1_000));
        assert_eq!(t.rollup(fine_from - 1_000, now), Some(fine_from - MINUTE_MS));
        let kept = t.kept_from_ms(now);
        assert_eq!(kept, 10 * DAY_MS + 5 * HOUR_MS);
        assert_eq!(t.rollup(kept, now), Some(kept));
        assert_eq!(t.rollup(kept - 1, now), None);
    }
}
