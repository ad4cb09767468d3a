//! The results: a human summary and one JSON object for scripts, both from the merged recorder,
//! the configuration, the server's self-description and the machine.
//!
//! Throughput is ops answered (ok, refused or failed) in the measured window divided by its length:
//! from the end of the warm-up to the last measured reply. Latencies are in microseconds; what they
//! measure from depends on the loop (`latency_from` in the JSON).

use std::collections::BTreeMap;
use std::fmt::Write;

use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};

use crate::args::{Config, Length, Target};
use crate::machine::Machine;
use crate::recorder::{KindStats, Recorder};
use crate::run::{RunResult, ServerInfo};

/// tally-bench's own version, recorded with every result.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The latency summary every report gives.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Percentiles {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

impl Percentiles {
    pub fn of(histogram: &Histogram<u64>) -> Percentiles {
        Percentiles {
            p50: histogram.value_at_quantile(0.5),
            p90: histogram.value_at_quantile(0.9),
            p99: histogram.value_at_quantile(0.99),
            p999: histogram.value_at_quantile(0.999),
            max: histogram.max(),
            mean: histogram.mean(),
        }
    }

    fn json(&self) -> Value {
        json!({
            "p50": self.p50,
            "p90": self.p90,
            "p99": self.p99,
            "p999": self.p999,
            "max": self.max,
            "mean": (self.mean * 10.0).round() / 10.0,
        })
    }
}

/// Everything a report is made of.
#[derive(Debug)]
pub struct Report<'a> {
    pub config: &'a Config,
    pub result: &'a RunResult,
    pub machine: &'a Machine,
    /// The command line, as typed.
    pub command: String,
}

