//! Which lsns of one primary shard may be acknowledged to clients, per ack mode, and when a write has
//! waited too long.

use crate::error::ReplicateError;
use crate::limits::REPLICAS_MAX;

/// How many copies must be fsynced before a write is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum AckMode {
    /// The primary's own fsync.
    Local = 0,
    /// The primary and at least one replica: survives the loss of any one node.
    Quorum = 1,
    /// The primary and every configured replica.
    All = 2,
}

/// Whether a write waiting for an ack may be answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wait {
    /// Its lsn is acknowledged in its mode: answer it.
    Ready,
    /// Not yet: look again after the next durable or ack event, or at `deadline_ms`.
    Pending { deadline_ms: u64 },
    /// Answer it with this error (its outcome is unknown to the client).
    Failed(ReplicateError),
}

/// Per primary shard: the local durable lsn, each replica's acked lsn, and the lsn up to which writes
/// may be acknowledged in each mode.
///
/// Invariants: every `lsn_ackable(mode)` only increases; `lsn_ackable(Quorum)` is durable on the
/// primary and on at least one replica (`All`: on every replica) at the moment it was computed;
/// `lsn_ackable(All) ≤ lsn_ackable(Quorum) ≤ lsn_ackable(Local)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quorum {
    lsn_local: u64,
    lsn_replicas: Vec<u64>,
    lsn_ackable: [u64; 3],
    /// Replica acks below this lsn count for nothing (`with_floor`).
    lsn_floor: u64,
}

impl Quorum {
    /// A shard with `replicas` configured replicas (0 allowed: then only `Local` ever advances) whose
    /// log is durable up to `lsn_durable`. Replicas start at 0 until they ack; so do the replicated
    /// modes (no lsn written before is claimed to be on a replica).
    pub fn new(replicas: usize, lsn_durable: u64) -> Quorum {
        assert!(replicas <= REPLICAS_MAX);
        Quorum {
            lsn_local: lsn_durable,
            lsn_replicas: vec![0; replicas],
            lsn_ackable: [lsn_durable, 0, 0],
            lsn_floor: 0,
        }
    }

    /// Replica acks count only from `lsn_floor` on: the last lsn the epoch's primary inherited
    /// (its history entry's start − 1). A replica that acked it holds everything the epoch began
    /// with and so claims the epoch in any later promotion; one still copying older records does
    /// not, and an older record acknowledged through it (a retried keyed write answered from
    /// dedup) could be outvoted by a log of an epoch in between (Raft's figure 8).
    pub fn with_floor(mut self, lsn_floor: u64) -> Quorum {
        self.lsn_floor = lsn_floor;
        self
    }

    /// The primary's log is fsynced up to `lsn`.
    pub fn local_durable(&mut self, lsn: u64) {
        assert!(lsn >= self.lsn_local, "the local durable lsn only increases");
        self.lsn_local = lsn;
        self.recompute();
    }

    /// Replica `replica` has fsynced up to `lsn` (its shipper's `lsn_acked`). May go down, when the
    /// replica was replaced or resynchronised by snapshot: the ackable lsns never do.
    pub fn replica_acked(&mut self, replica: usize, lsn: u64) {
        self.lsn_replicas[replica] = lsn;
        self.recompute();
    }

    fn recompute(&mut self) {
        let floor = self.lsn_floor;
        let best = self.lsn_replicas.iter().copied().max().filter(|&r| r >= floor);
        let worst = self.lsn_replicas.iter().copied().min().filter(|&r| r >= floor);
        let computed = [
            self.lsn_local,
            best.map_or(0, |r| r.min(self.lsn_local)),
            worst.map_or(0, |r| r.min(self.lsn_local)),
        ];
        for (ackable, new) in self.lsn_ackable.iter_mut().zip(computed) {
            *ackable = (*ackable).max(new);
        }
        assert!(self.lsn_ackable[2] <= self.lsn_ackable[1]);
        assert!(self.lsn_ackable[1] <= self.lsn_ackable[0]);
    }

