//! The in-memory audit ring: the most recent RESETs of one shard, oldest first, at most
//! `AUDIT_RECORDS_MAX` of them (the oldest is dropped when full). The durable audit trail is the
//! shard's log; this ring serves recent history without reading it.

use std::collections::VecDeque;

/// An admin RESET, kept for audit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResetRecord {
    pub time_ms: u64,
    pub name: Vec<u8>,
    pub old: i64,
    pub new: i64,
    pub reason: Vec<u8>,
    pub client: Vec<u8>,
    pub lsn: u64,
}

impl ResetRecord {
    fn memory_bytes(&self) -> u64 {
        (std::mem::size_of::<ResetRecord>() + self.name.capacity() + self.reason.capacity() + self.client.capacity())
            as u64
    }
}

pub(crate) struct AuditRing {
    records: VecDeque<ResetRecord>,
    records_max: usize,
    memory_bytes: u64,
}

impl AuditRing {
    pub fn new(records_max: usize) -> AuditRing {
        assert!(records_max > 0);
        AuditRing {
            records: VecDeque::new(),
            records_max,
            memory_bytes: 0,
        }
    }

    pub fn push(&mut self, record: ResetRecord) {
        if let Some(last) = self.records.back() {
            assert!(last.lsn < record.lsn, "audit records arrive in lsn order");
        }
        if self.records.len() == self.records_max {
            let dropped = self.records.pop_front().expect("a full ring is not empty");
            self.memory_bytes -= dropped.memory_bytes();
        }
        self.memory_bytes += record.memory_bytes();
        self.records.push_back(record);
        assert!(self.records.len() <= self.records_max);
    }

    pub fn iter(&self) -> impl Iterator<Item = &ResetRecord> {
        self.records.iter()
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn memory_bytes(&self) -> u64 {
        self.memory_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(lsn: u64) -> ResetRecord {
        ResetRecord {
            time_ms: lsn * 10,
            name: b"n".to_vec(),
            old: 0,
            new: lsn as i64,
            reason: b"why".to_vec(),
            client: b"cli".to_vec(),
            lsn,
        }
    }

    #[test]
    fn ring_keeps_the_newest_oldest_first() {
        let mut ring = AuditRing::new(3);
        for lsn in 1..=5 {
            ring.push(record(lsn));
        }
        assert_eq!(ring.len(), 3);
        let lsns: Vec<u64> = ring.iter().map(|r| r.lsn).collect();
        assert_eq!(lsns, vec![3, 4, 5]);
        assert_eq!(ring.memory_bytes(), 3 * record(1).memory_bytes());
    }
}
