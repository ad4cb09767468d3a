//! Helpers for the history ops (WINDOW, SERIES, AUDIT, EVENTS) shared by the blocking and the
//! async client: a SERIES longer than the server's `SERIES_POINTS_MAX` is asked for in aligned
//! chunks and joined; AUDIT and EVENTS are read page by page until the cursor comes back empty.

use std::borrow::Cow;

use tally_proto::limits::{AUDIT_RECORDS_PER_REPLY_MAX, EVENTS_PER_PAGE_MAX, SERIES_POINTS_MAX};
use tally_proto::SeriesStep;

use crate::error::Error;
use crate::op::Op;
use crate::outcome::Series;

/// The aligned (from_ms, to_ms) pieces of a SERIES, each of at most `SERIES_POINTS_MAX` points,
/// in order. `from_ms <= to_ms` (a reversed range is sent as is, for the server's error).
pub fn series_chunks(from_ms: u64, to_ms: u64, step: SeriesStep) -> Vec<(u64, u64)> {
    let step_ms = step.ms();
    if from_ms > to_ms {
        return vec![(from_ms, to_ms)];
    }
    let mut from = from_ms - from_ms % step_ms;
    let to = to_ms.div_ceil(step_ms).saturating_mul(step_ms);
    let mut chunks = Vec::new();
    loop {
        let end = from.saturating_add(SERIES_POINTS_MAX * step_ms).min(to);
        chunks.push((from, end));
        if end >= to {
            return chunks;
        }
        from = end;
    }
}

/// Joins the answers to `series_chunks`, in order, into one series.
pub fn join_series(parts: Vec<Series>) -> Result<Series, Error> {
    let mut parts = parts.into_iter();
    let Some(mut joined) = parts.next() else {
        return Err(Error::Protocol("a series of no parts".into()));
    };
    for part in parts {
        let expected = joined.from_ms + joined.points.len() as u64 * joined.step_ms;
        if part.step_ms != joined.step_ms || (!part.points.is_empty() && part.from_ms != expected) {
            return Err(Error::Protocol("series parts do not follow each other".into()));
        }
        joined.points.extend(part.points);
    }
    Ok(joined)
}

pub(crate) fn series_op(name: &[u8], from_ms: u64, to_ms: u64, step: SeriesStep) -> Op<'_> {
    Op::Series {
        name: Cow::Borrowed(name),
        from_ms,
        to_ms,
        step,
    }
}

pub(crate) fn audit_op<'a>(name: &'a [u8], from_ms: u64, to_ms: u64, cursor: &'a [u8]) -> Op<'a> {
    Op::Audit {
        name: Cow::Borrowed(name),
        from_ms,
        to_ms,
        limit: AUDIT_RECORDS_PER_REPLY_MAX,
        cursor: Cow::Borrowed(cursor),
    }
}

pub(crate) fn events_op<'a>(name: &'a [u8], from_ms: u64, to_ms: u64, limit: u16, cursor: &'a [u8]) -> Op<'a> {
    Op::Events {
        name: Cow::Borrowed(name),
        from_ms,
        to_ms,
        limit: limit.clamp(1, EVENTS_PER_PAGE_MAX),
        cursor: Cow::Borrowed(cursor),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_aligned_range_without_overlap() {
        let day = 86_400_000;
        let chunks = series_chunks(5, 30 * day, SeriesStep::Minute);
        assert_eq!(chunks.len(), 6, "43 200 minutes in pieces of 7 200");
        assert_eq!(chunks[0].0, 0);
        assert_eq!(chunks.last().unwrap().1, 30 * day);
        for pair in chunks.windows(2) {
            assert_eq!(pair[0].1, pair[1].0);
        }
        for (from, to) in &chunks {
            assert!(SeriesStep::Minute.points(*from, *to) <= SERIES_POINTS_MAX);
        }
        assert_eq!(series_chunks(7, 7, SeriesStep::Second), vec![(0, 1_000)]);
        assert_eq!(series_chunks(9, 3, SeriesStep::Second), vec![(9, 3)]);
    }

    #[test]
    fn joined_parts_must_follow_each_other() {
        let part = |from_ms, points: Vec<i64>| Series {
            from_ms,
            step_ms: 10,
            points,
        };
        let joined = join_series(vec![part(0, vec![1, 2]), part(20, vec![3])]).unwrap();
        assert_eq!(joined.points, vec![1, 2, 3]);
        assert!(join_series(vec![part(0, vec![1]), part(30, vec![2])]).is_err());
        assert!(join_series(Vec::new()).is_err());
    }
}
