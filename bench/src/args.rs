//! Command-line flags and their validation. `Args` is what clap parses; `Config` is a checked run
//! description that the rest of the tool trusts (every range and every combination is checked
//! here, once).

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Parser, ValueEnum};

use crate::dist::DistSpec;
use crate::error::BenchError;
use crate::limits::{
    BATCH_MAX, CONNECTIONS_MAX, IN_FLIGHT_OPS_MAX, NAMES_MAX, PIPELINE_MAX, SEED_DEFAULT, STRICT_INITIAL_DEFAULT,
    STRICT_NAMES_MAX,
};
use crate::workload::Mix;

/// What to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// A tallyd node, over Tally's binary protocol.
    Tally,
    /// A Redis server, over RESP2.
    Redis,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Tally => "tally",
            Target::Redis => "redis",
        }
    }
}

/// tally-bench: load generator for Tally and Redis. Closed loop by default (each connection keeps
/// `--pipeline` frames of `--batch` ops in flight); `--rate` switches to an open loop whose latency
/// counts from each frame's intended send time.
#[derive(Debug, Clone, Parser)]
#[command(name = "tally-bench", version, about)]
pub struct Args {
    /// The server to load.
    #[arg(long, value_enum, default_value = "tally")]
    pub target: Target,

    /// The server's main address, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:7400")]
    pub addr: String,

    /// Connections (in the closed loop, one thread each).
    #[arg(long, default_value_t = 50)]
    pub connections: usize,

    /// Frames in flight per connection (in open loop: at most this many).
    #[arg(long, default_value_t = 16)]
    pub pipeline: usize,

    /// Ops per frame (Tally only; Redis has no frames of several commands).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,

    /// Distinct counter names, `bench:0` .. `bench:{N-1}`.
    #[arg(long, default_value_t = 1_000_000)]
    pub names: u64,

    /// How names are drawn: `uniform`, `zipf:S` (rank k drawn with weight 1/k^S, `bench:0` hottest)
    /// or `hot` (`--hot-fraction` of the ops go to `bench:0`, the rest uniformly to the others).
    #[arg(long, default_value = "uniform", value_parser = DistSpec::parse)]
    pub dist: DistSpec,

    /// With `--dist hot`: the fraction of ops on the hot name, 0 to 1 (default 1: one hot counter).
    #[arg(long)]
    pub hot_fraction: Option<f64>,

    /// Op mix as relative weights: `incr=90,get=10`; also `cas=` and `add=` (strict counters).
    #[arg(long, default_value = "incr=100", value_parser = Mix::parse)]
    pub mix: Mix,

    /// Strict counters `bench:strict:0..N` that `cas` and `add` ops work on.
    #[arg(long, default_value_t = 1)]
    pub strict_names: u32,

    /// Value the strict counters are set to before the run; their floor is 0, and a decrement that
    /// would cross it is counted as refused.
    #[arg(long, default_value_t = STRICT_INITIAL_DEFAULT, allow_negative_numbers = true)]
    pub strict_initial: i64,

    /// Attach a random idempotency key to every INCR (Tally only).
    #[arg(long)]
    pub keys: bool,

    /// How long to measure after the warm-up: `10s`, `500ms`, `2m`, `1h` (default 10s).
    #[arg(long, value_parser = parse_duration, conflicts_with = "ops")]
    pub duration: Option<Duration>,

    /// Measure this many ops (after the warm-up) instead of a duration.
    #[arg(long)]
    pub ops: Option<u64>,

    /// Load sent before measuring starts; nothing it does is recorded.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    pub warmup: Duration,

    /// Open loop at this many ops per second in total (`200000`, `200k`, `1.5m`).
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<f64>,

    /// Open loop: threads driving the connections (default: one per CPU). The closed loop runs one
    /// thread per connection.
    #[arg(long)]
    pub threads: Option<usize>,

    /// Seed of the workload's random streams.
    #[arg(long, default_value_t = SEED_DEFAULT)]
    pub seed: u64,

    /// Tally: connect each connection to one shard's own port and send it only names that shard
    /// owns (`true`), or connect to the main port and let the server forward (`false`).
    #[arg(long, action = ArgAction::Set, default_value_t = true, num_args = 0..=1, default_missing_value = "true")]
    pub shard_aware: bool,

    /// Print one JSON object instead of the human summary (and no progress bar).
    #[arg(long)]
    pub json: bool,

