//! Per-shard configuration: identity, hot-counter tuning, namespace rules and the idempotency
//! window. `ShardConfig::check` says whether a configuration is usable; `Shard::new` asserts it, so
//! the node validates user input first and reports the error.

use tally_proto::limits::{NAME_BYTES_MAX, SHARDS_MAX};
use tally_proto::CounterKind;

use crate::limits::{DEDUP_WINDOW_MS, HOT_SAMPLE_EVERY_DEFAULT};
use crate::window::Tiers;

/// Hot-counter detection and splitting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HotConfig {
    /// Split off; counters are never split (forced splits included).
    pub enabled: bool,
    /// A counter written faster than this (increments/s, all shards together) is split.
    pub split_rate_per_sec: u64,
    /// A split counter written slower than this for `merge_after_ticks` ticks is merged back.
    pub merge_rate_per_sec: u64,
    /// How often `Shard::tick` is expected to run.
    pub tick_ms: u64,
    /// Consecutive cool ticks before a merge.
    pub merge_after_ticks: u32,
    /// Names that are split from their first increment and never merged back.
    pub forced: Vec<Vec<u8>>,
    /// One increment in `sample_every` (on average, randomised) feeds the hot sketch. 1 samples
    /// every increment (tests); larger values make detection cheaper and coarser.
    pub sample_every: u32,
}

impl Default for HotConfig {
    fn default() -> HotConfig {
        HotConfig {
            enabled: true,
            split_rate_per_sec: 50_000,
            merge_rate_per_sec: 5_000,
            tick_ms: 100,
            merge_after_ticks: 20,
            forced: Vec::new(),
            sample_every: HOT_SAMPLE_EVERY_DEFAULT,
        }
    }
}

/// Names starting with `prefix` (e.g. `inv:`) have this kind and bounds unless created otherwise.
/// An op on an unknown name in a strict namespace creates it with `initial` 0. When several
/// prefixes match, the longest wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceRule {
    pub prefix: Vec<u8>,
    pub kind: CounterKind,
    pub min: Option<i64>,
    pub max: Option<i64>,
}

/// Names starting with `prefix` keep their window buckets by `tiers` (longest prefix wins).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowRule {
    pub prefix: Vec<u8>,
    pub tiers: Tiers,
}

/// Time windows: whether increments are bucketed by time, and how long and how finely each
/// namespace's buckets are kept (see `window`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowConfig {
    /// Off: increments are not bucketed, queries answer `WindowError::Disabled`, nothing is sealed.
    pub enabled: bool,
    /// Tiers of names no rule matches.
    pub tiers: Tiers,
    pub namespaces: Vec<WindowRule>,
}

impl Default for WindowConfig {
    fn default() -> WindowConfig {
        WindowConfig {
            enabled: true,
            tiers: Tiers::default(),
            namespaces: Vec::new(),
        }
    }
}

