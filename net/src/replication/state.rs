//! What a node persists about replication, beside its shards' logs:
//!
//! - `DATA_DIR/node`: the node's id and its role (`primary`, or `replica HOST:PORT`), so a
//!   promoted replica restarts as primary and a stepped-down primary restarts as a replica.
//! - `DATA_DIR/shard-N/replication`: the stream's epoch, the epoch of its last record
//!   (`epoch_last`) and the epoch history.
//!
//! Small text files, replaced atomically (temporary file, fsync, rename, directory fsync) before
//! anything is done under what they say. Written with plain blocking calls: they change only at
//! epoch changes, a handful of times in a node's life.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use tally_replicate::{EpochHistory, EpochStart};

/// The node file's name in the data directory.
pub const NODE_FILE: &str = "node";
/// The stream file's name in a shard directory.
pub const STREAM_FILE: &str = "replication";

/// What a node is, as persisted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PersistedRole {
    Primary,
    Replica { primary: String },
}

/// `DATA_DIR/node`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    pub node_id: u128,
    pub role: Option<PersistedRole>,
}

/// `DATA_DIR/shard-N/replication`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StreamState {
    /// The epoch this node accepted last (its fencing token): it acts under no other.
    pub epoch: u64,
    /// The highest epoch this node ever proposed in a promotion (≥ what it accepted of its own):
    /// a later promotion proposes a higher one, so no epoch number is used twice.
    pub epoch_proposed: u64,
    /// The history of this shard's own log: the epochs whose primaries wrote it, each with the lsn
    /// its own writes began (`tally_replicate::EpochHistory`). Its last epoch is the log's
    /// `epoch_last`.
    pub history: EpochHistory,
}

/// Writes `text` to `path` atomically and durably.
fn replace_file(path: &Path, text: &str) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut file = File::create(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    write().map_err(|e| format!("write {}: {e}", path.display()))
}

fn read_optional(path: &Path) -> Result<Option<String>, String> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("read {}: {e}", path.display())),
    }
}

fn bad(path: &Path, line: &str) -> String {
    format!("{}: cannot parse line {line:?}", path.display())
}

impl NodeState {
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(NODE_FILE)
    }

    /// Reads the node file, or makes a new node id (persisted at once) if there is none.
    pub fn load_or_create(data_dir: &Path) -> Result<NodeState, String> {
        let path = NodeState::path(data_dir);
        let Some(text) = read_optional(&path)? else {
            let state = NodeState {
                node_id: new_node_id(),
                role: None,
            };
            state.store(data_dir)?;
            return Ok(state);
        };
        let mut node_id = None;
        let mut role = None;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let (key, value) = line.split_once(' ').unwrap_or((line, ""));
            match key {
                "id" => node_id = Some(u128::from_str_radix(value, 16).map_err(|_| bad(&path, line))?),
                "role" if value == "primary" => role = Some(PersistedRole::Primary),
                "role" => match value.split_once(' ') {
                    Some(("replica", primary)) if !primary.is_empty() => {
                        role = Some(PersistedRole::Replica {
                            primary: primary.to_owned(),
                        })
                    }
                    _ => return Err(bad(&path, line)),
                },
                _ => return Err(bad(&path, line)),
            }
        }
        let node_id = node_id.ok_or_else(|| format!("{}: no id line", path.display()))?;
        Ok(NodeState { node_id, role })
    }

    pub fn store(&self, data_dir: &Path) -> Result<(), String> {
        let mut text = format!("id {:032x}\n", self.node_id);
        match &self.role {
            None => {}
            Some(PersistedRole::Primary) => text.push_str("role primary\n"),
            Some(PersistedRole::Replica { primary }) => text.push_str(&format!("role replica {primary}\n")),
        }
        replace_file(&NodeState::path(data_dir), &text)
    }
}

/// A random 128-bit id (from the std hasher's per-process random keys, the time and the pid).
fn new_node_id() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    let mut id = 0u128;
    for salt in 0..2u64 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(salt);
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.write_u32(std::process::id());
        id = (id << 64) | u128::from(h.finish());
    }
    id.max(1)
}

impl StreamState {
    pub fn path(shard_dir: &Path) -> PathBuf {
        shard_dir.join(STREAM_FILE)
    }

    /// Reads a shard's stream state; a shard that never replicated has the default (epoch 0).
    pub fn load(shard_dir: &Path) -> Result<StreamState, String> {
        let path = StreamState::path(shard_dir);
        let Some(text) = read_optional(&path)? else {
            return Ok(StreamState::default());
        };
        let mut state = StreamState::default();
        let mut entries = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let mut words = line.split_ascii_whitespace();
            let key = words.next().unwrap_or_default();
            let numbers: Result<Vec<u64>, _> = words.map(str::parse::<u64>).collect();
            let numbers = numbers.map_err(|_| bad(&path, line))?;
            match (key, numbers.as_slice()) {
                ("epoch", [epoch]) => state.epoch = *epoch,
                ("epoch_proposed", [epoch]) => state.epoch_proposed = *epoch,
                // Written by earlier versions; the history's last epoch says the same.
                ("epoch_last", [_]) => {}
                ("history", [epoch, lsns @ ..]) if !lsns.is_empty() => entries.push(EpochStart {
                    epoch: *epoch,
                    lsn_first: lsns.to_vec(),
                }),
                _ => return Err(bad(&path, line)),
            }
        }
        state.history = EpochHistory::from_entries(entries)
            .ok_or_else(|| format!("{}: the epoch history is not in order", path.display()))?;
        Ok(state)
    }

    pub fn store(&self, shard_dir: &Path) -> Result<(), String> {
        let mut text = format!("epoch {}\nepoch_proposed {}\n", self.epoch, self.epoch_proposed);
        for entry in self.history.entries() {
            text.push_str(&format!("history {}", entry.epoch));
            for lsn in &entry.lsn_first {
                text.push_str(&format!(" {lsn}"));
            }
            text.push('\n');
        }
        replace_file(&StreamState::path(shard_dir), &text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tally-repl-state-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn node_state_is_created_once_and_round_trips() {
        let dir = temp_dir("node");
        let first = NodeState::load_or_create(&dir).unwrap();
        assert_eq!(first.role, None);
        let again = NodeState::load_or_create(&dir).unwrap();
        assert_eq!(again.node_id, first.node_id, "the id is persisted, not remade");
        let replica = NodeState {
            role: Some(PersistedRole::Replica {
                primary: "127.0.0.1:7400".into(),
            }),
            ..first
        };
        replica.store(&dir).unwrap();
        assert_eq!(NodeState::load_or_create(&dir).unwrap(), replica);
        fs::write(NodeState::path(&dir), "id zz\n").unwrap();
        assert!(
            NodeState::load_or_create(&dir).is_err(),
            "a damaged file is an error, not a new id"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn stream_state_round_trips_with_its_history() {
        let dir = temp_dir("stream");
        assert_eq!(StreamState::load(&dir).unwrap(), StreamState::default());
        let mut history = EpochHistory::new();
        history.push(1, vec![1, 1]);
        history.push(3, vec![40, 17]);
        let state = StreamState {
            epoch: 4,
            epoch_proposed: 6,
            history,
        };
        state.store(&dir).unwrap();
        assert_eq!(StreamState::load(&dir).unwrap(), state);
        fs::write(StreamState::path(&dir), "epoch 2\nhistory 5 1\nhistory 4 1\n").unwrap();
        assert!(StreamState::load(&dir).is_err(), "epochs out of order are refused");
        fs::remove_dir_all(&dir).unwrap();
    }
}
