//! The SDK's one error type. Server refusals keep their stable wire code (and the counter's
//! current value where the server sends it); transport failures say whether the op's outcome is
//! unknown, which is what decides whether a retry is safe.

use std::io;
use std::sync::Arc;

use tally_proto::{DecodeError, ErrorCode, OpError};

/// Everything that can go wrong with a request.
#[non_exhaustive]
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The server refused the op. `code` is the raw wire code (`ErrorCode::from_u16` maps it; codes
    /// from newer servers stay usable as numbers). `current` is the counter's value for CAS
    /// mismatches and bound violations.
    #[error("{}", describe_code(*code, *current, message))]
    Server {
        code: u16,
        current: Option<i64>,
        message: String,
    },
    /// The SDK refused the op before sending it, with the code the server would have answered
    /// (a name over `NAME_BYTES_MAX` gets `NameTooLong`, and so on). Nothing reached the server.
    #[error("{}", describe_code(*code as u16, None, message))]
    Refused { code: ErrorCode, message: String },
    /// Connecting, reading or writing failed. Ops that were sent may or may not have been applied.
    #[error("i/o error: {0}")]
    Io(#[source] Arc<io::Error>),
    /// No reply within the read timeout. Ops that were sent may or may not have been applied.
    #[error("timed out waiting for the server")]
    Timeout,
    /// The server closed the connection. Ops that were sent may or may not have been applied.
    #[error("the server closed the connection")]
    Closed,
    /// The server sent bytes that break the protocol (a malformed frame, a reply to a request that
    /// is not the oldest in flight, a wrong reply count). The connection is dropped.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl Error {
    /// The wire error code, for server refusals and client-side refusals alike.
    pub fn code(&self) -> Option<u16> {
        match self {
            Error::Server { code, .. } => Some(*code),
            Error::Refused { code, .. } => Some(*code as u16),
            _ => None,
        }
    }

    /// The wire error code as a known `ErrorCode`, if it is one this SDK knows.
    pub fn error_code(&self) -> Option<ErrorCode> {
        self.code().and_then(ErrorCode::from_u16)
    }

    /// The counter's current value, carried by CAS mismatches and bound violations.
    pub fn current(&self) -> Option<i64> {
        match self {
            Error::Server { current, .. } => *current,
            _ => None,
        }
    }

    /// The server's (or the SDK's) one-line explanation, empty for transport errors.
    pub fn message(&self) -> &str {
        match self {
            Error::Server { message, .. } | Error::Refused { message, .. } => message,
            _ => "",
        }
    }

    /// True for a CAS whose expected value was not the current one; `current()` has the value.
    pub fn is_cas_mismatch(&self) -> bool {
        self.error_code() == Some(ErrorCode::CasMismatch)
    }

    /// True for a bounded add (or a strict counter's declared bound) that would have been crossed;
    /// `current()` has the value.
    pub fn is_bound_violation(&self) -> bool {
        self.error_code() == Some(ErrorCode::BoundViolation)
    }

    /// True when the counter does not exist (CAS, bounded add, RESET of an unknown name).
    pub fn is_not_found(&self) -> bool {
        self.error_code() == Some(ErrorCode::NotFound)
    }

    /// For `history_not_held` (EVENTS, AUDIT): the earliest `from_ms` from which the node holds
    /// the history completely (the error's `current`). Asking again from there gets a complete
    /// answer for the rest of the range; what lies before is not on this node (ask the primary).
    pub fn history_held_from_ms(&self) -> Option<u64> {
        match self.error_code() {
            Some(ErrorCode::HistoryNotHeld) => self.current().and_then(|ms| u64::try_from(ms).ok()),
            _ => None,
        }
    }

    /// True for transport failures (`Io`, `Timeout`, `Closed`): the op may or may not have been
    /// applied. These are the failures a retry with the same idempotency key resolves.
    pub fn is_connection(&self) -> bool {
        matches!(self, Error::Io(_) | Error::Timeout | Error::Closed)
    }

    /// True for server refusals that say "not now" rather than "no" (docs/protocol.md §7, "what
    /// an error means for a write"): `overloaded` and `shutting_down` (nothing was applied), and
    /// the three whose outcome is unknown, `log_poisoned`, `replicas_unavailable` and
    /// `outcome_unknown`. Idempotent ops (reads, keyed writes) are retried on these, after a
    /// backoff, with the same key.
    pub fn is_transient_refusal(&self) -> bool {
        matches!(
            self.error_code(),
            Some(
                ErrorCode::Overloaded
                    | ErrorCode::ShuttingDown
                    | ErrorCode::LogPoisoned
                    | ErrorCode::ReplicasUnavailable
                    | ErrorCode::OutcomeUnknown
            )
        ) && matches!(self, Error::Server { .. })
    }

    /// True when the failed write may nonetheless have been applied: a connection failure after
    /// it was sent, or a server error of unknown outcome (`log_poisoned`, `replicas_unavailable`,
    /// `outcome_unknown`, `internal`). Every other server error means it was not applied.
    pub fn is_outcome_unknown(&self) -> bool {
        self.is_connection()
            || (matches!(self, Error::Server { .. })
                && matches!(
                    self.error_code(),
                    Some(
                        ErrorCode::LogPoisoned
                            | ErrorCode::ReplicasUnavailable
                            | ErrorCode::OutcomeUnknown
                            | ErrorCode::Internal
                    )
                ))
    }

    /// Maps an I/O error, turning timeouts and end-of-stream into their own variants.
    pub(crate) fn from_io(error: io::Error) -> Error {
        match error.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Error::Timeout,
            io::ErrorKind::UnexpectedEof => Error::Closed,
            _ => Error::Io(Arc::new(error)),
        }
    }

    /// A client-side check failed with the code the server would give.
    pub(crate) fn refused(code: ErrorCode, message: impl Into<String>) -> Error {
        Error::Refused {
            code,
            message: message.into(),
        }
    }

    /// A decode error on a check the SDK runs before sending (names, reasons).
    pub(crate) fn from_check(error: DecodeError) -> Error {
        match error {
            DecodeError::Invalid { code, message } => Error::Refused { code, message },
            other => Error::Protocol(format!("client-side check failed oddly: {other}")),
        }
    }

    /// A decode error on bytes the server sent.
    pub(crate) fn from_decode(error: DecodeError) -> Error {
        Error::Protocol(error.to_string())
    }

    pub(crate) fn from_op_error(error: OpError) -> Error {
        Error::Server {
            code: error.code,
            current: error.current,
            message: error.message,
        }
    }
}

