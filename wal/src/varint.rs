//! The varints of log records are the workspace's one implementation, in `tally_proto::varint`
//! (the engine's window files use it too, and the engine cannot depend on this crate).

pub use tally_proto::varint::*;
