//! Epoch history: where each epoch's primary started writing, per shard. It tells a primary whether
//! a replica's log is a prefix of its own or has a suffix no one else has (a demoted primary's
//! unreplicated writes, or a replica left behind by a forced promotion).
//!
//! The rule (Raft's log matching, with epochs for terms): a record written under epoch `e` at lsn `n`
//! is the same in every log that has lsn `n` from epoch `e` or a later one, as long as `n` is before
//! the start of the first epoch after `e` that became primary. So a replica whose last record came
//! from epoch `e` at lsn `n` shares the current log up to `min(n, start(next epoch after e) - 1)`,
//! and anything it has past that point must be discarded (by snapshot: the WAL never truncates).

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

    /// How much of a log whose last record on `shard` is `lsn_last`, written under `epoch_last`, is
    /// shared with the log this history describes: that many lsns from 1 are identical. A result below
    /// `lsn_last` means the log has a foreign suffix. `None` when the history no longer reaches back
    /// to `epoch_last` (the caller must assume nothing is shared).
    pub fn lsn_shared(&self, shard: u16, epoch_last: u64, lsn_last: u64) -> Option<u64> {
        if lsn_last == 0 {
            return Some(0);
        }
        if self.entries.first().is_some_and(|first| epoch_last < first.epoch) {
            return None;
        }
        match self.entries.iter().find(|e| e.epoch > epoch_last) {
            None => Some(lsn_last),
            Some(next) => {
                let start = *next.lsn_first.get(usize::from(shard))?;
                Some(lsn_last.min(start - 1))
            }
        }
    }
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
        assert_eq!(history().lsn_shared(0, 4, 500), Some(500));
        assert_eq!(
            history().lsn_shared(0, 0, 0),
            Some(0),
            "an empty log is a prefix of any"
        );
    }

    #[test]
    fn a_demoted_primary_shares_only_up_to_the_next_epoch_start() {
        // Epoch 1's primary wrote 1..=105 on shard 0, but epoch 2 started at 101.
        assert_eq!(history().lsn_shared(0, 1, 105), Some(100));
        assert_eq!(history().lsn_shared(0, 1, 90), Some(90));
        assert_eq!(history().lsn_shared(1, 1, 90), Some(50));
    }

    #[test]
    fn an_epoch_that_never_became_primary_ends_where_the_next_one_started() {
        // Epoch 3 fenced peers and fetched, then failed; epoch 4 started at 151.
        assert_eq!(history().lsn_shared(0, 3, 170), Some(150));
    }

    #[test]
    fn a_log_older_than_the_history_shares_nothing_known() {
        let mut h = EpochHistory::new();
        for epoch in 10..10 + EPOCH_HISTORY_MAX as u64 + 1 {
            h.push(epoch, vec![epoch]);
        }
        assert_eq!(h.entries().len(), EPOCH_HISTORY_MAX);
        assert_eq!(h.lsn_shared(0, 10, 5), None);
        assert_eq!(h.lsn_shared(0, 11, 5), Some(5));
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