/// `bound_violation (10): message (current 2)`: the stable code name first, for people and grep.
fn describe_code(code: u16, current: Option<i64>, message: &str) -> String {
    let name = ErrorCode::from_u16(code).map_or("error", ErrorCode::name);
    let mut out = format!("{name} ({code})");
    if !message.is_empty() {
        out.push_str(": ");
        out.push_str(message);
    }
    if let Some(current) = current {
        out.push_str(&format!(" (current {current})"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_error_display_names_code_message_and_current() {
        let error = Error::Server {
            code: ErrorCode::BoundViolation as u16,
            current: Some(2),
            message: "would go below 0".into(),
        };
        assert_eq!(error.to_string(), "bound_violation (10): would go below 0 (current 2)");
        assert!(error.is_bound_violation());
        assert!(!error.is_cas_mismatch());
        assert_eq!(error.current(), Some(2));
        assert_eq!(error.code(), Some(10));
    }

    #[test]
    fn unknown_codes_stay_numbers() {
        let error = Error::Server {
            code: 999,
            current: None,
            message: String::new(),
        };
        assert_eq!(error.to_string(), "error (999)");
        assert_eq!(error.error_code(), None);
        assert_eq!(error.code(), Some(999));
    }

    #[test]
    fn io_errors_map_to_timeout_and_closed() {
        assert!(matches!(
            Error::from_io(io::ErrorKind::WouldBlock.into()),
            Error::Timeout
        ));
        assert!(matches!(Error::from_io(io::ErrorKind::TimedOut.into()), Error::Timeout));
        assert!(matches!(
            Error::from_io(io::ErrorKind::UnexpectedEof.into()),
            Error::Closed
        ));
        let refused = Error::from_io(io::ErrorKind::ConnectionRefused.into());
        assert!(matches!(refused, Error::Io(_)));
        assert!(refused.is_connection());
        assert!(!Error::Protocol("x".into()).is_connection());
    }

    #[test]
    fn transient_refusals_are_the_not_now_codes() {
        let server = |code: ErrorCode| Error::Server {
            code: code as u16,
            current: None,
            message: String::new(),
        };
        assert!(server(ErrorCode::Overloaded).is_transient_refusal());
        assert!(server(ErrorCode::ShuttingDown).is_transient_refusal());
        assert!(server(ErrorCode::LogPoisoned).is_transient_refusal());
        assert!(server(ErrorCode::ReplicasUnavailable).is_transient_refusal());
        assert!(server(ErrorCode::OutcomeUnknown).is_transient_refusal());
        assert!(!server(ErrorCode::NotPrimary).is_transient_refusal());
        assert!(!server(ErrorCode::DiskFull).is_transient_refusal());
        assert!(!server(ErrorCode::CasMismatch).is_transient_refusal());
        assert!(!Error::refused(ErrorCode::Overloaded, "local").is_transient_refusal());
        assert!(!Error::Timeout.is_transient_refusal());
    }

    /// docs/protocol.md §7, "what an error means for a write", is the one truth: every code has a
    /// row, the SDK retries exactly the codes marked "yes", and treats as of unknown outcome
    /// exactly those whose write "was unknown".
    #[test]
    fn retries_and_unknown_outcomes_follow_the_protocol_table() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/protocol.md");
        let spec = std::fs::read_to_string(&path).unwrap();
        let table = spec
            .split("### What an error means for a write")
            .nth(1)
            .expect("the table of error meanings")
            .split("\n## ")
            .next()
            .unwrap();
        for code in ErrorCode::ALL {
            let start = format!("| {} | `{}` |", code as u16, code.name());
            let row = table
                .lines()
                .find(|line| line.starts_with(&start))
                .unwrap_or_else(|| panic!("no row for {code:?}"));
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let (was, retries) = (cells[3], cells[5]);
            let error = Error::Server {
                code: code as u16,
                current: None,
                message: String::new(),
            };
            assert_eq!(error.is_transient_refusal(), retries == "yes", "{code:?}: {row}");
            assert_eq!(
                error.is_outcome_unknown(),
                was.starts_with("unknown"),
                "{code:?}: {row}"
            );
            assert!(
                was.starts_with("unknown") || was.starts_with("not applied") || was == "not a write",
                "{code:?}: {row}"
            );
        }
    }

    #[test]
    fn history_not_held_carries_the_first_time_held() {
        let error = Error::Server {
            code: ErrorCode::HistoryNotHeld as u16,
            current: Some(1_700_000_000_001),
            message: String::new(),
        };
        assert_eq!(error.history_held_from_ms(), Some(1_700_000_000_001));
        let retention = Error::Server {
            code: ErrorCode::BeyondRetention as u16,
            current: Some(5),
            message: String::new(),
        };
        assert_eq!(retention.history_held_from_ms(), None);
    }

    #[test]
    fn check_errors_become_refusals_with_the_wire_code() {
        let error = Error::from_check(tally_proto::check_name(b"").unwrap_err());
        assert_eq!(error.error_code(), Some(ErrorCode::NameEmpty));
        assert!(matches!(error, Error::Refused { .. }));
        assert!(!error.is_connection());
    }
}
