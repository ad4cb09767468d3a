//! What one connection measured: a latency histogram (µs, `LATENCY_SIGNIFICANT_DIGITS` significant
//! digits) and outcome counts per op type. Each connection thread fills its own `Recorder` without
//! any sharing; the run merges them when every thread is done.
//!
//! Every op the server answered is recorded, whatever the answer: `ok`, `refused` (the expected
//! refusals of strict ops: a bound violation or a CAS mismatch; and a keyed INCR the server took
//! for a duplicate, which applied nothing) or `failed` (any other error code).

use std::collections::BTreeMap;

use hdrhistogram::Histogram;

use crate::limits::{LATENCY_SIGNIFICANT_DIGITS, LATENCY_US_MAX};
use crate::workload::{Mix, OpKind};

/// How the server answered one op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// Not applied, as the op allows: `bound_violation`, `cas_mismatch`, `duplicate`.
    Refused(&'static str),
    /// Any other error, by its stable code name (`overloaded`, `err`, ...).
    Failed(&'static str),
}

/// One op's reply as a wire driver decodes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpReply {
    /// The op type the reply says it answers, when the protocol echoes it (Tally does, RESP not).
    pub echoed: Option<OpKind>,
    pub outcome: Outcome,
    /// The counter's value after the op, or the current value a refusal carries.
    pub value: Option<i64>,
    /// The server's message, for errors only.
    pub message: Option<String>,
}

impl OpReply {
    pub fn ok(echoed: Option<OpKind>, value: Option<i64>) -> OpReply {
        OpReply {
            echoed,
            outcome: Outcome::Ok,
            value,
            message: None,
        }
    }
}

/// The measurements of one op type.
#[derive(Debug, Clone)]
pub struct KindStats {
    pub latency_us: Histogram<u64>,
    pub ok: u64,
    pub refused: BTreeMap<&'static str, u64>,
    pub failed: BTreeMap<&'static str, u64>,
}

impl KindStats {
    fn new() -> KindStats {
        KindStats {
            latency_us: new_histogram(),
            ok: 0,
            refused: BTreeMap::new(),
            failed: BTreeMap::new(),
        }
    }

    /// Ops answered, whatever the answer.
    pub fn ops(&self) -> u64 {
        self.latency_us.len()
    }

    pub fn refused_total(&self) -> u64 {
        self.refused.values().sum()
    }

    pub fn failed_total(&self) -> u64 {
        self.failed.values().sum()
    }

    fn merge(&mut self, other: &KindStats) {
        self.latency_us
            .add(&other.latency_us)
            .expect("histograms with the same bounds always merge");
        self.ok += other.ok;
        for (code, count) in &other.refused {
            *self.refused.entry(code).or_default() += count;
        }
        for (code, count) in &other.failed {
            *self.failed.entry(code).or_default() += count;
        }
    }
}

/// A histogram covering 1 µs to `LATENCY_US_MAX`.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, LATENCY_SIGNIFICANT_DIGITS).expect("valid histogram bounds")
}

/// One connection's (or, merged, the run's) measurements.
#[derive(Debug, Clone)]
pub struct Recorder {
    /// Only the op types in the mix have stats: a histogram is a few hundred KiB.
    kinds: [Option<KindStats>; 4],
    /// The first message seen for each error code, for the report.
    pub messages: BTreeMap<&'static str, String>,
}

impl Recorder {
    pub fn new(mix: &Mix) -> Recorder {
        Recorder {
            kinds: OpKind::ALL.map(|kind| (mix.weight(kind) > 0).then(KindStats::new)),
            messages: BTreeMap::new(),
        }
    }

    /// Records one answered op.
    pub fn record(&mut self, kind: OpKind, reply: &OpReply, latency_us: u64) {
        let stats = self.kinds[kind.index()]
            .as_mut()
            .expect("only op types in the mix are sent");
        stats.latency_us.saturating_record(latency_us);
        match reply.outcome {
            Outcome::Ok => stats.ok += 1,
            Outcome::Refused(code) => *stats.refused.entry(code).or_default() += 1,
            Outcome::Failed(code) => {
                *stats.failed.entry(code).or_default() += 1;
                if let Some(message) = &reply.message {
                    self.messages.entry(code).or_insert_with(|| message.clone());
                }
            }
        }
    }

