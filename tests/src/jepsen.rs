//! The Jepsen counter rule, as a checker over a recorded history of keyed increments.
//!
//! Every attempt to send an increment is recorded with its idempotency key, counter, delta and
//! what the client learnt: acknowledged, refused (not applied), or unknown (a broken connection, a
//! timeout, `replicas_unavailable`). Attempts with the same key are one logical operation: the node
//! applies a key at most once, so retries never add more. Given the values read at the end, for
//! each counter:
//!
//! - `lower` = the sum of acknowledged keys' deltas, plus the negative deltas of unknown keys;
//! - `upper` = the sum of acknowledged keys' deltas, plus the positive deltas of unknown keys;
//! - the rule holds when `lower ≤ final ≤ upper`. Below `lower`, acknowledged increments were
//!   lost; above `upper`, something counted twice (or something never sent was counted).
//!
//! When every unknown key was retried until acknowledged, `lower = upper` and the rule says
//! "exactly once". Refused attempts count nothing; a key refused on one attempt and acknowledged on
//! another counts once. A key sent with two different counters or deltas is a broken history (the
//! test's own bug) and fails the check too.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use tally_proto::ErrorCode;

/// What one attempt's reply said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged; `duplicate` when the node answered a retry from its dedup set.
    Acked { duplicate: bool },
    /// Refused with this wire code; nothing was applied.
    Failed(u16),
    /// Unknown: applied or not.
    Unknown,
}

impl Outcome {
    /// Classifies an SDK result: a server refusal whose code leaves the outcome open
    /// (`replicas_unavailable`, `log_poisoned`) and every transport failure are `Unknown`; other
    /// refusals are `Failed`.
    pub fn of<T>(result: &Result<T, tally_sdk::Error>, duplicate: impl FnOnce(&T) -> bool) -> Outcome {
        match result {
            Ok(ack) => Outcome::Acked {
                duplicate: duplicate(ack),
            },
            Err(error) => match error.code() {
                Some(code) if outcome_unknown(code) => Outcome::Unknown,
                Some(code) => Outcome::Failed(code),
                None => Outcome::Unknown,
            },
        }
    }

    pub fn is_acked(self) -> bool {
        matches!(self, Outcome::Acked { .. })
    }
}

/// Wire codes after which a write may or may not have been applied.
pub fn outcome_unknown(code: u16) -> bool {
    code == ErrorCode::ReplicasUnavailable as u16
        || code == ErrorCode::LogPoisoned as u16
        || code == ErrorCode::OutcomeUnknown as u16
}

/// One send of one keyed increment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub name: String,
    pub key: u128,
    pub delta: i64,
    pub outcome: Outcome,
}

/// The figures of one counter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CounterFigures {
    /// Distinct keys acknowledged at least once.
    pub acked_keys: u64,
    /// Distinct keys never acknowledged whose outcome is unknown.
    pub unknown_keys: u64,
    /// Distinct keys only ever refused.
    pub failed_keys: u64,
    pub lower: i64,
    pub upper: i64,
    /// The value read at the end (`None`: not read, which fails the check).
    pub value: Option<i64>,
}

impl CounterFigures {
    /// How far below `lower` the value is (acknowledged increments lost).
    pub fn lost(&self) -> i64 {
        self.value.map_or(0, |v| (self.lower - v).max(0))
    }

    /// How far above `upper` the value is (counted twice, or never sent).
    pub fn excess(&self) -> i64 {
        self.value.map_or(0, |v| (v - self.upper).max(0))
    }
}

/// The checker's verdict and figures.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub counters: BTreeMap<String, CounterFigures>,
    /// Attempts recorded (first sends and retries).
    pub attempts: u64,
    /// Keys sent more than once.
    pub retried_keys: u64,
    /// Acknowledgements flagged as duplicates (a retry of a key the node had applied).
    pub duplicate_acks: u64,
    /// Everything wrong, one line each. Empty when the rule holds.
    pub violations: Vec<String>,
}

impl Report {
    pub fn is_valid(&self) -> bool {
        self.violations.is_empty()
    }

    /// Panics with the report when the rule does not hold.
    pub fn assert_valid(&self) {
        assert!(self.is_valid(), "the counter rule does not hold:\n{self}");
    }

    pub fn acked_keys(&self) -> u64 {
        self.counters.values().map(|c| c.acked_keys).sum()
    }

    pub fn unknown_keys(&self) -> u64 {
        self.counters.values().map(|c| c.unknown_keys).sum()
    }

    pub fn failed_keys(&self) -> u64 {
        self.counters.values().map(|c| c.failed_keys).sum()
    }

    pub fn lost(&self) -> i64 {
        self.counters.values().map(CounterFigures::lost).sum()
    }

