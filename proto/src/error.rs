//! Stable error codes and the decoder's error type.

use std::fmt;

/// A wire error code. The numbers never change and are never reused; a new error gets a new
/// number. Clients branch on the code, never on the message.
#[repr(u16)]
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The frame header is malformed (bad version or kind) or an op payload cannot be parsed.
    BadFrame = 1,
    /// The frame's length prefix exceeds `FRAME_BYTES_MAX`.
    FrameTooLarge = 2,
    /// The frame carries more than `OPS_PER_FRAME_MAX` ops.
    TooManyOps = 3,
    /// The opcode is not one this server knows. The rest of the frame is still served.
    UnknownOp = 4,
    /// The name is empty.
    NameEmpty = 5,
    /// The name is longer than `NAME_BYTES_MAX` bytes.
    NameTooLong = 6,
    /// The RESET reason is longer than `REASON_BYTES_MAX` bytes.
    ReasonTooLong = 7,
    /// The result would not fit in an i64 (or the split-counter range); nothing was changed.
    Overflow = 8,
    /// The op needs another counter kind (CAS or bounded add on an analytic counter).
    WrongKind = 9,
    /// A bounded add or a strict counter's declared bounds would be crossed; carries the value.
    BoundViolation = 10,
    /// CAS expected a different value; carries the current value.
    CasMismatch = 11,
    /// The counter does not exist (CAS, bounded add, RESET of an unknown name).
    NotFound = 12,
    /// CREATE of a name that exists with another kind or other bounds.
    AlreadyExists = 13,
    /// An argument is out of its domain (min > max, initial value outside bounds, ...).
    InvalidArgument = 14,
    /// The frame's protocol version is not served by this node.
    UnsupportedVersion = 15,
    /// The node is at `CONNECTIONS_MAX`; the connection is closed after this reply.
    TooManyConnections = 16,
    /// A bounded internal queue is full; retry later.
    Overloaded = 17,
    /// The node is shutting down and takes no new requests.
    ShuttingDown = 18,
    /// The shard's name arena is full; no new names can be created on it.
    TableFull = 19,
    /// The idempotency key was already used with another name or delta.
    IdempotencyConflict = 20,
    /// The shard's log hit an I/O error; it acks no writes until the node restarts.
    LogPoisoned = 21,
    /// The disk is full; the write was not applied.
    DiskFull = 22,
    /// This node is not the primary for writes.
    NotPrimary = 23,
    /// A bug on the server side; the message says what.
    Internal = 24,
    /// A replicated ack mode (quorum, all) could not be met within the replication wait: too few
    /// replicas acknowledged. The write is durable on this node and may still replicate: its
    /// outcome is unknown; retry with the same idempotency key.
    ReplicasUnavailable = 25,
    /// A time range whose start is after its end (SERIES, AUDIT, EVENTS).
    RangeReversed = 26,
    /// A SERIES step (or WINDOW unit) finer than the buckets kept at the age of the range's start
    /// (e.g. 1-second steps older than the fine tier's hour).
    StepTooFine = 27,
    /// The range reaches further back than what is kept (window retention for WINDOW and SERIES,
    /// the log's retention for EVENTS).
    BeyondRetention = 28,
    /// A SERIES of more than `SERIES_POINTS_MAX` points.
    TooManyPoints = 29,
    /// Time windows are turned off on this node.
    WindowsDisabled = 30,
    /// The write reached this node's log but its outcome is unknown: the node stopped being
    /// primary (or stopped) before the write was acknowledged, so the write may or may not be in
    /// the new primary's history. Retry with the same idempotency key: the retry counts once.
    OutcomeUnknown = 31,
    /// EVENTS or AUDIT: this node does not hold the range's history completely (its log begins
    /// after a snapshot installed from the primary, or its audit ring dropped older resets). The
    /// error carries in `current` the earliest `from_ms` this node answers completely.
    HistoryNotHeld = 32,
}

