//! What each connection sends: the op mix, the names it draws, the strict counters it decrements,
//! and the idempotency keys it attaches. A `Workload` is one connection's deterministic stream of
//! ops: seeded from `--seed` and the connection's index, so two runs with the same flags send the
//! same ops in the same order from each connection. Idempotency keys are the exception: they must
//! differ between runs (a key the server has seen within its dedup window makes the INCR a
//! duplicate, or a conflict), so each is a per-run random nonce plus the connection and the op's
//! sequence number, and drawing them does not touch the op stream.
//!
//! Shard-aware runs: a connection bound to shard s draws only names that s owns, so its ops never
//! cross cores. Under `uniform` it draws straight from s's partition of the names (the overall
//! distribution is still uniform). Under `zipf` and `hot` it redraws from the global distribution
//! until the name is s's, so each connection sees the global distribution conditioned on its shard;
//! after `SHARD_DRAWS_MAX` misses it sends the name it drew and the server forwards it. The hot name
//! is the exception: it is sent to every shard, as a shard-aware client spreads the increments of a
//! split counter. Strict counters are never split: a connection uses the ones its shard owns, or
//! all of them (forwarded) when its shard owns none. With fewer names than shards, a shard that owns
//! none sends any name, forwarded.

use std::io::Write;
use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tally_proto::shard_of;

use crate::dist::{NameDist, HOT_NAME};
use crate::limits::SHARD_DRAWS_MAX;

/// The op types tally-bench sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OpKind {
    /// INCR by 1 of a drawn name.
    Incr,
    /// GET of a drawn name.
    Get,
    /// CAS of a strict counter from its last known value to one less.
    Cas,
    /// Bounded decrement (ADD_BOUNDED -1, floor 0) of a strict counter.
    Add,
}

impl OpKind {
    pub const ALL: [OpKind; 4] = [OpKind::Incr, OpKind::Get, OpKind::Cas, OpKind::Add];

    pub fn name(self) -> &'static str {
        match self {
            OpKind::Incr => "incr",
            OpKind::Get => "get",
            OpKind::Cas => "cas",
            OpKind::Add => "add",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// True for the ops on strict counters.
    pub fn is_strict(self) -> bool {
        matches!(self, OpKind::Cas | OpKind::Add)
    }
}

/// `--mix`: relative weights of the op types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mix {
    weights: [u32; 4],
}

impl Mix {
    /// `incr=90,get=10`: op names `incr`, `get`, `cas`, `add` with non-negative integer weights, each
    /// at most once, not all zero. Weights are relative: `incr=9,get=1` is the same mix.
    pub fn parse(text: &str) -> Result<Mix, String> {
        let mut weights = [0u32; 4];
        let mut seen = [false; 4];
        for part in text.split(',') {
            let part = part.trim();
            let Some((op, weight)) = part.split_once('=') else {
                return Err(format!("mix {text:?}: expected op=weight, got {part:?}"));
            };
            let Some(kind) = OpKind::ALL.into_iter().find(|k| k.name() == op.trim()) else {
                return Err(format!("mix {text:?}: unknown op {op:?} (incr, get, cas, add)"));
            };
            let weight: u32 = weight
                .trim()
                .parse()
                .map_err(|_| format!("mix {text:?}: weight {weight:?} of {op} is not a whole number"))?;
            if weight > 1_000_000 {
                return Err(format!("mix {text:?}: weight {weight} of {op} is above 1000000"));
            }
            if seen[kind.index()] {
                return Err(format!("mix {text:?}: {op} given twice"));
            }
            seen[kind.index()] = true;
            weights[kind.index()] = weight;
        }
        if weights.iter().all(|&w| w == 0) {
            return Err(format!("mix {text:?}: every weight is zero"));
        }
        Ok(Mix { weights })
    }

    pub fn weight(&self, kind: OpKind) -> u32 {
        self.weights[kind.index()]
    }

    pub fn has_strict_ops(&self) -> bool {
        self.weight(OpKind::Cas) + self.weight(OpKind::Add) > 0
    }

    /// The spelling `parse` accepts, ops with weight 0 left out.
    pub fn label(&self) -> String {
        OpKind::ALL
            .into_iter()
            .filter(|&k| self.weight(k) > 0)
            .map(|k| format!("{}={}", k.name(), self.weight(k)))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn total(&self) -> u32 {
        self.weights.iter().sum()
    }

    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> OpKind {
        let mut pick = rng.gen_range(0..self.total());
        for kind in OpKind::ALL {
            let weight = self.weight(kind);
            if pick < weight {
                return kind;
            }
            pick -= weight;
        }
        unreachable!("a draw below the total weight falls in some op's range")
    }
}

/// The counter an op addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `bench:{index}`.
    Name(u64),
    /// `bench:strict:{index}`.
    Strict(u32),
}

