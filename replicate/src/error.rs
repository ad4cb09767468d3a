//! The errors replication reports: decoding (`DecodeError`) and everything else (`ReplicateError`).

use crate::quorum::AckMode;

/// Why bytes from a peer are not (yet) a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The buffer ends before the frame does: read more and try again.
    #[error("incomplete frame")]
    Incomplete,
    /// The header is sane but the checksum does not match: skip `frame_bytes` (header included) and
    /// tell the followers (`Replica::frame_corrupt`), which ask for what they miss.
    #[error("frame checksum mismatch ({frame_bytes} bytes)")]
    Corrupt { frame_bytes: u32 },
    /// Not a frame of this protocol, or a checksummed frame whose contents break the format (a bug
    /// or a foreign peer): close the connection. Nobody else is affected.
    #[error("invalid frame: {reason}")]
    Invalid { reason: &'static str },
}

pub(crate) fn invalid<T>(reason: &'static str) -> Result<T, DecodeError> {
    Err(DecodeError::Invalid { reason })
}

/// Expected failures of replication. Each names what the runtime should do.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplicateError {
    /// The peer broke the protocol (an ack beyond what was sent, a message of the wrong role, a
    /// shard count that does not match): close its connection; it resumes through Hello.
    #[error("protocol violation by peer: {reason}")]
    Protocol { reason: &'static str },
    /// A write waited longer than the ack timeout for `mode` (the replicas it needs are down or
    /// slow). The write is durable locally and may still reach the replicas: its outcome for the
    /// client is unknown, not failed.
    #[error("lsn {lsn} not acknowledged in {mode:?} mode after {waited_ms} ms (ackable up to {lsn_ackable})")]
    AckTimeout {
        lsn: u64,
        mode: AckMode,
        waited_ms: u64,
        lsn_ackable: u64,
    },
    /// `mode` needs replicas and none are configured.
    #[error("{mode:?} acks need a replica and none is configured")]
    NoReplicas { mode: AckMode },
    /// A node knows a higher epoch: someone else was promoted. This node must not act as primary.
    #[error("superseded by epoch {epoch} (primary {primary:?})")]
    Superseded { epoch: u64, primary: String },
    /// A promotion did not hear from these peers (indices into its peer list) by its deadline, so an
    /// acknowledged write may exist only there. Retry when they are reachable, or promote with
    /// `force` and accept losing such writes.
    #[error("promotion to epoch {epoch}: peers {peers:?} did not answer by the deadline")]
    PeersUnreachable { epoch: u64, peers: Vec<usize> },
    /// The most advanced log among the promoter's and its peers' is `peer`'s, and the promoter's
    /// own log has records after their common prefix (`lsn_common` < `lsn_have`) that the peer's
    /// does not: a demoted primary's unacknowledged writes. The promoter cannot become primary
    /// without discarding them in place; promote that peer instead (it then resynchronises this
    /// node by snapshot).
    #[error("promotion to epoch {epoch}: shard {shard} holds records after lsn {lsn_common} (up to {lsn_have}) that the most advanced peer {peer} lacks: promote that peer instead")]
    Diverged {
        epoch: u64,
        shard: u16,
        peer: usize,
        lsn_common: u64,
        lsn_have: u64,
    },
    /// A promotion could not fetch the records it lacks by its deadline.
    #[error("promotion to epoch {epoch}: shard {shard} reached lsn {lsn_have} of {lsn_target} by the deadline")]
    FetchIncomplete {
        epoch: u64,
        shard: u16,
        lsn_have: u64,
        lsn_target: u64,
    },
}
