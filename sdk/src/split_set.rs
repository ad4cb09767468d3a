//! The counters the server recently reported as split (hot), so that a shard-aware client can
//! spread their unkeyed increments over all shards.
//!
//! A name enters on an ack that carries `REPLY_SPLIT`, leaves on an ack without it, and is
//! forgotten `SPLIT_FORGET_AFTER_MS` after the last SPLIT flag: the server folds cold counters back
//! into their owner, and sending to the owner is always correct, so forgetting errs on the safe
//! side. Time is passed in, so expiry is tested without waiting.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::limits::{SPLIT_FORGET_AFTER_MS, SPLIT_NAMES_MAX};

#[derive(Debug)]
pub(crate) struct SplitSet {
    /// Name to the time of the last ack that said it is split.
    names: HashMap<Vec<u8>, Instant>,
    forget_after: Duration,
}

impl SplitSet {
    pub(crate) fn new() -> SplitSet {
        SplitSet {
            names: HashMap::new(),
            forget_after: Duration::from_millis(SPLIT_FORGET_AFTER_MS),
        }
    }

    /// Records what an ack or a read said about `name`.
    pub(crate) fn observe(&mut self, name: &[u8], split: bool, now: Instant) {
        if !split {
            self.names.remove(name);
            return;
        }
        if let Some(seen) = self.names.get_mut(name) {
            *seen = now;
            return;
        }
        if self.names.len() >= SPLIT_NAMES_MAX {
            self.forget_expired(now);
        }
        // Still full: hot counters are few, so this is a misbehaving server; not tracking the
        // name only means its increments go to the owner.
        if self.names.len() < SPLIT_NAMES_MAX {
            self.names.insert(name.to_vec(), now);
        }
        assert!(self.names.len() <= SPLIT_NAMES_MAX);
    }

    /// True if `name` was reported split within the last `SPLIT_FORGET_AFTER_MS`.
    pub(crate) fn contains(&mut self, name: &[u8], now: Instant) -> bool {
        let Some(&seen) = self.names.get(name) else {
            return false;
        };
        if now.saturating_duration_since(seen) < self.forget_after {
            return true;
        }
        self.names.remove(name);
        false
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.names.len()
    }

    fn forget_expired(&mut self, now: Instant) {
        let forget_after = self.forget_after;
        self.names
            .retain(|_, seen| now.saturating_duration_since(*seen) < forget_after);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_split_flag_adds_and_a_plain_ack_removes() {
        let now = Instant::now();
        let mut set = SplitSet::new();
        assert!(!set.contains(b"hot", now));
        set.observe(b"hot", true, now);
        assert!(set.contains(b"hot", now));
        set.observe(b"hot", false, now);
        assert!(!set.contains(b"hot", now));
        assert_eq!(set.len(), 0);
    }

    #[test]
    fn names_expire_after_a_second_without_a_split_flag() {
        let start = Instant::now();
        let mut set = SplitSet::new();
        set.observe(b"hot", true, start);
        let almost = start + Duration::from_millis(SPLIT_FORGET_AFTER_MS - 1);
        assert!(set.contains(b"hot", almost));
        // A new SPLIT flag restarts the clock.
        set.observe(b"hot", true, almost);
        let later = start + Duration::from_millis(SPLIT_FORGET_AFTER_MS + 500);
        assert!(set.contains(b"hot", later));
        let expired = almost + Duration::from_millis(SPLIT_FORGET_AFTER_MS);
        assert!(!set.contains(b"hot", expired));
        assert_eq!(set.len(), 0, "an expired name is dropped when looked up");
    }

    #[test]
    fn the_set_is_bounded_and_makes_room_from_expired_names() {
        let start = Instant::now();
        let mut set = SplitSet::new();
        for i in 0..SPLIT_NAMES_MAX {
            set.observe(format!("n{i}").as_bytes(), true, start);
        }
        set.observe(b"one-too-many", true, start);
        assert_eq!(set.len(), SPLIT_NAMES_MAX);
        assert!(!set.contains(b"one-too-many", start));
        let later = start + Duration::from_millis(SPLIT_FORGET_AFTER_MS);
        set.observe(b"fresh", true, later);
        assert_eq!(set.len(), 1);
        assert!(set.contains(b"fresh", later));
    }
}