impl Target {
    /// Appends the counter's name to `buf`.
    pub fn write_name(self, buf: &mut Vec<u8>) {
        match self {
            Target::Name(index) => write!(buf, "bench:{index}"),
            Target::Strict(index) => write!(buf, "bench:strict:{index}"),
        }
        .expect("writing to a Vec cannot fail");
    }

    pub fn strict_index(self) -> Option<u32> {
        match self {
            Target::Strict(index) => Some(index),
            Target::Name(_) => None,
        }
    }
}

/// One op to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedOp {
    pub kind: OpKind,
    pub target: Target,
    /// INCR with `--keys`: the idempotency key.
    pub key: Option<u128>,
    /// CAS: the value it expects (the new value is one less).
    pub expected: i64,
}

/// Which names a shard owns: `owned[s]` lists the indices of the names shard s owns, ascending.
#[derive(Debug)]
pub struct Partition {
    pub shard_count: u16,
    pub owned: Vec<Vec<u32>>,
}

impl Partition {
    /// Hashes every name once (xxh3, as the server does).
    pub fn new(names: u64, shard_count: u16) -> Partition {
        assert!(shard_count >= 1);
        assert!(names <= u64::from(u32::MAX));
        let per_shard = (names / u64::from(shard_count)) as usize + 1;
        let mut owned: Vec<Vec<u32>> = (0..shard_count).map(|_| Vec::with_capacity(per_shard)).collect();
        let mut name = Vec::new();
        for index in 0..names {
            name.clear();
            Target::Name(index).write_name(&mut name);
            owned[usize::from(shard_of(&name, shard_count))].push(index as u32);
        }
        Partition { shard_count, owned }
    }
}

/// What restricts a shard-aware connection to its shard's names.
#[derive(Debug, Clone)]
pub struct ShardBinding {
    pub shard: u16,
    pub partition: Arc<Partition>,
}

/// The settings every connection's workload shares.
#[derive(Debug, Clone)]
pub struct WorkloadSpec {
    pub mix: Mix,
    pub dist: NameDist,
    pub strict_names: u32,
    pub strict_initial: i64,
    pub keys: bool,
    /// Random per run: the base of every idempotency key.
    pub key_nonce: u128,
    pub seed: u64,
}

/// One connection's stream of ops.
pub struct Workload {
    mix: Mix,
    dist: NameDist,
    rng: SmallRng,
    /// The next key, when `--keys`: the run's nonce plus (connection << 64) plus a sequence number.
    key_next: Option<u128>,
    binding: Option<ShardBinding>,
    /// The strict counters this connection works on.
    strict: Vec<u32>,
    /// The last value seen of each strict counter (indexed by strict index), for CAS.
    strict_known: Vec<i64>,
    name: Vec<u8>,
}

impl Workload {
    pub fn new(spec: &WorkloadSpec, connection: usize, binding: Option<ShardBinding>) -> Workload {
        let all_strict: Vec<u32> = (0..spec.strict_names).collect();
        let strict = match &binding {
            Some(binding) => {
                let mut name = Vec::new();
                let own: Vec<u32> = all_strict
                    .iter()
                    .copied()
                    .filter(|&i| {
                        name.clear();
                        Target::Strict(i).write_name(&mut name);
                        shard_of(&name, binding.partition.shard_count) == binding.shard
                    })
                    .collect();
                if own.is_empty() {
                    all_strict
                } else {
                    own
                }
            }
            None => all_strict,
        };
        Workload {
            mix: spec.mix,
            dist: spec.dist.clone(),
            rng: SmallRng::seed_from_u64(stream_seed(spec.seed, connection as u64)),
            key_next: spec
                .keys
                .then(|| spec.key_nonce.wrapping_add(u128::from(connection as u64) << 64)),
            binding,
            strict,
            strict_known: vec![spec.strict_initial; spec.strict_names as usize],
            name: Vec::new(),
        }
    }

