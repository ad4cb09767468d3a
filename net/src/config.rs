//! `tallyd`'s configuration: command-line flags with `TALLY_*` environment equivalents.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use tally_engine::{HotConfig, NamespaceRule};
use tally_proto::CounterKind;
use tally_replicate::AckMode;

use crate::log::Level;

/// tallyd: the Tally counter node. With no flags it serves on 127.0.0.1:7400 with data in
/// ./tally-data, one shard per usable CPU.
#[derive(Debug, Clone, Parser)]
#[command(name = "tallyd", version, about)]
pub struct Config {
    /// Main address. Every shard accepts here (SO_REUSEPORT); port 0 picks a free port.
    #[arg(long, env = "TALLY_LISTEN", default_value = "127.0.0.1:7400")]
    pub listen: SocketAddr,

    /// Data directory (created if missing; locked against a second tallyd).
    #[arg(long, env = "TALLY_DATA_DIR", default_value = "./tally-data")]
    pub data_dir: PathBuf,

    /// Number of shards (one glommio executor each). Default: the CPUs this process may run on.
    #[arg(long, env = "TALLY_SHARDS")]
    pub shards: Option<u16>,

    /// Also serve on this Unix socket (sidecar mode); served by shard 0.
    #[arg(long, env = "TALLY_UNIX_SOCKET")]
    pub unix_socket: Option<PathBuf>,

    /// First per-shard direct port (shard i listens on base + i). Default: listen port + 1, or
    /// free ports when the listen port is 0.
    #[arg(long, env = "TALLY_SHARD_PORT_BASE")]
    pub shard_port_base: Option<u16>,

    #[arg(long, env = "TALLY_LOG_LEVEL", value_enum, default_value = "info")]
    pub log_level: Level,

    /// Split a counter across shards above this many increments per second.
    #[arg(long, env = "TALLY_SPLIT_RATE", default_value_t = 50_000)]
    pub split_rate: u64,

    /// Merge a split counter back below this many increments per second.
    #[arg(long, env = "TALLY_MERGE_RATE", default_value_t = 5_000)]
    pub merge_rate: u64,

    /// Split this counter from its first increment (repeatable).
    #[arg(long = "split-force", env = "TALLY_SPLIT_FORCE", value_delimiter = ',')]
    pub split_force: Vec<String>,

    /// Never split counters.
    #[arg(long, env = "TALLY_NO_SPLIT")]
    pub no_split: bool,

    /// Names with this prefix are strict counters: `PREFIX[,min=N][,max=N][,ack=MODE]`
    /// (repeatable), e.g. `--strict-namespace inv:,min=0,ack=all`. `ack` is the weakest ack mode
    /// their writes get (see `--ack-namespace`).
    #[arg(long = "strict-namespace", env = "TALLY_STRICT_NAMESPACE")]
    pub strict_namespaces: Vec<String>,

    /// Size of each log segment file, MiB (preallocated).
    #[arg(long, env = "TALLY_SEGMENT_MIB", default_value_t = 64)]
    pub segment_mib: u64,

    /// Keep log segments this long after their newest record (the event-log retention), hours.
    #[arg(long, env = "TALLY_RETENTION_HOURS", default_value_t = 168)]
    pub retention_hours: u64,

    /// Snapshot a shard after this many log records...
    #[arg(long, env = "TALLY_SNAPSHOT_RECORDS", default_value_t = 2_000_000)]
    pub snapshot_records: u64,

    /// ...or after this many seconds with any change, whichever comes first.
    #[arg(long, env = "TALLY_SNAPSHOT_INTERVAL_SECS", default_value_t = 60)]
    pub snapshot_interval_secs: u64,

    /// Most client connections this node serves at once (at most CONNECTIONS_MAX, 10 000); one more
    /// is answered with a `too_many_connections` error frame and closed.
    #[arg(long, env = "TALLY_MAX_CONNECTIONS", default_value_t = tally_proto::limits::CONNECTIONS_MAX)]
    pub max_connections: usize,

    /// Idempotency-key dedup window in seconds.
    #[arg(long, env = "TALLY_DEDUP_WINDOW_SECS", default_value_t = 300)]
    pub dedup_window_secs: u64,

    /// Replication peers, by their main `--listen` address (repeatable, at most 2). On a primary:
    /// its replicas. On a replica: its fellow replicas, which it fences when promoted and ships to
    /// afterwards. A replica must serve its shards on the default ports (listen port + 1 + shard).
    #[arg(long = "replica", env = "TALLY_REPLICA", value_delimiter = ',')]
    pub replicas: Vec<SocketAddr>,

    /// Start as a replica of the primary at this main address. The role persists in
    /// `DATA_DIR/node`: when the flags disagree with it (a promoted replica, a primary that stepped
    /// down) tallyd refuses to start and says which flags match, unless `--reset-role`.
    #[arg(long, env = "TALLY_REPLICA_OF")]
    pub replica_of: Option<SocketAddr>,

