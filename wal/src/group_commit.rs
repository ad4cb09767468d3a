//! The group-commit decision logic, pure: which lsns the next write+fdatasync covers, and when they
//! become durable. The node's commit loop (and `Wal::commit_batch`) drive it.
//!
//! At most one commit is in flight. Everything appended while it runs forms the next batch, so
//! batches grow with load and latency stays near one fsync.

use std::ops::RangeInclusive;

/// Group-commit state of one shard's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupCommit {
    lsn_appended: u64,
    /// The last lsn of the commit in flight.
    lsn_in_flight: Option<u64>,
    lsn_durable: u64,
    poisoned: bool,
}

impl GroupCommit {
    /// Everything up to `lsn_durable` is on disk and nothing else is appended yet.
    pub fn new(lsn_durable: u64) -> GroupCommit {
        GroupCommit {
            lsn_appended: lsn_durable,
            lsn_in_flight: None,
            lsn_durable,
            poisoned: false,
        }
    }

    /// Records up to `lsn` are in the buffer.
    pub fn appended(&mut self, lsn: u64) {
        assert!(lsn >= self.lsn_appended, "lsns only increase");
        self.lsn_appended = lsn;
    }

    /// The lsns the next commit covers, if one may start now: nothing in flight, something new
    /// appended, not poisoned. Marks them in flight.
    pub fn start(&mut self) -> Option<RangeInclusive<u64>> {
        if self.poisoned || self.lsn_in_flight.is_some() || self.lsn_appended == self.lsn_durable {
            return None;
        }
        assert!(self.lsn_appended > self.lsn_durable);
        self.lsn_in_flight = Some(self.lsn_appended);
        Some(self.lsn_durable + 1..=self.lsn_appended)
    }

    /// The commit in flight finished: `synced` is true only when its write and fdatasync both
    /// succeeded. Returns the lsn now durable. A failure poisons for good: the records of the failed
    /// batch are never acknowledged, and nothing after them.
    pub fn done(&mut self, synced: bool) -> u64 {
        let in_flight = self.lsn_in_flight.take().expect("done() without a commit in flight");
        assert!(!self.poisoned);
        if synced {
            assert!(in_flight > self.lsn_durable, "durable lsns only increase");
            assert!(in_flight <= self.lsn_appended);
            self.lsn_durable = in_flight;
        } else {
            self.poisoned = true;
        }
        self.lsn_durable
    }

    pub fn lsn_appended(&self) -> u64 {
        self.lsn_appended
    }

    pub fn lsn_durable(&self) -> u64 {
        self.lsn_durable
    }

    pub fn in_flight(&self) -> Option<RangeInclusive<u64>> {
        self.lsn_in_flight.map(|last| self.lsn_durable + 1..=last)
    }

    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_during_a_commit_form_the_next_batch() {
        let mut gc = GroupCommit::new(10);
        assert_eq!(gc.start(), None, "nothing to commit");
        gc.appended(12);
        assert_eq!(gc.start(), Some(11..=12));
        gc.appended(15);
        assert_eq!(gc.start(), None, "one commit in flight at a time");
        assert_eq!(gc.in_flight(), Some(11..=12));
        assert_eq!(gc.lsn_durable(), 10, "nothing is durable before its sync");
        assert_eq!(gc.done(true), 12);
        assert_eq!(gc.start(), Some(13..=15));
        assert_eq!(gc.done(true), 15);
        assert_eq!(gc.start(), None);
    }

    #[test]
    fn a_failed_commit_poisons_for_good() {
        let mut gc = GroupCommit::new(0);
        gc.appended(3);
        assert_eq!(gc.start(), Some(1..=3));
        assert_eq!(gc.done(false), 0);
        assert!(gc.is_poisoned());
        gc.appended(4);
        assert_eq!(gc.start(), None);
        assert_eq!(gc.lsn_durable(), 0);
    }

    #[test]
    #[should_panic(expected = "lsns only increase")]
    fn appended_lsns_never_go_back() {
        let mut gc = GroupCommit::new(5);
        gc.appended(4);
    }
}
