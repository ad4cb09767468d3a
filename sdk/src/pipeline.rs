//! A pipeline: many ops queued by the caller and sent in one go, as frames of up to `batch` ops
//! with up to `depth` frames in flight per connection. Results come back in submission order,
//! each op with its own `Result`, whatever shards the ops went to.
//!
//! Batching amortises the per-frame cost (one header, one server dispatch, one reply write) over
//! many ops; depth hides the round trip and lets the server's group commit see many writes at
//! once. Both are capped by the wire limits (`OPS_PER_FRAME_MAX`, `IN_FLIGHT_FRAMES_MAX`); frames
//! are also cut before they would exceed `FRAME_BYTES_MAX`.

use std::borrow::Cow;

use tally_proto::{ErrorCode, Token};

use crate::counter_spec::CounterSpec;
use crate::error::Error;
use crate::limits::{PIPELINE_BATCH_DEFAULT, PIPELINE_BATCH_MAX, PIPELINE_DEPTH_DEFAULT, PIPELINE_DEPTH_MAX};
use crate::op::Op;

/// Ops to send together. Each push returns the op's index in the result vector.
///
/// ```
/// use tally_sdk::Pipeline;
/// let mut pipeline = Pipeline::new().batch(64)?.depth(8)?;
/// let first = pipeline.incr("views:home", 1);
/// let read = pipeline.get("views:home");
/// assert_eq!((first, read, pipeline.len()), (0, 1, 2));
/// # Ok::<(), tally_sdk::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Pipeline {
    ops: Vec<Op<'static>>,
    batch: usize,
    depth: usize,
}

impl Default for Pipeline {
    fn default() -> Pipeline {
        Pipeline {
            ops: Vec::new(),
            batch: PIPELINE_BATCH_DEFAULT,
            depth: PIPELINE_DEPTH_DEFAULT,
        }
    }
}

impl Pipeline {
    /// An empty pipeline sending one op per frame, `PIPELINE_DEPTH_DEFAULT` frames in flight.
    pub fn new() -> Pipeline {
        Pipeline::default()
    }

    /// Ops per frame, 1 to `OPS_PER_FRAME_MAX`; more is refused with `too_many_ops` as the server
    /// would.
    pub fn batch(mut self, ops: usize) -> Result<Pipeline, Error> {
        if ops > PIPELINE_BATCH_MAX {
            return Err(Error::refused(
                ErrorCode::TooManyOps,
                format!("batch of {ops} ops exceeds OPS_PER_FRAME_MAX {PIPELINE_BATCH_MAX}"),
            ));
        }
        if ops == 0 {
            return Err(Error::refused(ErrorCode::InvalidArgument, "batch of 0 ops"));
        }
        self.batch = ops;
        Ok(self)
    }

    /// Frames in flight per connection, 1 to `IN_FLIGHT_FRAMES_MAX`.
    pub fn depth(mut self, frames: usize) -> Result<Pipeline, Error> {
        if frames == 0 || frames > PIPELINE_DEPTH_MAX {
            return Err(Error::refused(
                ErrorCode::InvalidArgument,
                format!("depth of {frames} frames is outside 1..={PIPELINE_DEPTH_MAX}"),
            ));
        }
        self.depth = frames;
        Ok(self)
    }

    pub fn batch_ops(&self) -> usize {
        self.batch
    }

    pub fn depth_frames(&self) -> usize {
        self.depth
    }

    /// Queues any op.
    pub fn push(&mut self, op: Op<'_>) -> usize {
        self.ops.push(op.into_owned());
        self.ops.len() - 1
    }

    pub fn incr(&mut self, name: impl Into<Vec<u8>>, delta: i64) -> usize {
        self.push_incr(name.into(), delta, None)
    }

    /// An increment with an idempotency key: sending it again counts once.
    pub fn incr_with_key(&mut self, name: impl Into<Vec<u8>>, delta: i64, key: u128) -> usize {
        self.push_incr(name.into(), delta, Some(key))
    }

    pub fn get(&mut self, name: impl Into<Vec<u8>>) -> usize {
        self.get_with(name, false, None)
    }

    /// A read; `fresh` sums a split counter's shards now, `token` waits until that write is visible.
    pub fn get_with(&mut self, name: impl Into<Vec<u8>>, fresh: bool, token: Option<Token>) -> usize {
        self.push(Op::Get {
            name: Cow::Owned(name.into()),
            fresh,
            token,
        })
    }

    pub fn create(&mut self, name: impl Into<Vec<u8>>, spec: CounterSpec) -> usize {
        self.push(Op::Create {
            name: Cow::Owned(name.into()),
            spec,
        })
    }

    pub fn cas(&mut self, name: impl Into<Vec<u8>>, expected: i64, new: i64) -> usize {
        self.push(Op::Cas {
            name: Cow::Owned(name.into()),
            expected,
            new,
        })
    }

    pub fn add_bounded(&mut self, name: impl Into<Vec<u8>>, delta: i64, min: i64, max: i64) -> usize {
        self.push(Op::AddBounded {
            name: Cow::Owned(name.into()),
            delta,
            min,
            max,
            key: None,
        })
    }

    pub fn reset(&mut self, name: impl Into<Vec<u8>>, value: i64, reason: impl Into<Vec<u8>>) -> usize {
        self.push(Op::Reset {
            name: Cow::Owned(name.into()),
            value,
            reason: Cow::Owned(reason.into()),
        })
    }

    pub fn stats(&mut self) -> usize {
        self.push(Op::Stats)
    }

    pub fn ops(&self) -> &[Op<'static>] {
        &self.ops
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Drops the queued ops, keeping the settings and the allocation.
    pub fn clear(&mut self) {
        self.ops.clear();
    }

    fn push_incr(&mut self, name: Vec<u8>, delta: i64, key: Option<u128>) -> usize {
        self.push(Op::Incr {
            name: Cow::Owned(name),
            delta,
            key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked_against_the_wire_limits() {
        let error = Pipeline::new().batch(PIPELINE_BATCH_MAX + 1).unwrap_err();
        assert_eq!(error.error_code(), Some(ErrorCode::TooManyOps));
        assert!(Pipeline::new().batch(0).is_err());
        assert!(Pipeline::new().depth(0).is_err());
        assert!(Pipeline::new().depth(PIPELINE_DEPTH_MAX + 1).is_err());
        let pipeline = Pipeline::new().batch(PIPELINE_BATCH_MAX).unwrap().depth(3).unwrap();
        assert_eq!((pipeline.batch_ops(), pipeline.depth_frames()), (PIPELINE_BATCH_MAX, 3));
    }

    #[test]
    fn pushes_return_submission_indices() {
        let mut pipeline = Pipeline::new();
        assert_eq!(pipeline.incr("a", 1), 0);
        assert_eq!(pipeline.incr_with_key("a", 1, 7), 1);
        assert_eq!(pipeline.stats(), 2);
        assert_eq!(pipeline.ops()[1].key(), Some(7));
        pipeline.clear();
        assert!(pipeline.is_empty());
    }
}
