//! Epoch history: where each epoch's primary started writing, per shard. It tells a primary whether
//! a replica's log is a prefix of its own or has a suffix no one else has (a demoted primary's
//! unreplicated writes, or a replica left behind by a forced promotion).
//!
//! Every log carries its own history: the epochs whose primaries wrote its records, each with the
//! lsn where its own writes begin (records before it were inherited). A replica's history is the
//! prefix of its primary's that covers what it holds (`prefix`), so it describes the replica's log
//! exactly, whoever it followed before.
//!
//! The rule (Raft's log matching, with epochs for terms): one primary per epoch writes each lsn
//! once, so two logs hold the same record at lsn `n` exactly when the same epoch wrote it there,
//! and then they agree on everything before `n` too. `lsn_common` compares two described logs that
//! way; a replica with records past the common prefix holds a foreign suffix (a demoted primary's
//! unacknowledged writes) and is resynchronised by snapshot (the WAL never truncates).

use crate::limits::EPOCH_HISTORY_MAX;

/// One epoch that became primary: the first lsn it wrote on each shard (its log end + 1 when it was
/// promoted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochStart {
    pub epoch: u64,
    pub lsn_first: Vec<u64>,
}

/// The epochs that became primary, oldest first, at most `EPOCH_HISTORY_MAX` (the oldest are
/// dropped). The primary sends it in Hello; replicas persist it so that whichever is promoted next
/// can judge the others.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpochHistory {
    entries: Vec<EpochStart>,
}

impl EpochHistory {
    pub fn new() -> EpochHistory {
        EpochHistory::default()
    }

    /// A history from persisted or received entries. `None` if epochs do not strictly increase, the
    /// shard counts differ, an lsn is 0, or there are too many.
    pub fn from_entries(entries: Vec<EpochStart>) -> Option<EpochHistory> {
        if entries.len() > EPOCH_HISTORY_MAX {
            return None;
        }
        let ordered = entries.windows(2).all(|w| w[0].epoch < w[1].epoch);
        let same_shards = entries.windows(2).all(|w| w[0].lsn_first.len() == w[1].lsn_first.len());
        let from_one = entries.iter().all(|e| e.lsn_first.iter().all(|&lsn| lsn >= 1));
        (ordered && same_shards && from_one).then_some(EpochHistory { entries })
    }

    pub fn entries(&self) -> &[EpochStart] {
        &self.entries
    }

    /// The newest epoch that became primary (0 when none did).
    pub fn epoch_last(&self) -> u64 {
        self.entries.last().map_or(0, |e| e.epoch)
    }

    /// Epoch `epoch` became primary with its first lsn on each shard. Drops the oldest entry beyond
    /// `EPOCH_HISTORY_MAX`.
    pub fn push(&mut self, epoch: u64, lsn_first: Vec<u64>) {
        assert!(epoch > self.epoch_last(), "epochs only increase");
        assert!(lsn_first.iter().all(|&lsn| lsn >= 1), "lsns start at 1");
        if let Some(last) = self.entries.last() {
            assert_eq!(last.lsn_first.len(), lsn_first.len(), "the shard count never changes");
        }
        self.entries.push(EpochStart { epoch, lsn_first });
        if self.entries.len() > EPOCH_HISTORY_MAX {
            self.entries.remove(0);
        }
    }

    /// The description of the first `lsn_last` records of the log this history describes: the
    /// entries that start at or before `lsn_last + 1` on `shard`. An entry that starts exactly at
    /// `lsn_last + 1` stays: a log that holds everything an epoch's primary inherited (and nothing
    /// of its own yet) claims that epoch, as a Viewstamped Replication replica claims the last view
    /// whose start state it holds. This is how a replica describes its own log after appending up
    /// to `lsn_last` from a primary described by `self`.
    pub fn prefix(&self, shard: u16, lsn_last: u64) -> EpochHistory {
        let entries = self
            .entries
            .iter()
            .filter(|e| {
                e.lsn_first
                    .get(usize::from(shard))
                    .is_some_and(|&first| first <= lsn_last + 1)
            })
            .cloned()
            .collect();
        EpochHistory { entries }
    }

    /// Which epoch's primary wrote record `lsn` of `shard` in the log this history describes:
    /// `Writer::Epoch` of the last entry starting at or before it, or `Writer::Before` the first
    /// entry (records older than the history reaches; the same in two logs only if both histories
    /// begin with the same entry).
    fn writer(&self, shard: u16, lsn: u64) -> Writer {
        let at = |e: &EpochStart| e.lsn_first.get(usize::from(shard)).copied().unwrap_or(u64::MAX);
        match self.entries.iter().rev().find(|e| at(e) <= lsn) {
            Some(entry) => Writer::Epoch(entry.epoch),
            None => Writer::Before(self.entries.first().map(|e| (e.epoch, at(e)))),
        }
    }