    /// Let the flags win over the role in `DATA_DIR/node` (primary, or replica with
    /// `--replica-of`) and rewrite the file. Safe either way: a primary re-establishes its epoch
    /// with a majority of its group before it takes writes.
    #[arg(long, env = "TALLY_RESET_ROLE")]
    pub reset_role: bool,

    /// When a write is acknowledged: `local` (this node's fsync), `quorum` (and one replica's
    /// fsync; the default with replicas), `all` (and every replica's).
    #[arg(long, env = "TALLY_ACK_MODE", value_enum)]
    pub ack_mode: Option<AckModeArg>,

    /// Writes to names with this prefix are acknowledged in at least this mode: `PREFIX=MODE`
    /// (repeatable), e.g. `--ack-namespace bill:=all`. The longest matching prefix wins; a frame
    /// with several writes waits for the strongest mode among them.
    #[arg(long = "ack-namespace", env = "TALLY_ACK_NAMESPACE", value_delimiter = ',')]
    pub ack_namespaces: Vec<String>,

    /// How long a write waits for the replica acks its mode needs before it fails with
    /// `replicas_unavailable` (outcome unknown: retry with the same idempotency key).
    #[arg(long, env = "TALLY_REPLICATION_WAIT_MS", default_value_t = 2_000)]
    pub replication_wait_ms: u64,

    /// Newest log records a primary shard keeps in memory to ship, KiB. A replica further behind
    /// is resynchronised with a snapshot.
    #[arg(long, env = "TALLY_SHIP_LOG_KIB", default_value_t = (crate::replication::SHIP_LOG_BYTES_MAX >> 10) as u64)]
    pub ship_log_kib: u64,
}

/// `--ack-mode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AckModeArg {
    Local,
    Quorum,
    All,
}

impl AckModeArg {
    pub fn mode(self) -> AckMode {
        match self {
            AckModeArg::Local => AckMode::Local,
            AckModeArg::Quorum => AckMode::Quorum,
            AckModeArg::All => AckMode::All,
        }
    }
}

impl Config {
    /// The hot-counter settings the engine gets.
    pub fn hot(&self) -> HotConfig {
        HotConfig {
            enabled: !self.no_split,
            split_rate_per_sec: self.split_rate,
            merge_rate_per_sec: self.merge_rate,
            forced: self.split_force.iter().map(|n| n.as_bytes().to_vec()).collect(),
            ..HotConfig::default()
        }
    }

    /// The default ack mode: as given, else `quorum` with replicas and `local` without. A replicated
    /// mode without replicas is refused rather than silently downgraded.
    pub fn ack_mode(&self) -> Result<AckMode, String> {
        let replicated = !self.replicas.is_empty() || self.replica_of.is_some();
        match self.ack_mode {
            None if replicated => Ok(AckMode::Quorum),
            None => Ok(AckMode::Local),
            Some(AckModeArg::Local) => Ok(AckMode::Local),
            Some(mode) if replicated => Ok(mode.mode()),
            Some(mode) => Err(format!(
                "--ack-mode {mode:?} needs replicas (--replica HOST:PORT); use local on a node without them"
            )),
        }
    }

    /// Per-prefix ack modes from `--ack-namespace` and the strict namespaces' `ack=`, longest
    /// prefix first. A replicated mode needs replicas.
    pub fn ack_namespaces(&self) -> Result<Vec<(Vec<u8>, AckMode)>, String> {
        let mut rules = Vec::new();
        for spec in &self.ack_namespaces {
            let (prefix, mode) = spec
                .rsplit_once('=')
                .ok_or_else(|| format!("--ack-namespace {spec:?}: expected PREFIX=MODE"))?;
            rules.push((
                prefix.as_bytes().to_vec(),
                parse_ack_mode(mode).map_err(|e| format!("--ack-namespace {spec:?}: {e}"))?,
            ));
        }
        for spec in &self.strict_namespaces {
            let mut parts = spec.split(',');
            let prefix = parts.next().unwrap_or_default();
            for part in parts {
                if let Some(mode) = part.strip_prefix("ack=") {
                    let mode = parse_ack_mode(mode).map_err(|e| format!("strict namespace {spec:?}: {e}"))?;
                    rules.push((prefix.as_bytes().to_vec(), mode));
                }
            }
        }
        let replicated = !self.replicas.is_empty() || self.replica_of.is_some();
        if let Some((prefix, mode)) = rules.iter().find(|(_, m)| *m != AckMode::Local && !replicated) {
            return Err(format!(
                "ack mode {mode:?} for {:?} needs replicas (--replica HOST:PORT)",
                String::from_utf8_lossy(prefix)
            ));
        }
        rules.sort_by_key(|rule| std::cmp::Reverse(rule.0.len()));
        Ok(rules)
    }

