//! Window queries: what a client may ask (`Query`), how it is checked against a namespace's
//! tiers and turned into aligned buckets (`plan` -> `Range`), and the partial answer each source
//! adds into (`Partial`: one shard's memory, one window file, another shard's part of a split
//! counter), merged and finished into points.

use super::tier::{aligned, floor_to, Tiers, DAY_MS, HOUR_MS, MINUTE_MS, SECOND_MS};
use super::BUCKET_OUT_OF_RANGE;
use crate::limits::WINDOW_SERIES_POINTS_MAX;

/// The unit of a WINDOW: "the last N seconds" or "the last N minutes". Either includes the
/// current, partial, second or minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Second,
    Minute,
}

/// The step of a SERIES.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Second,
    Minute,
    Hour,
    Day,
}

impl Step {
    pub fn ms(self) -> u64 {
        match self {
            Step::Second => SECOND_MS,
            Step::Minute => MINUTE_MS,
            Step::Hour => HOUR_MS,
            Step::Day => DAY_MS,
        }
    }
}

/// A window query on one name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Query {
    /// Sum of the increments in the last `last` units, the current one included.
    Window { last: u32, unit: Unit },
    /// Sums per `step` from `from_ms` to `to_ms` (ms since the Unix epoch; `from_ms` is rounded
    /// down and `to_ms` up to the step, so every point is a whole, aligned step).
    Series { from_ms: u64, to_ms: u64, step: Step },
}

/// Aligned buckets: points start at `from_ms`, `from_ms + step_ms`, ..., below `to_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub from_ms: u64,
    pub to_ms: u64,
    pub step_ms: u64,
}

impl Range {
    pub fn points(&self) -> usize {
        ((self.to_ms - self.from_ms) / self.step_ms) as usize
    }
}

/// Why a window query cannot be answered.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    #[error("windows are disabled on this node")]
    Disabled,
    #[error("an empty window: `last` must be at least 1")]
    EmptyWindow,
    #[error("from {from_ms} is after to {to_ms}")]
    Reversed { from_ms: u64, to_ms: u64 },
    #[error("{points} points; at most {max} per series")]
    TooManyPoints { points: u64, max: u64 },
    #[error("data from {from_ms} is not kept; the oldest kept bucket starts at {kept_from_ms}")]
    BeyondRetention { from_ms: u64, kept_from_ms: u64 },
    #[error("a step of {step_ms} ms from {from_ms} is finer than the {resolution_ms} ms buckets kept at that age")]
    StepTooFine {
        step_ms: u64,
        resolution_ms: u64,
        from_ms: u64,
    },
    #[error("the sum does not fit an i64")]
    Overflow,
}

/// Checks `query` against `tiers` at `now_ms` and aligns it. The oldest point decides the
/// resolution needed: a point older than the fine tier needs a step that is a multiple of the
/// coarse resolution.
pub fn plan(query: &Query, tiers: &Tiers, now_ms: u64) -> Result<Range, WindowError> {
    let range = match *query {
        Query::Window { last, unit } => {
            if last == 0 {
                return Err(WindowError::EmptyWindow);
            }
            let unit_ms = match unit {
                Unit::Second => SECOND_MS,
                Unit::Minute => MINUTE_MS,
            };
            let to_ms = floor_to(now_ms, unit_ms) + unit_ms;
            let span_ms = u64::from(last) * unit_ms;
            let Some(from_ms) = to_ms.checked_sub(span_ms) else {
                return Err(WindowError::BeyondRetention {
                    from_ms: 0,
                    kept_from_ms: tiers.kept_from_ms(now_ms),
                });
            };
            // The resolution check is on the unit: a window reaching past the fine tier must be
            // counted in whole coarse buckets.
            check_age(tiers, now_ms, from_ms, unit_ms)?;
            Range {
                from_ms,
                to_ms,
                step_ms: span_ms,
            }
        }
        Query::Series { from_ms, to_ms, step } => {
            if from_ms > to_ms {
                return Err(WindowError::Reversed { from_ms, to_ms });
            }
            let step_ms = step.ms();
            let from = floor_to(from_ms, step_ms);
            let to = to_ms.div_ceil(step_ms).saturating_mul(step_ms);
            let points = (to - from) / step_ms;
            if points > WINDOW_SERIES_POINTS_MAX {
                return Err(WindowError::TooManyPoints {
                    points,
                    max: WINDOW_SERIES_POINTS_MAX,
                });
            }
            check_age(tiers, now_ms, from, step_ms)?;
            Range {
                from_ms: from,
                to_ms: to,
                step_ms,
            }
        }
    };
    assert!(aligned(range.from_ms, SECOND_MS));
    assert!(aligned(range.to_ms, SECOND_MS));
    assert!(range.from_ms <= range.to_ms);
    Ok(range)
}