    /// Writes up to this lsn may be acknowledged in `mode`.
    pub fn lsn_ackable(&self, mode: AckMode) -> u64 {
        self.lsn_ackable[mode as usize]
    }

    /// The pure half of the bounded wait: a write with lsn `lsn` in `mode` began waiting at
    /// `since_ms`; it may wait until `since_ms + wait_max_ms`.
    pub fn wait(&self, lsn: u64, mode: AckMode, since_ms: u64, now_ms: u64, wait_max_ms: u64) -> Wait {
        if mode != AckMode::Local && self.lsn_replicas.is_empty() {
            return Wait::Failed(ReplicateError::NoReplicas { mode });
        }
        if lsn <= self.lsn_ackable(mode) {
            return Wait::Ready;
        }
        let deadline_ms = since_ms.saturating_add(wait_max_ms);
        if now_ms >= deadline_ms {
            return Wait::Failed(ReplicateError::AckTimeout {
                lsn,
                mode,
                waited_ms: now_ms.saturating_sub(since_ms),
                lsn_ackable: self.lsn_ackable(mode),
            });
        }
        Wait::Pending { deadline_ms }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AckMode as M;

    fn ackable(q: &Quorum) -> [u64; 3] {
        [q.lsn_ackable(M::Local), q.lsn_ackable(M::Quorum), q.lsn_ackable(M::All)]
    }

    #[test]
    fn quorum_is_the_primary_and_the_best_replica_all_is_the_worst() {
        let mut q = Quorum::new(2, 0);
        q.local_durable(10);
        assert_eq!(ackable(&q), [10, 0, 0]);
        q.replica_acked(0, 7);
        assert_eq!(ackable(&q), [10, 7, 0]);
        q.replica_acked(1, 12);
        assert_eq!(
            ackable(&q),
            [10, 10, 7],
            "a replica ahead of the primary's fsync does not count ahead"
        );
        q.local_durable(15);
        assert_eq!(ackable(&q), [15, 12, 7]);
    }

    #[test]
    fn replica_acks_below_the_epochs_floor_count_for_nothing() {
        // The epoch began after lsn 20 (its primary inherited 1..=20).
        let mut q = Quorum::new(2, 20).with_floor(20);
        q.local_durable(25);
        q.replica_acked(0, 19);
        assert_eq!(ackable(&q), [25, 0, 0], "a replica still copying inherited records");
        q.replica_acked(0, 20);
        assert_eq!(ackable(&q), [25, 20, 0], "it holds the epoch's start state");
        q.replica_acked(1, 24);
        assert_eq!(ackable(&q), [25, 24, 20]);
    }

    #[test]
    fn ackable_lsns_never_go_back() {
        let mut q = Quorum::new(2, 0);
        q.local_durable(10);
        q.replica_acked(0, 10);
        q.replica_acked(1, 10);
        q.replica_acked(1, 3);
        assert_eq!(ackable(&q), [10, 10, 10]);
    }

    #[test]
    fn a_down_replica_blocks_all_until_the_deadline() {
        let mut q = Quorum::new(2, 0);
        q.local_durable(5);
        q.replica_acked(0, 5);
        assert_eq!(q.wait(5, M::Quorum, 100, 101, 50), Wait::Ready);
        assert_eq!(q.wait(5, M::All, 100, 120, 50), Wait::Pending { deadline_ms: 150 });
        assert_eq!(
            q.wait(5, M::All, 100, 150, 50),
            Wait::Failed(ReplicateError::AckTimeout {
                lsn: 5,
                mode: M::All,
                waited_ms: 50,
                lsn_ackable: 0
            })
        );
    }

    #[test]
    fn replicated_modes_without_replicas_fail_at_once() {
        let mut q = Quorum::new(0, 0);
        q.local_durable(3);
        assert_eq!(q.wait(3, M::Local, 0, 0, 10), Wait::Ready);
        assert_eq!(
            q.wait(1, M::Quorum, 0, 0, 10),
            Wait::Failed(ReplicateError::NoReplicas { mode: M::Quorum })
        );
    }
}