impl WindowConfig {
    /// The tiers of `name`: the rule with the longest matching prefix, else the default.
    pub fn tiers_of(&self, name: &[u8]) -> &Tiers {
        self.namespaces
            .iter()
            .filter(|rule| name.starts_with(&rule.prefix))
            .max_by_key(|rule| rule.prefix.len())
            .map_or(&self.tiers, |rule| &rule.tiers)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardConfig {
    /// This shard's id, `0..shards`.
    pub shard: u16,
    pub shards: u16,
    pub hot: HotConfig,
    pub namespaces: Vec<NamespaceRule>,
    /// How long an idempotency key is remembered after its first successful use.
    pub dedup_window_ms: u64,
    pub windows: WindowConfig,
}

/// Why a configuration cannot be used.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("shard {shard} is not below the shard count {shards} (at most {SHARDS_MAX})")]
    Shards { shard: u16, shards: u16 },
    #[error("hot: {0}")]
    Hot(&'static str),
    #[error("namespace rule {prefix:?}: {reason}")]
    Namespace { prefix: String, reason: &'static str },
    #[error("forced hot name {name:?} is empty or longer than {NAME_BYTES_MAX} bytes")]
    ForcedName { name: String },
    #[error("dedup_window_ms must be positive (a zero window would silently disable exactly-once)")]
    DedupWindow,
    #[error("window tiers for {prefix:?}: {reason}")]
    Windows { prefix: String, reason: &'static str },
}

impl ShardConfig {
    pub fn new(shard: u16, shards: u16) -> ShardConfig {
        assert!(shards > 0);
        assert!(shard < shards);
        ShardConfig {
            shard,
            shards,
            hot: HotConfig::default(),
            namespaces: Vec::new(),
            dedup_window_ms: DEDUP_WINDOW_MS,
            windows: WindowConfig::default(),
        }
    }

    /// Checks everything `Shard::new` relies on.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.shards == 0 || self.shard >= self.shards || self.shards > SHARDS_MAX {
            return Err(ConfigError::Shards {
                shard: self.shard,
                shards: self.shards,
            });
        }
        if self.hot.sample_every == 0 {
            return Err(ConfigError::Hot("sample_every must be at least 1"));
        }
        if self.hot.tick_ms == 0 {
            return Err(ConfigError::Hot("tick_ms must be at least 1"));
        }
        if self.hot.merge_after_ticks == 0 {
            return Err(ConfigError::Hot(
                "merge_after_ticks must be at least 1, or every split counter merges at once",
            ));
        }
        if self.hot.merge_rate_per_sec > self.hot.split_rate_per_sec {
            return Err(ConfigError::Hot(
                "merge_rate_per_sec above split_rate_per_sec would merge counters right after splitting them",
            ));
        }
        for name in &self.hot.forced {
            if name.is_empty() || name.len() > NAME_BYTES_MAX {
                return Err(ConfigError::ForcedName {
                    name: String::from_utf8_lossy(name).into_owned(),
                });
            }
        }
        for rule in &self.namespaces {
            let error = |reason| ConfigError::Namespace {
                prefix: String::from_utf8_lossy(&rule.prefix).into_owned(),
                reason,
            };
            match rule.kind {
                CounterKind::Analytic => {
                    if rule.min.is_some() || rule.max.is_some() {
                        return Err(error("analytic counters have no bounds"));
                    }
                }
                CounterKind::Strict => {
                    let min = rule.min.unwrap_or(i64::MIN);
                    let max = rule.max.unwrap_or(i64::MAX);
                    if min > max {
                        return Err(error("min is above max"));
                    }
                    if !(min..=max).contains(&0) {
                        return Err(error("counters are auto-created at 0, so the bounds must include 0"));
                    }
                }
            }
        }
        if self.dedup_window_ms == 0 {
            return Err(ConfigError::DedupWindow);
        }
        let default = std::iter::once((&b""[..], &self.windows.tiers));
        let rules = self
            .windows
            .namespaces
            .iter()
            .map(|rule| (&rule.prefix[..], &rule.tiers));
        for (prefix, tiers) in default.chain(rules) {
            tiers.check().map_err(|reason| ConfigError::Windows {
                prefix: String::from_utf8_lossy(prefix).into_owned(),
                reason,
            })?;
        }
        Ok(())
    }

    /// The rule for `name`: the matching rule with the longest prefix.
    pub fn namespace_of(&self, name: &[u8]) -> Option<&NamespaceRule> {
        self.namespaces
            .iter()
            .filter(|rule| name.starts_with(&rule.prefix))
            .max_by_key(|rule| rule.prefix.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strict(prefix: &[u8], min: Option<i64>, max: Option<i64>) -> NamespaceRule {
        NamespaceRule {
            prefix: prefix.to_vec(),
            kind: CounterKind::Strict,
            min,
            max,
        }
    }

    #[test]
    fn default_config_is_valid() {
        assert_eq!(ShardConfig::new(1, 4).check(), Ok(()));
    }

    #[test]
    fn bad_configs_are_refused() {
        let mut config = ShardConfig::new(0, 2);
        config.shard = 2;
        assert!(matches!(config.check(), Err(ConfigError::Shards { .. })));

        let mut config = ShardConfig::new(0, 2);
        config.hot.sample_every = 0;
        assert!(matches!(config.check(), Err(ConfigError::Hot(_))));

        let mut config = ShardConfig::new(0, 2);
        config.hot.merge_after_ticks = 0;
        assert!(matches!(config.check(), Err(ConfigError::Hot(_))));

        let mut config = ShardConfig::new(0, 2);
        config.hot.merge_rate_per_sec = config.hot.split_rate_per_sec + 1;
        assert!(matches!(config.check(), Err(ConfigError::Hot(_))));

        let mut config = ShardConfig::new(0, 2);
        config.namespaces.push(strict(b"inv:", Some(1), Some(10)));
        assert!(matches!(config.check(), Err(ConfigError::Namespace { .. })));

        let mut config = ShardConfig::new(0, 2);
        config.namespaces.push(strict(b"inv:", Some(5), Some(-5)));
        assert!(matches!(config.check(), Err(ConfigError::Namespace { .. })));

        let mut config = ShardConfig::new(0, 2);
        config.namespaces.push(NamespaceRule {
            prefix: b"a:".to_vec(),
            kind: CounterKind::Analytic,
            min: Some(0),
            max: None,
        });
        assert!(matches!(config.check(), Err(ConfigError::Namespace { .. })));

        let mut config = ShardConfig::new(0, 2);
        config.hot.forced.push(Vec::new());
        assert!(matches!(config.check(), Err(ConfigError::ForcedName { .. })));

        let mut config = ShardConfig::new(0, 2);
        config.dedup_window_ms = 0;
        assert_eq!(config.check(), Err(ConfigError::DedupWindow));

        let mut config = ShardConfig::new(0, 2);
        let mut tiers = Tiers::default();
        tiers.coarse.retention_ms = tiers.fine.retention_ms - 1;
        config.windows.namespaces.push(WindowRule {
            prefix: b"api:".to_vec(),
            tiers,
        });
        assert!(matches!(config.check(), Err(ConfigError::Windows { .. })));
    }

    #[test]
    fn window_tiers_by_longest_prefix() {
        let mut config = WindowConfig::default();
        let mut long = Tiers::default();
        long.coarse.retention_ms *= 3;
        config.namespaces.push(WindowRule {
            prefix: b"api:".to_vec(),
            tiers: long,
        });
        assert_eq!(config.tiers_of(b"api:x"), &long);
        assert_eq!(config.tiers_of(b"views"), &Tiers::default());
    }

    #[test]
    fn longest_prefix_wins() {
        let mut config = ShardConfig::new(0, 1);
        config.namespaces.push(strict(b"inv:", Some(0), None));
        config.namespaces.push(strict(b"inv:eu:", Some(-5), Some(5)));
        assert_eq!(config.namespace_of(b"inv:eu:1").and_then(|r| r.min), Some(-5));
        assert_eq!(config.namespace_of(b"inv:us:1").and_then(|r| r.min), Some(0));
        assert!(config.namespace_of(b"views").is_none());
    }
}