    /// The next op.
    pub fn next_op(&mut self) -> PlannedOp {
        let kind = self.mix.sample(&mut self.rng);
        let target = if kind.is_strict() {
            assert!(!self.strict.is_empty(), "strict ops need strict counters");
            Target::Strict(self.strict[self.rng.gen_range(0..self.strict.len())])
        } else {
            Target::Name(self.draw_name())
        };
        let key = match (kind, &mut self.key_next) {
            (OpKind::Incr, Some(next)) => {
                let key = *next;
                *next = next.wrapping_add(1);
                Some(key)
            }
            _ => None,
        };
        let expected = match target {
            Target::Strict(index) => self.strict_known[index as usize],
            Target::Name(_) => 0,
        };
        PlannedOp {
            kind,
            target,
            key,
            expected,
        }
    }

    /// Learns a strict counter's value from a reply (an ack's value, or the current value a
    /// refusal carries), so the next CAS on it expects that.
    pub fn observe_strict(&mut self, index: u32, value: i64) {
        self.strict_known[index as usize] = value;
    }

    fn draw_name(&mut self) -> u64 {
        let Some(binding) = &self.binding else {
            return self.dist.sample(&mut self.rng);
        };
        let owned = &binding.partition.owned[usize::from(binding.shard)];
        if self.dist.is_uniform() {
            if owned.is_empty() {
                // Fewer names than shards: this shard owns none, so its ops are forwarded.
                return self.dist.sample(&mut self.rng);
            }
            return u64::from(owned[self.rng.gen_range(0..owned.len())]);
        }
        let shard_count = binding.partition.shard_count;
        let mut index = self.dist.sample(&mut self.rng);
        for _ in 1..SHARD_DRAWS_MAX {
            if matches!(self.dist, NameDist::Hot { .. }) && index == HOT_NAME {
                break;
            }
            self.name.clear();
            Target::Name(index).write_name(&mut self.name);
            if shard_of(&self.name, shard_count) == binding.shard {
                break;
            }
            index = self.dist.sample(&mut self.rng);
        }
        index
    }
}