impl Report<'_> {
    fn recorder(&self) -> &Recorder {
        &self.result.recorder
    }

    fn per_sec(&self, ops: u64) -> f64 {
        let secs = self.result.elapsed.as_secs_f64();
        if secs > 0.0 {
            ops as f64 / secs
        } else {
            0.0
        }
    }

    /// What latency counts from, in words.
    pub fn latency_from(&self) -> &'static str {
        match self.config.rate {
            None => "write",
            Some(_) => "intended_send_time",
        }
    }

    /// The one JSON object `--json` prints.
    pub fn json(&self) -> Value {
        let total = self.recorder().total();
        let mut by_type = Map::new();
        for (kind, stats) in self.recorder().kinds() {
            by_type.insert(kind.name().to_string(), self.kind_json(stats));
        }
        json!({
            "tool": "tally-bench",
            "version": VERSION,
            "command": self.command,
            "config": self.config_json(),
            "machine": {
                "nproc": self.machine.nproc,
                "cpu_model": self.machine.cpu_model,
                "kernel": self.machine.kernel,
                "memory_kib": self.machine.memory_kib,
            },
            "server": self.server_json(),
            "loop": if self.config.rate.is_some() { "open" } else { "closed" },
            "latency_from": self.latency_from(),
            "elapsed_secs": round3(self.result.elapsed.as_secs_f64()),
            "ops": total.ops(),
            "ok": total.ok,
            "refused": total.refused_total(),
            "failed": total.failed_total(),
            "ops_per_sec": self.per_sec(total.ops()).round(),
            "latency_us": Percentiles::of(&total.latency_us).json(),
            "ops_by_type": by_type,
            "refusals": counts_json(&total.refused),
            "errors": counts_json(&total.failed),
            "error_messages": self.recorder().messages.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<Map<_, _>>(),
        })
    }

    fn kind_json(&self, stats: &KindStats) -> Value {
        json!({
            "ops": stats.ops(),
            "ops_per_sec": self.per_sec(stats.ops()).round(),
            "ok": stats.ok,
            "refused": counts_json(&stats.refused),
            "errors": counts_json(&stats.failed),
            "latency_us": Percentiles::of(&stats.latency_us).json(),
        })
    }

    fn config_json(&self) -> Value {
        let c = self.config;
        json!({
            "target": c.target.name(),
            "addr": c.addr,
            "connections": c.connections,
            "pipeline": c.pipeline,
            "batch": c.batch,
            "names": c.names,
            "dist": c.dist.label(),
            "hot_fraction": (c.dist == crate::dist::DistSpec::Hot).then_some(c.hot_fraction),
            "mix": c.mix.label(),
            "strict_names": c.mix.has_strict_ops().then_some(c.strict_names),
            "strict_initial": c.mix.has_strict_ops().then_some(c.strict_initial),
            "keys": c.keys,
            "duration_secs": match c.length { Length::Duration(d) => Some(d.as_secs_f64()), Length::Ops(_) => None },
            "ops": match c.length { Length::Ops(ops) => Some(ops), Length::Duration(_) => None },
            "warmup_secs": c.warmup.as_secs_f64(),
            "rate": c.rate,
            "threads": c.threads,
            "seed": c.seed,
            "shard_aware": c.shard_aware,
        })
    }

    fn server_json(&self) -> Value {
        match &self.result.server {
            ServerInfo::Tally(info) => json!({
                "kind": "tally",
                "server": info.hello.server,
                "shard_count": info.hello.shard_count,
                "shard_ports": info.hello.shard_ports,
            }),
            ServerInfo::Redis(info) => json!({
                "kind": "redis",
                "version": info.version,
                "appendonly": info.appendonly,
                "appendfsync": info.appendfsync,
            }),
        }
    }

    /// The human summary.
    pub fn human(&self) -> String {
        let c = self.config;
        let mut out = String::new();
        let server = match &self.result.server {
            ServerInfo::Tally(info) => format!(
                "{} ({} shards, {})",
                info.hello.server,
                info.hello.shard_count,
                if c.shard_aware {
                    "shard-aware"
                } else {
                    "main port, forwarded"
                }
            ),
            ServerInfo::Redis(info) => format!(
                "redis {} (appendonly {}, appendfsync {})",
                info.version, info.appendonly, info.appendfsync
            ),
        };
        let _ = writeln!(
            out,
            "tally-bench {VERSION}: {} at {} — {server}",
            c.target.name(),
            c.addr
        );
        let loop_kind = match c.rate {
            None => "closed loop".to_string(),
            Some(rate) => format!("open loop at {rate:.0} ops/s on {} threads", c.threads),
        };
        let length = match c.length {
            Length::Duration(d) => format!("{} s", d.as_secs_f64()),
            Length::Ops(ops) => format!("{ops} ops"),
        };
        let dist = match c.dist {
            crate::dist::DistSpec::Hot => format!("hot (fraction {})", c.hot_fraction),
            other => other.label(),
        };
        let _ = writeln!(
            out,
            "{} connections x pipeline {} x batch {}, {} names {dist}, mix {}{}, {loop_kind}, {length} after {} s warm-up, seed {}",
            c.connections,
            c.pipeline,
            c.batch,
            c.names,
            c.mix.label(),
            if c.keys { " (keyed)" } else { "" },
            c.warmup.as_secs_f64(),
            c.seed
        );
        let _ = writeln!(
            out,
            "machine: {} CPUs, {}, kernel {}",
            self.machine.nproc, self.machine.cpu_model, self.machine.kernel
        );
        let total = self.recorder().total();
        let _ = writeln!(
            out,
            "\n{} ops in {:.2} s = {:.0} ops/s (latency in µs from the {})\n",
            total.ops(),
            self.result.elapsed.as_secs_f64(),
            self.per_sec(total.ops()),
            match self.latency_from() {
                "write" => "frame's write",
                _ => "frame's intended send time",
            }
        );
        let _ = writeln!(
            out,
            "{:<6} {:>11} {:>12} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8}",
            "op", "ops", "ops/s", "p50", "p90", "p99", "p999", "max", "refused", "errors"
        );
        let row = |out: &mut String, name: &str, stats: &KindStats| {
            let p = Percentiles::of(&stats.latency_us);
            let _ = writeln!(
                out,
                "{:<6} {:>11} {:>12.0} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8}",
                name,
                stats.ops(),
                self.per_sec(stats.ops()),
                p.p50,
                p.p90,
                p.p99,
                p.p999,
                p.max,
                stats.refused_total(),
                stats.failed_total()
            );
        };
        for (kind, stats) in self.recorder().kinds() {
            row(&mut out, kind.name(), stats);
        }
        if self.recorder().kinds().count() > 1 {
            row(&mut out, "all", &total);
        }
        if !total.refused.is_empty() {
            let _ = writeln!(out, "\nrefused: {}", counts_line(&total.refused));
        }
        if total.failed.is_empty() {
            let _ = writeln!(out, "\nerrors: none");
        } else {
            let _ = writeln!(out, "\nerrors: {}", counts_line(&total.failed));
            for (code, message) in &self.recorder().messages {
                let _ = writeln!(out, "  {code}: {message}");
            }
        }
        if c.target == Target::Tally && c.shard_aware && c.connections % usize::from(self.shard_count()) != 0 {
            let _ = writeln!(
                out,
                "note: {} connections over {} shards load the shards unevenly",
                c.connections,
                self.shard_count()
            );
        }
        out
    }

    fn shard_count(&self) -> u16 {
        match &self.result.server {
            ServerInfo::Tally(info) => info.hello.shard_count.max(1),
            ServerInfo::Redis(_) => 1,
        }
    }
}