    /// Write a latency-percentile plot (one line per op type) to this SVG file.
    #[arg(long)]
    pub svg: Option<PathBuf>,

    /// No progress bar even on a terminal.
    #[arg(long)]
    pub no_progress: bool,
}

/// When a run stops measuring.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Length {
    /// Measure for this long after the warm-up.
    Duration(Duration),
    /// Measure this many ops after the warm-up.
    Ops(u64),
}

/// A checked run description.
#[derive(Debug, Clone)]
pub struct Config {
    pub target: Target,
    pub addr: String,
    pub connections: usize,
    pub pipeline: usize,
    pub batch: usize,
    pub names: u64,
    pub dist: DistSpec,
    /// Only meaningful with `DistSpec::Hot`.
    pub hot_fraction: f64,
    pub mix: Mix,
    pub strict_names: u32,
    pub strict_initial: i64,
    pub keys: bool,
    pub length: Length,
    pub warmup: Duration,
    /// Total ops per second in open loop; `None` is closed loop.
    pub rate: Option<f64>,
    /// Threads driving the connections: `connections` in closed loop, fewer in open loop.
    pub threads: usize,
    pub seed: u64,
    /// Always false for Redis.
    pub shard_aware: bool,
    pub json: bool,
    pub svg: Option<PathBuf>,
    pub progress: bool,
}

const DURATION_DEFAULT: Duration = Duration::from_secs(10);

impl Args {
    /// Checks ranges and combinations and returns the run description.
    pub fn validate(self) -> Result<Config, BenchError> {
        let fail = |message: String| Err(BenchError::Args(message));
        if !(1..=CONNECTIONS_MAX).contains(&self.connections) {
            return fail(format!(
                "--connections {} is outside 1..={CONNECTIONS_MAX}",
                self.connections
            ));
        }
        if !(1..=PIPELINE_MAX).contains(&self.pipeline) {
            return fail(format!("--pipeline {} is outside 1..={PIPELINE_MAX}", self.pipeline));
        }
        if !(1..=BATCH_MAX).contains(&self.batch) {
            return fail(format!("--batch {} is outside 1..={BATCH_MAX}", self.batch));
        }
        if self.pipeline * self.batch > IN_FLIGHT_OPS_MAX {
            return fail(format!(
                "--pipeline {} x --batch {} puts {} ops in flight per connection; at most {IN_FLIGHT_OPS_MAX} \
                 (the server must be able to hold all their replies)",
                self.pipeline,
                self.batch,
                self.pipeline * self.batch
            ));
        }
        if !(1..=NAMES_MAX).contains(&self.names) {
            return fail(format!("--names {} is outside 1..={NAMES_MAX}", self.names));
        }
        let hot_fraction = match (self.dist, self.hot_fraction) {
            (DistSpec::Hot, Some(fraction)) if !(0.0..=1.0).contains(&fraction) => {
                return fail(format!("--hot-fraction {fraction} is outside 0..=1"));
            }
            (DistSpec::Hot, fraction) => fraction.unwrap_or(1.0),
            (_, Some(_)) => return fail("--hot-fraction needs --dist hot".to_string()),
            (_, None) => 0.0,
        };
        if self.mix.has_strict_ops() && !(1..=STRICT_NAMES_MAX).contains(&self.strict_names) {
            return fail(format!(
                "--strict-names {} is outside 1..={STRICT_NAMES_MAX}",
                self.strict_names
            ));
        }
        if self.strict_initial < 0 {
            return fail(format!(
                "--strict-initial {} is below the strict counters' floor of 0",
                self.strict_initial
            ));
        }
        let length = match (self.duration, self.ops) {
            (Some(_), Some(_)) => return fail("--duration and --ops exclude each other".to_string()),
            (Some(duration), None) if duration.is_zero() => return fail("--duration must be above zero".to_string()),
            (Some(duration), None) => Length::Duration(duration),
            (None, Some(0)) => return fail("--ops must be above zero".to_string()),
            (None, Some(ops)) => Length::Ops(ops),
            (None, None) => Length::Duration(DURATION_DEFAULT),
        };
        if let Some(rate) = self.rate {
            if !(rate.is_finite() && rate > 0.0) {
                return fail(format!("--rate {rate} must be a positive number of ops per second"));
            }
        }
        let threads = match (self.rate, self.threads) {
            (None, Some(_)) => {
                return fail(
                    "--threads is for the open loop (--rate); the closed loop runs a thread per connection".to_string(),
                )
            }
            (None, None) => self.connections,
            (Some(_), Some(0)) => return fail("--threads must be at least 1".to_string()),
            (Some(_), Some(threads)) => threads.min(self.connections),
            (Some(_), None) => std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(self.connections),
        };
        if self.target == Target::Redis {
            if self.batch != 1 {
                return fail(
                    "--batch is Tally's ops per frame; Redis has no multi-command frame (use --pipeline)".to_string(),
                );
            }
            if self.keys {
                return fail("--keys: Redis has no idempotency keys".to_string());
            }
        }
        let progress = !self.json && !self.no_progress;
        Ok(Config {
            target: self.target,
            addr: self.addr,
            connections: self.connections,
            pipeline: self.pipeline,
            batch: self.batch,
            names: self.names,
            dist: self.dist,
            hot_fraction,
            mix: self.mix,
            strict_names: self.strict_names,
            strict_initial: self.strict_initial,
            keys: self.keys,
            length,
            warmup: self.warmup,
            rate: self.rate,
            threads,
            seed: self.seed,
            shard_aware: self.shard_aware && self.target == Target::Tally,
            json: self.json,
            svg: self.svg,
            progress,
        })
    }
}