    pub fn namespaces(&self) -> Result<Vec<NamespaceRule>, String> {
        self.strict_namespaces
            .iter()
            .map(|spec| parse_namespace(spec))
            .collect()
    }
}

fn parse_ack_mode(mode: &str) -> Result<AckMode, String> {
    match mode {
        "local" => Ok(AckMode::Local),
        "quorum" => Ok(AckMode::Quorum),
        "all" => Ok(AckMode::All),
        _ => Err(format!("unknown ack mode {mode:?} (local, quorum, all)")),
    }
}

/// Parses `PREFIX[,min=N][,max=N][,ack=MODE]` (`ack` is read by `Config::ack_namespaces`).
pub fn parse_namespace(spec: &str) -> Result<NamespaceRule, String> {
    let mut parts = spec.split(',');
    let prefix = parts.next().unwrap_or_default();
    if prefix.is_empty() {
        return Err(format!("strict namespace {spec:?}: empty prefix"));
    }
    let mut rule = NamespaceRule {
        prefix: prefix.as_bytes().to_vec(),
        kind: CounterKind::Strict,
        min: None,
        max: None,
    };
    for part in parts {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| format!("strict namespace {spec:?}: expected key=value, got {part:?}"))?;
        if key == "ack" {
            continue;
        }
        let value: i64 = value
            .parse()
            .map_err(|e| format!("strict namespace {spec:?}: {key}: {e}"))?;
        match key {
            "min" => rule.min = Some(value),
            "max" => rule.max = Some(value),
            _ => {
                return Err(format!(
                    "strict namespace {spec:?}: unknown option {key:?} (min, max, ack)"
                ))
            }
        }
    }
    if let (Some(min), Some(max)) = (rule.min, rule.max) {
        if min > max {
            return Err(format!("strict namespace {spec:?}: min {min} > max {max}"));
        }
    }
    Ok(rule)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_need_no_flags() {
        let config = Config::try_parse_from(["tallyd"]).unwrap();
        assert_eq!(config.listen, "127.0.0.1:7400".parse().unwrap());
        assert_eq!(config.data_dir, PathBuf::from("./tally-data"));
        assert_eq!(config.shards, None);
        assert!(config.hot().enabled);
        assert_eq!(config.ack_mode(), Ok(AckMode::Local));
    }

    #[test]
    fn ack_mode_defaults_to_quorum_with_replicas_and_needs_them() {
        let config =
            Config::try_parse_from(["tallyd", "--replica", "127.0.0.1:7500", "--replica", "127.0.0.1:7600"]).unwrap();
        assert_eq!(config.replicas.len(), 2);
        assert_eq!(config.ack_mode(), Ok(AckMode::Quorum));
        let config = Config::try_parse_from(["tallyd", "--ack-mode", "all"]).unwrap();
        assert!(config.ack_mode().is_err(), "all without replicas is refused");
        let config = Config::try_parse_from([
            "tallyd",
            "--replica",
            "127.0.0.1:7500",
            "--ack-namespace",
            "bill:=all,b=local",
            "--strict-namespace",
            "inv:,min=0,ack=quorum",
        ])
        .unwrap();
        let rules = config.ack_namespaces().unwrap();
        assert_eq!(rules[0], (b"bill:".to_vec(), AckMode::All), "longest prefix first");
        assert!(rules.contains(&(b"inv:".to_vec(), AckMode::Quorum)));
        assert_eq!(config.namespaces().unwrap()[0].min, Some(0), "ack= is not a bound");
        let config = Config::try_parse_from(["tallyd", "--ack-namespace", "bill:=all"]).unwrap();
        assert!(
            config.ack_namespaces().is_err(),
            "a replicated mode without replicas is refused"
        );
        let config = Config::try_parse_from(["tallyd", "--ack-namespace", "bill:=most"]).unwrap();
        assert!(config.ack_namespaces().is_err());
        let config = Config::try_parse_from(["tallyd", "--replica-of", "127.0.0.1:7400", "--ack-mode", "all"]).unwrap();
        assert_eq!(config.ack_mode(), Ok(AckMode::All));
    }

    #[test]
    fn namespace_specs_parse_and_reject() {
        let rule = parse_namespace("inv:,min=0,max=10").unwrap();
        assert_eq!(rule.prefix, b"inv:");
        assert_eq!((rule.min, rule.max), (Some(0), Some(10)));
        assert!(parse_namespace(",min=0").is_err());
        assert!(parse_namespace("inv:,min=5,max=1").is_err());
        assert!(parse_namespace("inv:,floor=1").is_err());
        assert!(parse_namespace("inv:,min=x").is_err());
    }
}