    pub fn excess(&self) -> i64 {
        self.counters.values().map(CounterFigures::excess).sum()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "counter rule: {} counters, {} attempts, keys acked {} / unknown {} / refused {}, \
             retried keys {}, duplicate acks {}, lost {}, excess {}: {}",
            self.counters.len(),
            self.attempts,
            self.acked_keys(),
            self.unknown_keys(),
            self.failed_keys(),
            self.retried_keys,
            self.duplicate_acks,
            self.lost(),
            self.excess(),
            if self.is_valid() { "ok" } else { "VIOLATED" }
        )?;
        for violation in &self.violations {
            write!(f, "\n  {violation}")?;
        }
        Ok(())
    }
}

/// What the attempts of one key add up to.
struct KeyState {
    name: String,
    delta: i64,
    attempts: u32,
    acked: bool,
    unknown: bool,
}

/// Checks the counter rule for `history` against the values read at the end (`finals`, by
/// counter name). Every counter in the history must have a final value; counters only in
/// `finals` must read 0.
pub fn check(history: &[Attempt], finals: &BTreeMap<String, i64>) -> Report {
    let mut report = Report {
        attempts: history.len() as u64,
        ..Report::default()
    };
    let mut keys: HashMap<u128, KeyState> = HashMap::new();
    // Keys in first-sent order, so violations list reproducibly.
    let mut order: Vec<u128> = Vec::new();
    for attempt in history {
        if let Outcome::Acked { duplicate: true } = attempt.outcome {
            report.duplicate_acks += 1;
        }
        let state = keys.entry(attempt.key).or_insert_with(|| {
            order.push(attempt.key);
            KeyState {
                name: attempt.name.clone(),
                delta: attempt.delta,
                attempts: 0,
                acked: false,
                unknown: false,
            }
        });
        if state.name != attempt.name || state.delta != attempt.delta {
            report.violations.push(format!(
                "key {:#x} was sent as {} += {} and as {} += {}: the history is broken",
                attempt.key, state.name, state.delta, attempt.name, attempt.delta
            ));
            continue;
        }
        state.attempts += 1;
        match attempt.outcome {
            Outcome::Acked { .. } => state.acked = true,
            Outcome::Unknown => state.unknown = true,
            Outcome::Failed(_) => {}
        }
    }
    for key in &order {
        let state = &keys[key];
        if state.attempts > 1 {
            report.retried_keys += 1;
        }
        let counter = report.counters.entry(state.name.clone()).or_default();
        if state.acked {
            counter.acked_keys += 1;
            counter.lower += state.delta;
            counter.upper += state.delta;
        } else if state.unknown {
            counter.unknown_keys += 1;
            counter.lower += state.delta.min(0);
            counter.upper += state.delta.max(0);
        } else {
            counter.failed_keys += 1;
        }
    }
    for (name, value) in finals {
        report.counters.entry(name.clone()).or_default().value = Some(*value);
    }
    for (name, counter) in &report.counters {
        match counter.value {
            None => report.violations.push(format!("{name}: no final value was read")),
            Some(value) if counter.lost() > 0 => report.violations.push(format!(
                "{name} = {value}, below the {} acknowledged: {} lost",
                counter.lower,
                counter.lost()
            )),
            Some(value) if counter.excess() > 0 => report.violations.push(format!(
                "{name} = {value}, above the {} acknowledged or possibly applied: {} counted twice or never sent",
                counter.upper,
                counter.excess()
            )),
            Some(_) => {}
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACK: Outcome = Outcome::Acked { duplicate: false };
    const DUP: Outcome = Outcome::Acked { duplicate: true };
    const NOT_PRIMARY: Outcome = Outcome::Failed(ErrorCode::NotPrimary as u16);

    fn attempt(name: &str, key: u128, delta: i64, outcome: Outcome) -> Attempt {
        Attempt {
            name: name.into(),
            key,
            delta,
            outcome,
        }
    }

    fn finals(values: &[(&str, i64)]) -> BTreeMap<String, i64> {
        values.iter().map(|(n, v)| (n.to_string(), *v)).collect()
    }

    #[test]
    fn acked_increments_exactly_once_pass() {
        let history = [
            attempt("a", 1, 1, ACK),
            attempt("a", 2, 1, ACK),
            attempt("b", 3, 5, ACK),
        ];
        let report = check(&history, &finals(&[("a", 2), ("b", 5)]));
        report.assert_valid();
        assert_eq!(report.acked_keys(), 3);
        assert_eq!((report.lost(), report.excess()), (0, 0));
    }

    #[test]
    fn a_lost_acked_increment_fails() {
        let history = [attempt("a", 1, 1, ACK), attempt("a", 2, 1, ACK)];
        let report = check(&history, &finals(&[("a", 1)]));
        assert!(!report.is_valid());
        assert_eq!(report.lost(), 1);
        assert!(report.violations[0].contains("1 lost"), "{report}");
    }

    #[test]
    fn a_double_count_fails() {
        let history = [attempt("a", 1, 1, ACK), attempt("a", 1, 1, DUP)];
        let report = check(&history, &finals(&[("a", 2)]));
        assert!(!report.is_valid());
        assert_eq!(report.excess(), 1);
        assert_eq!(report.retried_keys, 1);
        assert_eq!(report.duplicate_acks, 1);
    }

    #[test]
    fn unknown_outcomes_may_or_may_not_count() {
        let history = [
            attempt("a", 1, 1, ACK),
            attempt("a", 2, 1, Outcome::Unknown),
            attempt("a", 3, 1, Outcome::Unknown),
        ];
        for value in 1..=3 {
            check(&history, &finals(&[("a", value)])).assert_valid();
        }
        assert_eq!(check(&history, &finals(&[("a", 0)])).lost(), 1);
        assert_eq!(check(&history, &finals(&[("a", 4)])).excess(), 1);
    }

    #[test]
    fn negative_unknown_deltas_widen_the_range_downwards() {
        let history = [attempt("a", 1, 10, ACK), attempt("a", 2, -3, Outcome::Unknown)];
        check(&history, &finals(&[("a", 7)])).assert_valid();
        check(&history, &finals(&[("a", 10)])).assert_valid();
        assert!(!check(&history, &finals(&[("a", 6)])).is_valid());
        assert!(!check(&history, &finals(&[("a", 11)])).is_valid());
    }

    #[test]
    fn retries_of_one_key_count_once() {
        // Sent, outcome unknown (the primary died); retried on the new primary: refused once
        // (not primary yet), then acknowledged as a duplicate (the first send had been applied).
        let history = [
            attempt("a", 7, 1, Outcome::Unknown),
            attempt("a", 7, 1, NOT_PRIMARY),
            attempt("a", 7, 1, DUP),
            attempt("a", 8, 1, ACK),
        ];
        let report = check(&history, &finals(&[("a", 2)]));
        report.assert_valid();
        assert_eq!(report.acked_keys(), 2);
        assert_eq!(report.unknown_keys(), 0);
        assert_eq!(report.retried_keys, 1);
        assert!(!check(&history, &finals(&[("a", 3)])).is_valid());
    }

    #[test]
    fn refused_keys_count_nothing() {
        let history = [attempt("a", 1, 1, NOT_PRIMARY), attempt("a", 2, 1, ACK)];
        let report = check(&history, &finals(&[("a", 1)]));
        report.assert_valid();
        assert_eq!(report.failed_keys(), 1);
        assert!(!check(&history, &finals(&[("a", 2)])).is_valid());
    }

    #[test]
    fn a_key_reused_with_another_delta_breaks_the_history() {
        let history = [attempt("a", 1, 1, ACK), attempt("a", 1, 2, ACK)];
        let report = check(&history, &finals(&[("a", 1)]));
        assert!(!report.is_valid());
        assert!(report.violations[0].contains("history is broken"), "{report}");
    }

    #[test]
    fn every_counter_needs_a_final_value_and_extra_counters_read_zero() {
        let history = [attempt("a", 1, 1, ACK)];
        assert!(!check(&history, &finals(&[])).is_valid());
        assert!(!check(&history, &finals(&[("a", 1), ("ghost", 3)])).is_valid());
        check(&history, &finals(&[("a", 1), ("quiet", 0)])).assert_valid();
    }

    #[test]
    fn sdk_results_classify_by_what_the_client_can_know() {
        let ok: Result<bool, tally_sdk::Error> = Ok(true);
        assert_eq!(Outcome::of(&ok, |dup| *dup), DUP);
        let refused = |code: ErrorCode| -> Result<bool, tally_sdk::Error> {
            Err(tally_sdk::Error::Server {
                code: code as u16,
                current: None,
                message: String::new(),
            })
        };
        assert_eq!(Outcome::of(&refused(ErrorCode::NotPrimary), |_| false), NOT_PRIMARY);
        assert_eq!(
            Outcome::of(&refused(ErrorCode::ReplicasUnavailable), |_| false),
            Outcome::Unknown
        );
        let timeout: Result<bool, tally_sdk::Error> = Err(tally_sdk::Error::Timeout);
        assert_eq!(Outcome::of(&timeout, |_| false), Outcome::Unknown);
    }

    #[test]
    fn the_report_prints_its_figures() {
        let history = [attempt("a", 1, 1, ACK), attempt("a", 2, 1, Outcome::Unknown)];
        let text = check(&history, &finals(&[("a", 5)])).to_string();
        assert!(text.contains("keys acked 1 / unknown 1"), "{text}");
        assert!(text.contains("excess 3"), "{text}");
        assert!(text.contains("VIOLATED"), "{text}");
    }
}