/// Parses `10s`, `500ms`, `2m`, `1h`, `250us`, `1.5s`; a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err(format!(
            "duration {text:?}: expected a number and a unit, like 10s or 500ms"
        ));
    }
    let value: f64 = number
        .parse()
        .map_err(|_| format!("duration {text:?}: {number:?} is not a number"))?;
    let secs_per_unit = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "ns" => 1e-9,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "duration {text:?}: unknown unit {other:?} (ns, us, ms, s, m, h)"
            ))
        }
    };
    Duration::try_from_secs_f64(value * secs_per_unit).map_err(|e| format!("duration {text:?}: {e}"))
}

/// Parses an ops-per-second rate: `200000`, `200k`, `1.5m`.
pub fn parse_rate(text: &str) -> Result<f64, String> {
    let text = text.trim();
    let (number, scale) = match text.chars().last() {
        Some('k' | 'K') => (&text[..text.len() - 1], 1e3),
        Some('m' | 'M') => (&text[..text.len() - 1], 1e6),
        _ => (text, 1.0),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("rate {text:?}: expected ops per second, like 200000 or 200k"))?;
    let rate = value * scale;
    if !(rate.is_finite() && rate > 0.0) {
        return Err(format!("rate {text:?} must be above zero"));
    }
    Ok(rate)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::OpKind;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let args = Args::try_parse_from(std::iter::once("tally-bench").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        args.validate().map_err(|e| e.to_string())
    }

    #[test]
    fn durations_in_every_unit() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for bad in ["", "s", "10x", "ten", "1.2.3s", "-1s", "10 parsecs"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn rates_with_suffixes() {
        assert_eq!(parse_rate("200000"), Ok(200_000.0));
        assert_eq!(parse_rate("200k"), Ok(200_000.0));
        assert_eq!(parse_rate("1.5m"), Ok(1_500_000.0));
        for bad in ["", "k", "0", "-5", "fast", "inf"] {
            assert!(parse_rate(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn defaults_describe_a_closed_uniform_increment_run() {
        let config = parse(&[]).unwrap();
        assert_eq!(config.target, Target::Tally);
        assert_eq!(config.addr, "127.0.0.1:7400");
        assert_eq!((config.connections, config.pipeline, config.batch), (50, 16, 1));
        assert_eq!(config.names, 1_000_000);
        assert_eq!(config.dist, DistSpec::Uniform);
        assert_eq!(config.mix.weight(OpKind::Incr), 100);
        assert_eq!(config.length, Length::Duration(Duration::from_secs(10)));
        assert_eq!(config.warmup, Duration::from_secs(2));
        assert_eq!(config.rate, None);
        assert_eq!(config.seed, SEED_DEFAULT);
        assert!(config.shard_aware);
        assert!(!config.keys && !config.json && config.progress);
    }

    #[test]
    fn every_flag_is_read() {
        let config = parse(&[
            "--target",
            "tally",
            "--addr",
            "10.1.2.3:9000",
            "--connections",
            "8",
            "--pipeline",
            "128",
            "--batch",
            "32",
            "--names",
            "1000",
            "--dist",
            "hot",
            "--hot-fraction",
            "0.25",
            "--mix",
            "incr=70,get=10,cas=5,add=15",
            "--strict-names",
            "3",
            "--strict-initial",
            "500",
            "--keys",
            "--ops",
            "12345",
            "--warmup",
            "500ms",
            "--rate",
            "100k",
            "--threads",
            "3",
            "--seed",
            "42",
            "--shard-aware",
            "false",
            "--json",
            "--svg",
            "/tmp/x.svg",
        ])
        .unwrap();
        assert_eq!(config.addr, "10.1.2.3:9000");
        assert_eq!((config.connections, config.pipeline, config.batch), (8, 128, 32));
        assert_eq!(config.names, 1000);
        assert_eq!(config.dist, DistSpec::Hot);
        assert_eq!(config.hot_fraction, 0.25);
        assert_eq!(config.mix.weight(OpKind::Cas), 5);
        assert_eq!(config.mix.weight(OpKind::Add), 15);
        assert_eq!((config.strict_names, config.strict_initial), (3, 500));
        assert!(config.keys);
        assert_eq!(config.length, Length::Ops(12345));
        assert_eq!(config.warmup, Duration::from_millis(500));
        assert_eq!(config.rate, Some(100_000.0));
        assert_eq!(config.threads, 3);
        assert_eq!(config.seed, 42);
        assert!(!config.shard_aware);
        assert!(config.json && !config.progress, "--json turns the progress bar off");
        assert_eq!(config.svg, Some(PathBuf::from("/tmp/x.svg")));

        let config = parse(&["--duration", "2m", "--dist", "zipf:0.99", "--shard-aware"]).unwrap();
        assert_eq!(config.length, Length::Duration(Duration::from_secs(120)));
        assert_eq!(config.dist, DistSpec::Zipf { s: 0.99 });
        assert!(config.shard_aware);
        assert!(!parse(&["--no-progress"]).unwrap().progress);
    }

    #[test]
    fn hot_fraction_defaults_to_one_hot_counter_and_needs_hot() {
        assert_eq!(parse(&["--dist", "hot"]).unwrap().hot_fraction, 1.0);
        assert!(parse(&["--hot-fraction", "0.5"]).unwrap_err().contains("--dist hot"));
        assert!(parse(&["--dist", "hot", "--hot-fraction", "1.5"]).is_err());
    }

    #[test]
    fn ranges_and_combinations_are_refused() {
        let refused = |args: &[&str], needle: &str| {
            let error = parse(args).unwrap_err();
            assert!(error.contains(needle), "{args:?}: {error}");
        };
        refused(&["--connections", "0"], "--connections");
        refused(&["--connections", "100000"], "--connections");
        refused(&["--pipeline", "0"], "--pipeline");
        refused(&["--pipeline", "2000"], "--pipeline");
        refused(&["--batch", "5000"], "--batch");
        refused(&["--pipeline", "1024", "--batch", "4096"], "in flight");
        refused(&["--names", "0"], "--names");
        refused(&["--duration", "0s"], "--duration");
        refused(&["--ops", "0"], "--ops");
        refused(&["--duration", "1s", "--ops", "5"], "--ops");
        refused(&["--rate", "0"], "rate");
        refused(&["--threads", "2"], "--threads");
        refused(&["--rate", "1000", "--threads", "0"], "--threads");
        refused(&["--target", "redis", "--batch", "4"], "--batch");
        refused(&["--target", "redis", "--keys"], "--keys");
        refused(&["--mix", "add=1", "--strict-names", "0"], "--strict-names");
        refused(&["--strict-initial", "-1"], "--strict-initial");
        refused(&["--mix", "incr=0"], "mix");
        refused(&["--dist", "pareto"], "dist");
        refused(&["--target", "memcached"], "memcached");
        refused(&["--shard-aware", "maybe"], "maybe");
    }

    #[test]
    fn threads_are_one_per_connection_in_closed_loop_and_capped_in_open_loop() {
        assert_eq!(parse(&["--connections", "7"]).unwrap().threads, 7);
        assert_eq!(
            parse(&["--connections", "3", "--rate", "1k", "--threads", "8"])
                .unwrap()
                .threads,
            3
        );
        let open = parse(&["--connections", "50", "--rate", "1k"]).unwrap();
        assert!((1..=50).contains(&open.threads));
    }

    #[test]
    fn redis_is_never_shard_aware() {
        let config = parse(&["--target", "redis", "--shard-aware", "true"]).unwrap();
        assert_eq!(config.target, Target::Redis);
        assert!(!config.shard_aware);
    }
}
