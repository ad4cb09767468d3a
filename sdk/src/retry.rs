//! When the SDK sends an op again after a connection failure.
//!
//! A write whose connection failed (I/O error, timeout, server closed it) may or may not have been
//! applied: the ack, not the write, may be what got lost. Sending it again is safe only when the
//! server can recognise the second copy, which is what an idempotency key is for: the server keeps
//! each key's outcome and answers a repeat with the first outcome (`WriteAck::duplicate`), applying
//! nothing. So the SDK retries:
//!
//! - GET and STATS (reads) and CREATE (an identical declaration is a no-op) always;
//! - INCR and ADD_BOUNDED only when they carry a key: the caller's, or with
//!   `ClientOptions::retry_writes` one the SDK attaches (random, 128 bits) before the first send
//!   and resends unchanged;
//! - CAS and RESET never: a CAS that succeeded before the ack was lost would fail with
//!   `cas_mismatch` on retry, and a repeated RESET could wipe out writes made in between. Their
//!   connection errors are returned to the caller, who knows what the op meant.
//!
//! Ops that were queued but not yet written when a connection failed are always safe to send on
//! the next connection; with retries enabled they are, without they fail with the same error.
//!
//! Server refusals (error replies) stand, except the three that mean "not now"
//! (`Error::is_transient_refusal`): `overloaded` and `shutting_down` (nothing was applied) and
//! `log_poisoned` (outcome unknown until the node restarts). Idempotent ops refused with one of
//! these are sent again after the backoff, as docs/protocol.md (idempotency keys) prescribes.

use std::time::Duration;

use crate::limits::RETRY_BACKOFF_MAX_MS;

/// How many times to try an op whose connection failed, and how long to wait between tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total tries including the first; 1 means no retries.
    pub attempts: u32,
    /// The wait before the first retry; it doubles per further failure, up to
    /// `RETRY_BACKOFF_MAX_MS`.
    pub backoff: Duration,
}

impl RetryPolicy {
    /// No retries: every connection error goes to the caller.
    pub const fn none() -> RetryPolicy {
        RetryPolicy {
            attempts: 1,
            backoff: Duration::ZERO,
        }
    }

    pub const fn new(attempts: u32, backoff: Duration) -> RetryPolicy {
        RetryPolicy { attempts, backoff }
    }

    /// True when a failed op that has been tried `tries` times may be tried again.
    pub(crate) fn allows(&self, tries: u32) -> bool {
        tries < self.attempts
    }

    /// True when the policy retries at all.
    pub(crate) fn enabled(&self) -> bool {
        self.attempts > 1
    }

    /// The wait after the `failures`-th consecutive failure (1-based).
    pub(crate) fn backoff_for(&self, failures: u32) -> Duration {
        assert!(failures >= 1);
        let factor = 1u32 << (failures - 1).min(16);
        self.backoff
            .saturating_mul(factor)
            .min(Duration::from_millis(RETRY_BACKOFF_MAX_MS))
    }
}

impl Default for RetryPolicy {
    /// Three tries, 50 ms then 100 ms apart: enough to ride out a server restart on loopback or a
    /// dropped connection, short enough that a dead server is reported within a second.
    fn default() -> RetryPolicy {
        RetryPolicy::new(3, Duration::from_millis(50))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let policy = RetryPolicy::new(10, Duration::from_millis(100));
        assert_eq!(policy.backoff_for(1), Duration::from_millis(100));
        assert_eq!(policy.backoff_for(2), Duration::from_millis(200));
        assert_eq!(policy.backoff_for(3), Duration::from_millis(400));
        assert_eq!(policy.backoff_for(30), Duration::from_millis(RETRY_BACKOFF_MAX_MS));
    }

    #[test]
    fn attempts_count_the_first_try() {
        let policy = RetryPolicy::new(2, Duration::ZERO);
        assert!(policy.enabled());
        assert!(policy.allows(1));
        assert!(!policy.allows(2));
        assert!(!RetryPolicy::none().enabled());
        assert!(!RetryPolicy::none().allows(1));
    }
}