fn counts_json(counts: &BTreeMap<&'static str, u64>) -> Value {
    counts
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect::<Map<_, _>>()
        .into()
}

fn counts_line(counts: &BTreeMap<&'static str, u64>) -> String {
    counts
        .iter()
        .map(|(code, n)| format!("{code} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::Args;
    use crate::driver_redis::RedisInfo;
    use crate::driver_tally::TallyInfo;
    use crate::recorder::{OpReply, Outcome};
    use crate::workload::OpKind;
    use clap::Parser;
    use std::time::Duration;
    use tally_proto::HelloReply;

    fn result(config: &Config) -> RunResult {
        let mut recorder = Recorder::new(&config.mix);
        for latency in 1..=1000u64 {
            recorder.record(OpKind::Incr, &OpReply::ok(None, Some(1)), latency);
            if latency % 10 == 0 {
                recorder.record(OpKind::Get, &OpReply::ok(None, Some(1)), latency * 2);
            }
        }
        let failed = OpReply {
            outcome: Outcome::Failed("overloaded"),
            message: Some("queue full".into()),
            ..OpReply::ok(None, None)
        };
        recorder.record(OpKind::Get, &failed, 5);
        RunResult {
            recorder,
            elapsed: Duration::from_secs(2),
            server: ServerInfo::Tally(TallyInfo {
                addr: "127.0.0.1:7400".parse().unwrap(),
                hello: HelloReply {
                    version: 1,
                    shard_count: 2,
                    shard: 0,
                    shard_ports: vec![7401, 7402],
                    server: "tallyd 0.1.0".into(),
                },
            }),
        }
    }

    fn machine() -> Machine {
        Machine {
            nproc: 2,
            cpu_model: "Test CPU".into(),
            kernel: "6.1.0".into(),
            memory_kib: Some(1024),
        }
    }

    #[test]
    fn json_has_the_documented_shape() {
        let config = Args::parse_from(["tally-bench", "--mix", "incr=90,get=10", "--rate", "5000"])
            .validate()
            .unwrap();
        let result = result(&config);
        let machine = machine();
        let report = Report {
            config: &config,
            result: &result,
            machine: &machine,
            command: "tally-bench --mix incr=90,get=10".into(),
        };
        // What `--json` prints, parsed back as a script would.
        let text = serde_json::to_string(&report.json()).unwrap();
        let parsed: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed["tool"], "tally-bench");
        assert_eq!(parsed["version"], VERSION);
        assert_eq!(parsed["ops"], 1101);
        assert_eq!(parsed["ops_per_sec"], 551.0, "1101 ops over 2 s, rounded");
        for key in ["p50", "p90", "p99", "p999", "max", "mean"] {
            assert!(parsed["latency_us"][key].is_number(), "latency_us.{key}");
        }
        assert_eq!(parsed["latency_us"]["max"], 2000);
        assert_eq!(parsed["ops_by_type"]["incr"]["ops"], 1000);
        assert_eq!(parsed["ops_by_type"]["incr"]["latency_us"]["p50"], 500);
        assert_eq!(parsed["ops_by_type"]["get"]["ops"], 101);
        assert_eq!(parsed["ops_by_type"]["get"]["errors"]["overloaded"], 1);
        assert_eq!(parsed["errors"]["overloaded"], 1);
        assert_eq!(parsed["error_messages"]["overloaded"], "queue full");
        assert_eq!(parsed["config"]["mix"], "incr=90,get=10");
        assert_eq!(parsed["config"]["connections"], 50);
        assert_eq!(parsed["config"]["rate"], 5000.0);
        assert_eq!(parsed["config"]["seed"], config.seed);
        assert_eq!(parsed["loop"], "open");
        assert_eq!(parsed["latency_from"], "intended_send_time");
        assert_eq!(parsed["machine"]["nproc"], 2);
        assert_eq!(parsed["machine"]["cpu_model"], "Test CPU");
        assert_eq!(parsed["machine"]["kernel"], "6.1.0");
        assert_eq!(parsed["server"]["kind"], "tally");
        assert_eq!(parsed["server"]["shard_count"], 2);
        assert_eq!(parsed["command"], "tally-bench --mix incr=90,get=10");
    }

    #[test]
    fn human_summary_lists_each_op_type_and_the_errors() {
        let config = Args::parse_from(["tally-bench", "--mix", "incr=90,get=10", "--connections", "3"])
            .validate()
            .unwrap();
        let mut result = result(&config);
        result.server = ServerInfo::Redis(RedisInfo {
            version: "7.0.15".into(),
            appendonly: "yes".into(),
            appendfsync: "always".into(),
            ..RedisInfo::default()
        });
        let machine = machine();
        let report = Report {
            config: &config,
            result: &result,
            machine: &machine,
            command: String::new(),
        };
        let text = report.human();
        assert!(text.contains("1101 ops in 2.00 s = 550 ops/s"), "{text}");
        assert!(text.contains("appendfsync always"), "{text}");
        let rows: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("incr") || l.starts_with("get") || l.starts_with("all"))
            .collect();
        assert_eq!(rows.len(), 3, "{text}");
        assert!(rows[0].split_whitespace().nth(1) == Some("1000"), "{}", rows[0]);
        assert!(text.contains("errors: overloaded 1"), "{text}");
        assert!(text.contains("queue full"));
        assert!(text.contains("from the frame's write"));
    }

    #[test]
    fn percentiles_of_a_known_histogram() {
        let mut histogram = crate::recorder::new_histogram();
        for v in 1..=10_000u64 {
            histogram.record(v).unwrap();
        }
        let p = Percentiles::of(&histogram);
        // Above 2048 the histogram's buckets are wider than 1: each percentile is its bucket's top.
        let top = |v| histogram.highest_equivalent(v);
        assert_eq!(
            (p.p50, p.p90, p.p99, p.p999),
            (top(5000), top(9000), top(9900), top(9990))
        );
        assert!(p.p50 - 5000 < 5 && p.p999 - 9990 < 10);
        assert_eq!(p.max, histogram.highest_equivalent(10_000));
        assert!((p.mean - 5000.5).abs() < 5.0);
    }
}
