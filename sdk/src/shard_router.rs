//! Which shard an op should be sent to, from the topology in the HELLO reply.
//!
//! Every op that names a counter goes to the counter's owner, `shard_of(name, shard_count)`,
//! except unkeyed increments of a counter the server reported split: those may land on any shard,
//! and the router deals them round-robin so a hot counter's load spreads over every core. Keyed
//! increments always go to the owner, so a retry meets the dedup set of its first send. Routing is
//! an optimisation only: the server forwards any op that reaches the wrong shard.

use std::time::Instant;

use tally_proto::{shard_of, HelloReply};

use crate::op::Op;
use crate::split_set::SplitSet;

#[derive(Debug)]
pub(crate) struct ShardRouter {
    shard_count: u16,
    /// The shard that serves the main connection, so its ops need no connection of their own.
    main_shard: u16,
    ports: Vec<u16>,
    split: SplitSet,
    spread_next: u16,
}

impl ShardRouter {
    pub(crate) fn new(hello: &HelloReply) -> ShardRouter {
        assert!(hello.shard_count > 0);
        assert!(hello.shard < hello.shard_count);
        assert_eq!(hello.shard_ports.len(), usize::from(hello.shard_count));
        ShardRouter {
            shard_count: hello.shard_count,
            main_shard: hello.shard,
            ports: hello.shard_ports.clone(),
            split: SplitSet::new(),
            spread_next: 0,
        }
    }

    /// True if `hello` describes the topology this router was built for.
    pub(crate) fn matches(&self, hello: &HelloReply) -> bool {
        self.shard_count == hello.shard_count && self.main_shard == hello.shard && self.ports == hello.shard_ports
    }

    pub(crate) fn shard_count(&self) -> u16 {
        self.shard_count
    }

    pub(crate) fn main_shard(&self) -> u16 {
        self.main_shard
    }

    /// The TCP port of `shard`'s own listener.
    pub(crate) fn port(&self, shard: u16) -> u16 {
        self.ports[usize::from(shard)]
    }

    /// The shard `op` should go to; `None` for ops that name no counter (STATS), which any
    /// connection serves.
    pub(crate) fn shard_for(&mut self, op: &Op<'_>, key: Option<u128>, now: Instant) -> Option<u16> {
        let name = op.name()?;
        if matches!(op, Op::Incr { .. }) && key.is_none() && self.split.contains(name, now) {
            return Some(self.spread());
        }
        Some(shard_of(name, self.shard_count))
    }

    /// Records the split flag of a reply about `name`.
    pub(crate) fn observe(&mut self, name: &[u8], split: bool, now: Instant) {
        self.split.observe(name, split, now);
    }

    /// True if `name` is currently treated as split.
    pub(crate) fn is_split(&mut self, name: &[u8], now: Instant) -> bool {
        self.split.contains(name, now)
    }

    fn spread(&mut self) -> u16 {
        let shard = self.spread_next;
        self.spread_next = (shard + 1) % self.shard_count;
        shard
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::time::Duration;

    use super::*;
    use crate::limits::SPLIT_FORGET_AFTER_MS;

    fn hello(shard_count: u16) -> HelloReply {
        HelloReply {
            version: 1,
            shard_count,
            shard: 1,
            shard_ports: (0..shard_count).map(|i| 7401 + i).collect(),
            server: "test".into(),
        }
    }

    fn incr(name: &str) -> Op<'_> {
        Op::Incr {
            name: Cow::Borrowed(name.as_bytes()),
            delta: 1,
            key: None,
        }
    }

    #[test]
    fn ops_go_to_the_owner() {
        let now = Instant::now();
        let mut router = ShardRouter::new(&hello(4));
        for i in 0..100 {
            let name = format!("page:{i}");
            let owner = shard_of(name.as_bytes(), 4);
            assert_eq!(router.shard_for(&incr(&name), None, now), Some(owner));
            let get = Op::Get {
                name: Cow::Borrowed(name.as_bytes()),
                fresh: false,
                token: None,
            };
            assert_eq!(router.shard_for(&get, None, now), Some(owner));
        }
        assert_eq!(router.shard_for(&Op::Stats, None, now), None);
        assert_eq!(router.port(2), 7403);
        assert_eq!(router.main_shard(), 1);
    }

    #[test]
    fn unkeyed_increments_of_split_counters_spread_over_every_shard() {
        let now = Instant::now();
        let mut router = ShardRouter::new(&hello(4));
        router.observe(b"hot", true, now);
        let shards: Vec<_> = (0..8)
            .map(|_| router.shard_for(&incr("hot"), None, now).unwrap())
            .collect();
        assert_eq!(shards, vec![0, 1, 2, 3, 0, 1, 2, 3]);
        // Keyed increments and reads still go to the owner.
        let owner = shard_of(b"hot", 4);
        for _ in 0..4 {
            assert_eq!(router.shard_for(&incr("hot"), Some(9), now), Some(owner));
        }
        let get = Op::Get {
            name: Cow::Borrowed(b"hot"),
            fresh: true,
            token: None,
        };
        assert_eq!(router.shard_for(&get, None, now), Some(owner));
    }

    #[test]
    fn an_expired_split_goes_back_to_the_owner() {
        let now = Instant::now();
        let mut router = ShardRouter::new(&hello(8));
        router.observe(b"hot", true, now);
        assert!(router.is_split(b"hot", now));
        let later = now + Duration::from_millis(SPLIT_FORGET_AFTER_MS);
        let owner = shard_of(b"hot", 8);
        for _ in 0..8 {
            assert_eq!(router.shard_for(&incr("hot"), None, later), Some(owner));
        }
        assert!(!router.is_split(b"hot", later));
    }

    #[test]
    fn topology_changes_are_detected() {
        let router = ShardRouter::new(&hello(4));
        assert!(router.matches(&hello(4)));
        assert!(!router.matches(&hello(8)));
        let moved = HelloReply {
            shard_ports: vec![1, 2, 3, 4],
            ..hello(4)
        };
        assert!(!router.matches(&moved));
        assert_eq!(router.shard_count(), 4);
    }
}