impl ErrorCode {
    /// Every code, in number order. Tests use it to check that numbers stay unique and stable.
    pub const ALL: [ErrorCode; 32] = [
        ErrorCode::BadFrame,
        ErrorCode::FrameTooLarge,
        ErrorCode::TooManyOps,
        ErrorCode::UnknownOp,
        ErrorCode::NameEmpty,
        ErrorCode::NameTooLong,
        ErrorCode::ReasonTooLong,
        ErrorCode::Overflow,
        ErrorCode::WrongKind,
        ErrorCode::BoundViolation,
        ErrorCode::CasMismatch,
        ErrorCode::NotFound,
        ErrorCode::AlreadyExists,
        ErrorCode::InvalidArgument,
        ErrorCode::UnsupportedVersion,
        ErrorCode::TooManyConnections,
        ErrorCode::Overloaded,
        ErrorCode::ShuttingDown,
        ErrorCode::TableFull,
        ErrorCode::IdempotencyConflict,
        ErrorCode::LogPoisoned,
        ErrorCode::DiskFull,
        ErrorCode::NotPrimary,
        ErrorCode::Internal,
        ErrorCode::ReplicasUnavailable,
        ErrorCode::RangeReversed,
        ErrorCode::StepTooFine,
        ErrorCode::BeyondRetention,
        ErrorCode::TooManyPoints,
        ErrorCode::WindowsDisabled,
        ErrorCode::OutcomeUnknown,
        ErrorCode::HistoryNotHeld,
    ];

    pub fn from_u16(code: u16) -> Option<ErrorCode> {
        ErrorCode::ALL.iter().copied().find(|c| *c as u16 == code)
    }

    /// A short stable name, used by the CLI's one-line errors and `--json` output.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::TooManyOps => "too_many_ops",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::NameEmpty => "name_empty",
            ErrorCode::NameTooLong => "name_too_long",
            ErrorCode::ReasonTooLong => "reason_too_long",
            ErrorCode::Overflow => "overflow",
            ErrorCode::WrongKind => "wrong_kind",
            ErrorCode::BoundViolation => "bound_violation",
            ErrorCode::CasMismatch => "cas_mismatch",
            ErrorCode::NotFound => "not_found",
            ErrorCode::AlreadyExists => "already_exists",
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::TableFull => "table_full",
            ErrorCode::IdempotencyConflict => "idempotency_conflict",
            ErrorCode::LogPoisoned => "log_poisoned",
            ErrorCode::DiskFull => "disk_full",
            ErrorCode::NotPrimary => "not_primary",
            ErrorCode::Internal => "internal",
            ErrorCode::ReplicasUnavailable => "replicas_unavailable",
            ErrorCode::RangeReversed => "range_reversed",
            ErrorCode::StepTooFine => "step_too_fine",
            ErrorCode::BeyondRetention => "beyond_retention",
            ErrorCode::TooManyPoints => "too_many_points",
            ErrorCode::WindowsDisabled => "windows_disabled",
            ErrorCode::OutcomeUnknown => "outcome_unknown",
            ErrorCode::HistoryNotHeld => "history_not_held",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), *self as u16)
    }
}

/// Why a byte buffer could not be decoded.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// More bytes are needed; try again after reading more. Not an error of the peer.
    #[error("incomplete: need {needed} more bytes")]
    Incomplete { needed: usize },
    /// The bytes can never form a valid value. `code` is what the server answers with.
    #[error("{code}: {message}")]
    Invalid { code: ErrorCode, message: String },
}

