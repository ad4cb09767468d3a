//! How a counter is declared by CREATE: its kind and, for strict counters, its bounds and initial
//! value.

use tally_proto::CounterKind;

/// A counter declaration. Analytic counters take any delta and may be split when hot; strict
/// counters have a single owner, support CAS and bounded adds, and enforce their declared bounds
/// on every change. CREATE with an identical declaration is a no-op, so it is safe to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterSpec {
    pub kind: CounterKind,
    /// The value the counter starts at.
    pub initial: i64,
    /// Strict counters only: the value may never go below this.
    pub min: Option<i64>,
    /// Strict counters only: the value may never go above this.
    pub max: Option<i64>,
}

impl CounterSpec {
    /// An analytic counter starting at 0.
    pub const fn analytic() -> CounterSpec {
        CounterSpec {
            kind: CounterKind::Analytic,
            initial: 0,
            min: None,
            max: None,
        }
    }

    /// A strict counter starting at 0 with no bounds.
    pub const fn strict() -> CounterSpec {
        CounterSpec {
            kind: CounterKind::Strict,
            ..CounterSpec::analytic()
        }
    }

    pub const fn initial(self, initial: i64) -> CounterSpec {
        CounterSpec { initial, ..self }
    }

    pub const fn min(self, min: i64) -> CounterSpec {
        CounterSpec { min: Some(min), ..self }
    }

    pub const fn max(self, max: i64) -> CounterSpec {
        CounterSpec { max: Some(max), ..self }
    }
}

impl Default for CounterSpec {
    fn default() -> CounterSpec {
        CounterSpec::analytic()
    }
}
