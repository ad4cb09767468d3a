//! The crate's one error type.

use std::io;

/// Everything a WAL operation can fail with.
///
/// `Io` and `Poisoned` are fatal for the shard's log: after the first failed write or fsync the `Wal`
/// refuses every later call with `Poisoned` (an fsync is never retried: after a failed fsync the page
/// cache may have dropped the dirty pages, so a retry that succeeds proves nothing). `Corruption`
/// comes from recovery and means "refuse to start": a valid part of the log follows a damaged one, so
/// truncating would silently drop acknowledged writes. `Invalid` is a byte image that does not decode.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WalError {
    /// A storage operation failed.
    #[error("{op} failed on {file}: {source}")]
    Io {
        op: &'static str,
        file: String,
        #[source]
        source: io::Error,
    },
    /// An earlier write or sync failed; nothing more is written or acknowledged until a restart.
    #[error("the log is poisoned by an earlier I/O error; restart to recover from disk")]
    Poisoned,
    /// There is no preallocated next segment and the current one is nearly full: refuse new writes.
    #[error("disk full: no space could be allocated for the next log segment")]
    DiskFull,
    /// Recovery found damage that is not a torn tail.
    #[error("log corruption in {file} at byte {offset}: {detail}")]
    Corruption { file: String, offset: u64, detail: String },
    /// Recovery found the log ending below the acknowledged mark (`ack_mark`): records that were
    /// durable, and may have been acknowledged, are gone. Never the result of a torn write; refuse
    /// to start. `lsn_last + 1 ..= lsn_acked` are the lsns known lost.
    #[error(
        "acknowledged records lost: lsns {}..={lsn_acked} were durable (and may have been acknowledged) but the log ends at lsn {lsn_last}: {detail} in {file} at byte {offset}",
        .lsn_last + 1
    )]
    AckedLost {
        file: String,
        offset: u64,
        detail: String,
        lsn_last: u64,
        lsn_acked: u64,
        /// When the damage is a truncated segment: the size it was preallocated with (extending
        /// the file back to it with zeros turns the cut into a clean end, for an operator who
        /// accepts the loss).
        segment_bytes_truncated_from: Option<u64>,
    },
    /// A byte image (record, batch, header, snapshot) is not valid.
    #[error("invalid {what}: {detail}")]
    Invalid { what: &'static str, detail: &'static str },
    /// The configuration is not usable.
    #[error("bad WAL configuration: {0}")]
    Config(String),
}

impl WalError {
    pub(crate) fn io(op: &'static str, file: &str, source: io::Error) -> WalError {
        WalError::Io {
            op,
            file: file.to_string(),
            source,
        }
    }

    pub(crate) fn corruption(file: &str, offset: u64, detail: impl Into<String>) -> WalError {
        WalError::Corruption {
            file: file.to_string(),
            offset,
            detail: detail.into(),
        }
    }
}

/// Shorthand for decoders.
pub(crate) fn invalid<T>(what: &'static str, detail: &'static str) -> Result<T, WalError> {
    Err(WalError::Invalid { what, detail })
}