fn check_age(tiers: &Tiers, now_ms: u64, from_ms: u64, step_ms: u64) -> Result<(), WindowError> {
    let kept_from_ms = tiers.kept_from_ms(now_ms);
    if from_ms < kept_from_ms {
        return Err(WindowError::BeyondRetention { from_ms, kept_from_ms });
    }
    let resolution_ms = tiers.resolution_at(from_ms, now_ms);
    if !aligned(step_ms, resolution_ms) || !aligned(from_ms, resolution_ms) {
        return Err(WindowError::StepTooFine {
            step_ms,
            resolution_ms,
            from_ms,
        });
    }
    Ok(())
}

/// A partial answer: sums per point of `range`, as one source saw them. Sources add buckets
/// (`add`), partials of the same range merge (`merge`), and `finish` gives the points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partial {
    range: Range,
    /// i128 so that adding any number of i64 buckets cannot overflow before `finish` checks.
    points: Vec<i128>,
    /// Per point: a bucket of it was `BUCKET_OUT_OF_RANGE`, so its sum is unknown.
    out_of_range: Vec<bool>,
}

impl Partial {
    pub fn new(range: Range) -> Partial {
        Partial {
            range,
            points: vec![0; range.points()],
            out_of_range: vec![false; range.points()],
        }
    }

    pub fn range(&self) -> Range {
        self.range
    }

    /// Adds a bucket of `resolution_ms` starting at `t_ms` (aligned to its resolution). Buckets
    /// outside the range are ignored. A bucket coarser than the step can only straddle points if
    /// the query asked finer than the data (which `plan` refuses); it counts in its start's point.
    /// A bucket of `BUCKET_OUT_OF_RANGE` makes its point's sum unknown: `finish` says `Overflow`.
    #[inline]
    pub fn add(&mut self, t_ms: u64, value: i64) {
        if t_ms < self.range.from_ms || t_ms >= self.range.to_ms {
            return;
        }
        let point = ((t_ms - self.range.from_ms) / self.range.step_ms) as usize;
        self.points[point] += i128::from(value);
        self.out_of_range[point] |= value == BUCKET_OUT_OF_RANGE;
    }

    /// Adds another source's part of the same query (another shard's, or a file's).
    pub fn merge(&mut self, other: &Partial) {
        assert_eq!(self.range, other.range, "partials of one query");
        for (mine, theirs) in self.points.iter_mut().zip(&other.points) {
            *mine += theirs;
        }
        for (mine, theirs) in self.out_of_range.iter_mut().zip(&other.out_of_range) {
            *mine |= theirs;
        }
    }

    /// The points, or `Overflow` if a sum leaves the i64 range or holds a bucket that did
    /// (`BUCKET_OUT_OF_RANGE`). A WINDOW has one point.
    pub fn finish(&self) -> Result<Vec<i64>, WindowError> {
        self.points
            .iter()
            .zip(&self.out_of_range)
            .map(|(&p, &out)| match i64::try_from(p) {
                Ok(p) if !out => Ok(p),
                _ => Err(WindowError::Overflow),
            })
            .collect()
    }
}

/// Time ranges a query needs from window files: [from_ms, to_ms), aligned to seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskRange {
    pub from_ms: u64,
    pub to_ms: u64,
}