    /// Adds another recorder's measurements to these.
    pub fn merge(&mut self, other: &Recorder) {
        for (mine, theirs) in self.kinds.iter_mut().zip(&other.kinds) {
            match (mine.as_mut(), theirs) {
                (Some(mine), Some(theirs)) => mine.merge(theirs),
                (None, Some(theirs)) => *mine = Some(theirs.clone()),
                (_, None) => {}
            }
        }
        for (code, message) in &other.messages {
            self.messages.entry(code).or_insert_with(|| message.clone());
        }
    }

    /// The stats of one op type, if it is in the mix.
    pub fn kind(&self, kind: OpKind) -> Option<&KindStats> {
        self.kinds[kind.index()].as_ref()
    }

    /// Every op type in the mix with its stats.
    pub fn kinds(&self) -> impl Iterator<Item = (OpKind, &KindStats)> {
        OpKind::ALL
            .into_iter()
            .filter_map(|kind| self.kind(kind).map(|stats| (kind, stats)))
    }

    /// All op types together.
    pub fn total(&self) -> KindStats {
        let mut total = KindStats::new();
        for (_, stats) in self.kinds() {
            total.merge(stats);
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mix() -> Mix {
        Mix::parse("incr=1,get=1,add=1").unwrap()
    }

    #[test]
    fn records_outcomes_and_latencies_by_kind() {
        let mut recorder = Recorder::new(&mix());
        recorder.record(OpKind::Incr, &OpReply::ok(None, Some(1)), 100);
        recorder.record(OpKind::Incr, &OpReply::ok(None, Some(2)), 300);
        let refused = OpReply {
            outcome: Outcome::Refused("bound_violation"),
            ..OpReply::ok(None, Some(0))
        };
        recorder.record(OpKind::Add, &refused, 50);
        let failed = OpReply {
            outcome: Outcome::Failed("overloaded"),
            message: Some("queue full".to_string()),
            ..OpReply::ok(None, None)
        };
        recorder.record(OpKind::Get, &failed, 10);
        let incr = recorder.kind(OpKind::Incr).unwrap();
        assert_eq!((incr.ops(), incr.ok), (2, 2));
        assert_eq!(incr.latency_us.max(), 300);
        let add = recorder.kind(OpKind::Add).unwrap();
        assert_eq!((add.ok, add.refused_total(), add.failed_total()), (0, 1, 0));
        assert_eq!(recorder.kind(OpKind::Get).unwrap().failed["overloaded"], 1);
        assert_eq!(recorder.messages["overloaded"], "queue full");
        assert!(recorder.kind(OpKind::Cas).is_none(), "cas is not in the mix");
        assert_eq!(recorder.total().ops(), 4);
    }

    #[test]
    fn merging_adds_counts_and_keeps_the_tails() {
        let mut a = Recorder::new(&mix());
        let mut b = Recorder::new(&Mix::parse("incr=1,cas=1").unwrap());
        for latency in 1..=1000 {
            a.record(OpKind::Incr, &OpReply::ok(None, None), latency);
        }
        for _ in 0..1000 {
            b.record(OpKind::Incr, &OpReply::ok(None, None), 5000);
        }
        let mismatch = OpReply {
            outcome: Outcome::Refused("cas_mismatch"),
            ..OpReply::ok(None, Some(3))
        };
        b.record(OpKind::Cas, &mismatch, 70);
        a.merge(&b);
        let incr = a.kind(OpKind::Incr).unwrap();
        assert_eq!((incr.ops(), incr.ok), (2000, 2000));
        assert_eq!(incr.latency_us.max(), incr.latency_us.highest_equivalent(5000));
        // Half the ops were 1..=1000 µs and half 5000 µs: the median sits at the top of the first half.
        let p50 = incr.latency_us.value_at_quantile(0.5);
        assert!((995..=1001).contains(&p50), "p50 {p50}");
        assert_eq!(
            incr.latency_us.value_at_quantile(0.75),
            incr.latency_us.highest_equivalent(5000)
        );
        let cas = a
            .kind(OpKind::Cas)
            .expect("a kind only the other recorder had is adopted");
        assert_eq!(cas.refused["cas_mismatch"], 1);
        assert_eq!(a.total().ops(), 2001);
    }

    #[test]
    fn latencies_beyond_the_range_are_clamped_not_lost() {
        let mut recorder = Recorder::new(&mix());
        recorder.record(OpKind::Get, &OpReply::ok(None, None), LATENCY_US_MAX * 10);
        recorder.record(OpKind::Get, &OpReply::ok(None, None), 0);
        let get = recorder.kind(OpKind::Get).unwrap();
        assert_eq!(get.ops(), 2);
        assert_eq!(get.latency_us.max(), get.latency_us.highest_equivalent(LATENCY_US_MAX));
    }
}