impl DecodeError {
    pub fn invalid(code: ErrorCode, message: impl Into<String>) -> DecodeError {
        DecodeError::Invalid {
            code,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wire numbers and names, written out by hand. A reordered, renumbered or renamed code
    /// fails here: clients in the field branch on these numbers.
    const EXPECTED: [(ErrorCode, u16, &str); 32] = [
        (ErrorCode::BadFrame, 1, "bad_frame"),
        (ErrorCode::FrameTooLarge, 2, "frame_too_large"),
        (ErrorCode::TooManyOps, 3, "too_many_ops"),
        (ErrorCode::UnknownOp, 4, "unknown_op"),
        (ErrorCode::NameEmpty, 5, "name_empty"),
        (ErrorCode::NameTooLong, 6, "name_too_long"),
        (ErrorCode::ReasonTooLong, 7, "reason_too_long"),
        (ErrorCode::Overflow, 8, "overflow"),
        (ErrorCode::WrongKind, 9, "wrong_kind"),
        (ErrorCode::BoundViolation, 10, "bound_violation"),
        (ErrorCode::CasMismatch, 11, "cas_mismatch"),
        (ErrorCode::NotFound, 12, "not_found"),
        (ErrorCode::AlreadyExists, 13, "already_exists"),
        (ErrorCode::InvalidArgument, 14, "invalid_argument"),
        (ErrorCode::UnsupportedVersion, 15, "unsupported_version"),
        (ErrorCode::TooManyConnections, 16, "too_many_connections"),
        (ErrorCode::Overloaded, 17, "overloaded"),
        (ErrorCode::ShuttingDown, 18, "shutting_down"),
        (ErrorCode::TableFull, 19, "table_full"),
        (ErrorCode::IdempotencyConflict, 20, "idempotency_conflict"),
        (ErrorCode::LogPoisoned, 21, "log_poisoned"),
        (ErrorCode::DiskFull, 22, "disk_full"),
        (ErrorCode::NotPrimary, 23, "not_primary"),
        (ErrorCode::Internal, 24, "internal"),
        (ErrorCode::ReplicasUnavailable, 25, "replicas_unavailable"),
        (ErrorCode::RangeReversed, 26, "range_reversed"),
        (ErrorCode::StepTooFine, 27, "step_too_fine"),
        (ErrorCode::BeyondRetention, 28, "beyond_retention"),
        (ErrorCode::TooManyPoints, 29, "too_many_points"),
        (ErrorCode::WindowsDisabled, 30, "windows_disabled"),
        (ErrorCode::OutcomeUnknown, 31, "outcome_unknown"),
        (ErrorCode::HistoryNotHeld, 32, "history_not_held"),
    ];

    #[test]
    fn error_code_numbers_and_names_are_stable() {
        for (code, number, name) in EXPECTED {
            assert_eq!(code as u16, number, "{code:?} changed its number");
            assert_eq!(code.name(), name, "{code:?} changed its name");
            assert_eq!(ErrorCode::from_u16(number), Some(code));
        }
    }

    #[test]
    fn all_lists_every_code_once_in_number_order() {
        assert_eq!(ErrorCode::ALL.len(), EXPECTED.len());
        for (i, code) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(*code, EXPECTED[i].0);
        }
        for pair in ErrorCode::ALL.windows(2) {
            assert!((pair[0] as u16) < (pair[1] as u16), "ALL is in number order");
        }
        let mut names: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ErrorCode::ALL.len(), "names are unique");
    }

    #[test]
    fn unassigned_numbers_map_to_none() {
        assert_eq!(
            ErrorCode::from_u16(0),
            None,
            "0 is the success status, never an error code"
        );
        assert_eq!(ErrorCode::from_u16(33), None);
        assert_eq!(ErrorCode::from_u16(u16::MAX), None);
    }

    #[test]
    fn display_shows_name_and_number() {
        assert_eq!(ErrorCode::CasMismatch.to_string(), "cas_mismatch (11)");
        let err = DecodeError::invalid(ErrorCode::NameEmpty, "name is empty");
        assert_eq!(err.to_string(), "name_empty (5): name is empty");
        assert_eq!(
            DecodeError::Incomplete { needed: 3 }.to_string(),
            "incomplete: need 3 more bytes"
        );
    }
}