/// One shard's answer to a window query (`Shard::window_query`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowPart {
    /// What this shard's memory holds of the range.
    pub partial: Partial,
    /// The part of the range older than this shard's memory: the runtime adds this range, and
    /// only this range, from this shard's window files (`WindowFile::add_to(name, disk, ..)`)
    /// into `partial` (memory already counted the rest). `None`: memory covered it all.
    pub disk: Option<DiskRange>,
    /// Set by the owner when the counter is or was split: other shards hold increments of it too,
    /// so the runtime asks every other shard (`Shard::window_query` there) and merges their parts.
    pub fan_out: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 40 * DAY_MS + 5 * HOUR_MS + 7 * MINUTE_MS + 12_345;

    #[test]
    fn windows_end_after_the_current_unit() {
        let tiers = Tiers::default();
        let range = plan(
            &Query::Window {
                last: 10,
                unit: Unit::Second,
            },
            &tiers,
            NOW,
        )
        .unwrap();
        assert_eq!(range.to_ms, NOW - 345 + 1_000);
        assert_eq!(range.from_ms, range.to_ms - 10_000);
        assert_eq!(range.points(), 1);
        let range = plan(
            &Query::Window {
                last: 3,
                unit: Unit::Minute,
            },
            &tiers,
            NOW,
        )
        .unwrap();
        assert_eq!(range.to_ms, 40 * DAY_MS + 5 * HOUR_MS + 8 * MINUTE_MS);
        assert_eq!(range.step_ms, 3 * MINUTE_MS);
    }

    #[test]
    fn bad_queries_get_clear_errors() {
        let tiers = Tiers::default();
        assert_eq!(
            plan(
                &Query::Window {
                    last: 0,
                    unit: Unit::Second
                },
                &tiers,
                NOW
            ),
            Err(WindowError::EmptyWindow)
        );
        let reversed = Query::Series {
            from_ms: NOW,
            to_ms: NOW - 1,
            step: Step::Second,
        };
        assert_eq!(
            plan(&reversed, &tiers, NOW),
            Err(WindowError::Reversed {
                from_ms: NOW,
                to_ms: NOW - 1
            })
        );
        // Seconds beyond the fine tier (an hour) are not kept.
        let two_hours = Query::Window {
            last: 7_200,
            unit: Unit::Second,
        };
        assert!(matches!(
            plan(&two_hours, &tiers, NOW),
            Err(WindowError::StepTooFine {
                resolution_ms: MINUTE_MS,
                ..
            })
        ));
        assert!(plan(
            &Query::Window {
                last: 120,
                unit: Unit::Minute
            },
            &tiers,
            NOW
        )
        .is_ok());
        let old = Query::Series {
            from_ms: NOW - 31 * DAY_MS,
            to_ms: NOW,
            step: Step::Hour,
        };
        assert!(matches!(
            plan(&old, &tiers, NOW),
            Err(WindowError::BeyondRetention { .. })
        ));
        let month = Query::Series {
            from_ms: NOW - 30 * DAY_MS + HOUR_MS,
            to_ms: NOW,
            step: Step::Minute,
        };
        assert_eq!(plan(&month, &tiers, NOW).unwrap().points(), 30 * 1440 - 60 + 1);
        let fine_month = Query::Series {
            from_ms: NOW - 30 * DAY_MS + HOUR_MS,
            to_ms: NOW,
            step: Step::Second,
        };
        assert!(matches!(
            plan(&fine_month, &tiers, NOW),
            Err(WindowError::TooManyPoints { .. })
        ));
        let beyond = Query::Window {
            last: u32::MAX,
            unit: Unit::Minute,
        };
        assert!(matches!(
            plan(&beyond, &tiers, 5_000),
            Err(WindowError::BeyondRetention { .. })
        ));
    }

    #[test]
    fn the_fine_tier_boundary_is_exact() {
        let tiers = Tiers::default();
        let fine_from = tiers.fine_from_ms(NOW);
        let at = |from_ms| Query::Series {
            from_ms,
            to_ms: NOW,
            step: Step::Second,
        };
        assert!(plan(&at(fine_from), &tiers, NOW).is_ok());
        assert!(matches!(
            plan(&at(fine_from - 1_000), &tiers, NOW),
            Err(WindowError::StepTooFine { .. })
        ));
    }

    #[test]
    fn partials_merge_and_overflow_is_an_error() {
        let range = Range {
            from_ms: 10_000,
            to_ms: 13_000,
            step_ms: 1_000,
        };
        let mut a = Partial::new(range);
        a.add(9_000, 5);
        a.add(10_000, 1);
        a.add(12_000, i64::MAX);
        a.add(13_000, 5);
        let mut b = Partial::new(range);
        b.add(12_000, 1);
        b.add(11_000, 2);
        a.merge(&b);
        assert_eq!(a.finish(), Err(WindowError::Overflow));
        let mut c = Partial::new(range);
        c.add(12_000, i64::MAX);
        c.add(12_000, -1);
        c.merge(&b);
        assert_eq!(c.finish(), Ok(vec![0, 2, i64::MAX]));
        // A bucket that left the i64 range poisons its point, also through a merge, even when the
        // other buckets would bring the sum back into range.
        let mut d = Partial::new(range);
        d.add(11_000, crate::window::BUCKET_OUT_OF_RANGE);
        d.add(11_000, i64::MAX);
        assert_eq!(d.finish(), Err(WindowError::Overflow));
        let mut e = Partial::new(range);
        e.add(10_000, 3);
        e.merge(&d);
        assert_eq!(e.finish(), Err(WindowError::Overflow));
    }
}
