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
//! Server refusals (error replies) stand, except the five that mean "not now"
//! (`Error::is_transient_refusal`, the "SDK retries" column of docs/protocol.md §7, "what an error
//! means for a write"): `overloaded` and `shutting_down` (nothing was applied), and `log_poisoned`,
//! `replicas_unavailable` and `outcome_unknown` (the outcome is unknown: the write may be in a log).
//! Idempotent ops refused with one of these are sent again, to the same node, after the backoff,
//! with the same key, as docs/protocol.md (idempotency keys) prescribes; a write that was applied
//! the first time is then answered as a duplicate. `not_primary` is not retried: the SDK does not
//! redirect, the caller sends the op (with the same key) to the primary the message names.
//!
//! A retried write whose earlier copy left the outcome unknown (its connection failed after it was
//! sent, or the server answered one of the unknown-outcome codes) and whose last copy was refused
//! as "not applied" (e.g. `not_primary` from a node that stepped down meanwhile) ends with the
//! earlier, unknown-outcome error (`settle`): the refusal speaks only of the last copy, and the
//! caller must not conclude that nothing was applied.

use std::time::Duration;

use crate::error::Error;
use crate::limits::RETRY_BACKOFF_MAX_MS;
use crate::outcome::Outcome;

/// The result a write ends with after its tries. `unknown` is the first error of a try whose
/// outcome was unknown (`Error::is_outcome_unknown`), if any; `last` is the last try's result.
/// A last error that means "not applied" is replaced by `unknown`: an earlier copy may still have
/// been applied.
pub(crate) fn settle(unknown: Option<Error>, last: Result<Outcome, Error>) -> Result<Outcome, Error> {
    match (unknown, last) {
        (Some(unknown), Err(last)) if !last.is_outcome_unknown() => Err(unknown),
        (_, last) => last,
    }
}

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

    fn server(code: tally_proto::ErrorCode) -> Error {
        Error::Server {
            code: code as u16,
            current: None,
            message: String::new(),
        }
    }

    /// A write whose first copy had an unknown outcome and whose retry was refused as "not
    /// applied" ends unknown; a retry that succeeded or was itself unknown stands.
    #[test]
    fn a_refused_retry_does_not_hide_an_unknown_outcome() {
        use tally_proto::ErrorCode;
        let unknown = server(ErrorCode::OutcomeUnknown);
        let settled = settle(Some(unknown.clone()), Err(server(ErrorCode::NotPrimary)));
        assert_eq!(settled.unwrap_err().error_code(), Some(ErrorCode::OutcomeUnknown));
        let settled = settle(Some(Error::Closed), Err(server(ErrorCode::Overloaded)));
        assert!(matches!(settled, Err(Error::Closed)));
        let settled = settle(Some(unknown.clone()), Err(server(ErrorCode::ReplicasUnavailable)));
        assert_eq!(settled.unwrap_err().error_code(), Some(ErrorCode::ReplicasUnavailable));
        let settled = settle(None, Err(server(ErrorCode::NotPrimary)));
        assert_eq!(settled.unwrap_err().error_code(), Some(ErrorCode::NotPrimary));
        let ok = settle(Some(unknown), Ok(Outcome::Promote { epoch: 2 }));
        assert!(ok.is_ok());
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