/// A connection's seed: splitmix64 of the run seed and the connection index, so neighbouring
/// connections get unrelated streams.
pub fn stream_seed(seed: u64, stream: u64) -> u64 {
    let mut z = seed ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::DistSpec;

    fn spec(mix: &str, dist: DistSpec, names: u64) -> WorkloadSpec {
        WorkloadSpec {
            mix: Mix::parse(mix).unwrap(),
            dist: NameDist::new(dist, names, 0.5),
            strict_names: 4,
            strict_initial: 100,
            keys: false,
            key_nonce: 0x1234,
            seed: 1,
        }
    }

    #[test]
    fn mix_parsing() {
        let mix = Mix::parse("incr=90,get=10").unwrap();
        assert_eq!((mix.weight(OpKind::Incr), mix.weight(OpKind::Get)), (90, 10));
        assert_eq!(mix.weight(OpKind::Cas), 0);
        assert!(!mix.has_strict_ops());
        let mix = Mix::parse(" add = 3 , cas=1 ").unwrap();
        assert_eq!((mix.weight(OpKind::Add), mix.weight(OpKind::Cas)), (3, 1));
        assert!(mix.has_strict_ops());
        assert_eq!(mix.label(), "cas=1,add=3");
        assert_eq!(Mix::parse(&mix.label()), Ok(mix));
    }

    #[test]
    fn mix_errors_name_the_problem() {
        let refused = |text: &str, needle: &str| {
            let error = Mix::parse(text).unwrap_err();
            assert!(error.contains(needle), "{text:?}: {error}");
        };
        refused("", "expected op=weight");
        refused("incr", "expected op=weight");
        refused("incr=90,del=10", "unknown op");
        refused("incr=ninety", "not a whole number");
        refused("incr=-1", "not a whole number");
        refused("incr=1.5", "not a whole number");
        refused("incr=1,incr=2", "twice");
        refused("incr=0,get=0", "every weight is zero");
        refused("incr=2000000", "above");
    }

    #[test]
    fn mix_sampling_follows_the_weights() {
        let mix = Mix::parse("incr=90,get=10").unwrap();
        let mut rng = SmallRng::seed_from_u64(3);
        let draws = 100_000;
        let gets = (0..draws).filter(|_| mix.sample(&mut rng) == OpKind::Get).count();
        let share = gets as f64 / f64::from(draws);
        assert!((share - 0.1).abs() < 0.01, "get share {share}");
    }

    #[test]
    fn names_are_written_as_the_protocol_sees_them() {
        let mut buf = Vec::new();
        Target::Name(42).write_name(&mut buf);
        Target::Strict(7).write_name(&mut buf);
        assert_eq!(buf, b"bench:42bench:strict:7");
    }

    #[test]
    fn same_seed_same_ops_other_connection_other_ops() {
        let spec = spec("incr=50,get=30,add=10,cas=10", DistSpec::Zipf { s: 1.0 }, 1000);
        let ops = |connection| {
            let mut workload = Workload::new(&spec, connection, None);
            (0..200).map(|_| workload.next_op()).collect::<Vec<_>>()
        };
        assert_eq!(ops(0), ops(0));
        assert_ne!(ops(0), ops(1));
        let all = ops(0);
        for op in &all {
            assert_eq!(op.kind.is_strict(), op.target.strict_index().is_some(), "{op:?}");
            assert!(op.key.is_none());
        }
    }

    #[test]
    fn keys_are_unique_per_run_and_leave_the_op_stream_alone() {
        let plain = spec("incr=1,get=1", DistSpec::Uniform, 10);
        let mut keyed = plain.clone();
        keyed.keys = true;
        let ops = |spec: &WorkloadSpec, connection| {
            let mut workload = Workload::new(spec, connection, None);
            (0..100).map(|_| workload.next_op()).collect::<Vec<_>>()
        };
        let (without, with) = (ops(&plain, 0), ops(&keyed, 0));
        assert!(with.iter().all(|op| op.key.is_some() == (op.kind == OpKind::Incr)));
        let strip = |ops: &[PlannedOp]| ops.iter().map(|op| (op.kind, op.target)).collect::<Vec<_>>();
        assert_eq!(strip(&without), strip(&with), "keys do not change the ops");
        let mut keys: Vec<u128> = with.iter().chain(&ops(&keyed, 1)).filter_map(|op| op.key).collect();
        let before = keys.len();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), before, "keys are unique across connections");
        let mut next_run = keyed.clone();
        next_run.key_nonce = 0x9999_0000_0000_0000_0000;
        let again: Vec<u128> = ops(&next_run, 0).iter().filter_map(|op| op.key).collect();
        assert!(
            again.iter().all(|key| keys.binary_search(key).is_err()),
            "another run, other keys"
        );
    }

    #[test]
    fn cas_expects_the_last_value_seen() {
        let spec = spec("cas=1", DistSpec::Uniform, 10);
        let mut workload = Workload::new(&spec, 0, None);
        let op = workload.next_op();
        assert_eq!(op.expected, 100, "starts from --strict-initial");
        let index = op.target.strict_index().unwrap();
        workload.observe_strict(index, 57);
        let next = (0..100)
            .map(|_| workload.next_op())
            .find(|op| op.target == Target::Strict(index))
            .unwrap();
        assert_eq!(next.expected, 57);
    }

    #[test]
    fn shard_aware_connections_draw_only_their_shards_names() {
        let partition = Arc::new(Partition::new(1000, 3));
        assert_eq!(partition.owned.iter().map(Vec::len).sum::<usize>(), 1000);
        for dist in [DistSpec::Uniform, DistSpec::Zipf { s: 1.1 }, DistSpec::Hot] {
            let spec = spec("incr=1", dist, 1000);
            for shard in 0..3u16 {
                let binding = ShardBinding {
                    shard,
                    partition: partition.clone(),
                };
                let mut workload = Workload::new(&spec, usize::from(shard), Some(binding));
                for _ in 0..2000 {
                    let Target::Name(index) = workload.next_op().target else {
                        panic!("incr of a strict counter")
                    };
                    let mut name = Vec::new();
                    Target::Name(index).write_name(&mut name);
                    let hot_exception = dist == DistSpec::Hot && index == HOT_NAME;
                    assert!(
                        hot_exception || shard_of(&name, 3) == shard,
                        "{dist:?}: shard {shard} drew bench:{index}"
                    );
                }
            }
        }
    }

    #[test]
    fn shard_aware_strict_ops_stay_on_their_shard_when_it_owns_any() {
        let partition = Arc::new(Partition::new(10, 2));
        let spec = spec("add=1", DistSpec::Uniform, 10);
        for shard in 0..2u16 {
            let binding = ShardBinding {
                shard,
                partition: partition.clone(),
            };
            let mut workload = Workload::new(&spec, 0, Some(binding));
            let owned: Vec<u32> = (0..4)
                .filter(|&i| {
                    let mut name = Vec::new();
                    Target::Strict(i).write_name(&mut name);
                    shard_of(&name, 2) == shard
                })
                .collect();
            for _ in 0..100 {
                let index = workload.next_op().target.strict_index().unwrap();
                assert!(
                    owned.is_empty() || owned.contains(&index),
                    "shard {shard} used strict {index}"
                );
            }
        }
    }
}
