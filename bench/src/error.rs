//! The one error type of tally-bench: what stops a run before or during it. Per-op failures the
//! server answers with are not errors of the run; they are counted in the report.

use std::io;

/// Why a run could not start or could not finish.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A flag value or a combination of flags is not accepted.
    #[error("{0}")]
    Args(String),
    /// A socket or file operation failed; `context` says which.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// The server sent bytes that are not a valid answer to what was asked.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// Setting up the run (HELLO, strict counters, scripts) failed on the server's side.
    #[error("setup failed: {0}")]
    Setup(String),
    /// The server did not answer in time.
    #[error("no reply for {0} ms")]
    Timeout(u64),
}

impl BenchError {
    pub fn io(context: impl Into<String>, source: io::Error) -> BenchError {
        BenchError::Io {
            context: context.into(),
            source,
        }
    }
}

impl From<tally_sdk::Error> for BenchError {
    fn from(error: tally_sdk::Error) -> BenchError {
        BenchError::Setup(error.to_string())
    }
}