    /// How many records from lsn 1 two logs of `shard` have in common: this history's log, `len`
    /// records long, and `other`'s, `other_len` long. Two logs hold the same record at an lsn
    /// exactly when the same epoch's primary wrote it (one primary per epoch, and a primary writes
    /// each lsn once: Raft's log matching, with epochs for terms), and then they agree on every
    /// earlier lsn too. So the common prefix ends just before the first lsn whose writers differ.
    pub fn lsn_common(&self, shard: u16, len: u64, other: &EpochHistory, other_len: u64) -> u64 {
        let end = len.min(other_len);
        if end == 0 {
            return 0;
        }
        // The writers change only at entry starts: compare at lsn 1 and at every start up to `end`.
        let mut starts: Vec<u64> = self
            .entries
            .iter()
            .chain(other.entries.iter())
            .filter_map(|e| e.lsn_first.get(usize::from(shard)).copied())
            .filter(|&lsn| lsn <= end)
            .collect();
        starts.push(1);
        starts.sort_unstable();
        starts.dedup();
        for lsn in starts {
            if self.writer(shard, lsn) != other.writer(shard, lsn) {
                return lsn - 1;
            }
        }
        end
    }
}

/// Who wrote a record, as a history knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writer {
    Epoch(u64),
    /// Before the history's first entry (its epoch and start), or in a log with no entry at all.
    Before(Option<(u64, u64)>),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history() -> EpochHistory {
        let mut h = EpochHistory::new();
        h.push(1, vec![1, 1]);
        h.push(2, vec![101, 51]);
        h.push(4, vec![151, 60]);
        h
    }

    #[test]
    fn a_log_of_the_current_epoch_is_shared_whole() {
        let h = history();
        assert_eq!(h.lsn_common(0, 500, &h, 500), 500);
        assert_eq!(
            h.lsn_common(0, 500, &h.prefix(0, 300), 300),
            300,
            "a prefix shares itself"
        );
        assert_eq!(
            h.lsn_common(0, 0, &h, 500),
            0,
            "an empty log shares nothing and loses nothing"
        );
    }

    #[test]
    fn a_demoted_primary_shares_only_up_to_the_next_epoch_start() {
        // Epoch 1's primary wrote 1..=105 on shard 0, but epoch 2 started at 101.
        let demoted_log = history().prefix(0, 0);
        assert_eq!(demoted_log.epoch_last(), 1, "only epoch 1 starts at or before lsn 1");
        assert_eq!(history().lsn_common(0, 500, &demoted_log, 105), 100);
        assert_eq!(history().lsn_common(0, 500, &demoted_log, 90), 90);
        assert_eq!(history().lsn_common(1, 500, &demoted_log, 90), 50);
    }

    #[test]
    fn an_epoch_outside_the_lineage_is_foreign_from_its_own_start() {
        // Epoch 3 became primary at 131 on shard 0 (after inheriting 1..=130 of epoch 2's log),
        // wrote a little, and was replaced by epoch 4, which inherited only 1..=150 of epoch 2's.
        let mut three = EpochHistory::new();
        three.push(1, vec![1, 1]);
        three.push(2, vec![101, 51]);
        three.push(3, vec![131, 55]);
        assert_eq!(history().lsn_common(0, 500, &three, 170), 130);
        assert_eq!(three.lsn_common(0, 170, &history(), 500), 130, "symmetric");
    }

    #[test]
    fn a_prefix_keeps_the_epoch_whose_start_state_it_holds() {
        let h = history();
        assert_eq!(h.prefix(0, 100).epoch_last(), 2, "holds all epoch 2 inherited");
        assert_eq!(h.prefix(0, 99).epoch_last(), 1);
        assert_eq!(h.prefix(0, 150).epoch_last(), 4);
        assert_eq!(h.prefix(1, 59).epoch_last(), 4);
        assert_eq!(h.prefix(1, 58).epoch_last(), 2);
    }

    #[test]
    fn logs_older_than_both_histories_match_only_under_the_same_first_entry() {
        let mut a = EpochHistory::new();
        a.push(10, vec![50]);
        let mut b = EpochHistory::new();
        b.push(11, vec![50]);
        assert_eq!(a.lsn_common(0, 60, &a.clone(), 60), 60);
        assert_eq!(
            a.lsn_common(0, 60, &b, 60),
            0,
            "unknown writers of different histories differ"
        );
        assert_eq!(EpochHistory::new().lsn_common(0, 60, &a, 60), 0);
    }

    #[test]
    fn trimming_keeps_the_newest_entries() {
        let mut h = EpochHistory::new();
        for epoch in 10..10 + EPOCH_HISTORY_MAX as u64 + 1 {
            h.push(epoch, vec![epoch]);
        }
        assert_eq!(h.entries().len(), EPOCH_HISTORY_MAX);
        assert_eq!(h.entries()[0].epoch, 11);
    }

    #[test]
    fn entries_must_be_ordered() {
        let a = EpochStart {
            epoch: 2,
            lsn_first: vec![1],
        };
        let b = EpochStart {
            epoch: 2,
            lsn_first: vec![5],
        };
        assert!(EpochHistory::from_entries(vec![a.clone(), b]).is_none());
        assert!(EpochHistory::from_entries(vec![a]).is_some());
    }
}
