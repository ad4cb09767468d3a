//! One benchmark run: setup against the target, one thread per connection, a common start, and the
//! merge of every thread's measurements.
//!
//! Threads: the closed loop runs one thread per connection (blocking I/O, the simplest and, with a
//! window of frames per read, cheapest); the open loop runs `--threads` threads that each drive
//! several connections (see open_loop.rs).
//!
//! Start: every thread connects (and says HELLO) first; all then meet at a barrier, the main thread
//! fixes the epoch every time counts from, and all meet again and start. So connection setup is
//! never measured and all connections share one clock. Warm-up ops are sent and answered but not
//! recorded: a frame is measured when the time its latency counts from is at or after the warm-up.

use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};

use crate::args::{Config, Length, Target};
use crate::connection::{Conn, PaddedCounter, RunContext, Wire};
use crate::dist::NameDist;
use crate::driver_redis::{self, RedisInfo, RedisWire};
use crate::driver_tally::{self, TallyInfo, TallyWire};
use crate::error::BenchError;
use crate::limits::PROGRESS_TICK_MS;
use crate::open_loop::run_open;
use crate::progress::Progress;
use crate::recorder::Recorder;
use crate::schedule::{Budget, Pacer};
use crate::workload::{Partition, ShardBinding, Workload, WorkloadSpec};

/// What the server said about itself during setup.
#[derive(Debug, Clone)]
pub enum ServerInfo {
    Tally(TallyInfo),
    Redis(RedisInfo),
}

/// A finished run.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub recorder: Recorder,
    /// From the end of the warm-up to the last measured reply.
    pub elapsed: Duration,
    pub server: ServerInfo,
}

/// Sets up the target and runs the workload.
pub fn run(config: &Config) -> Result<RunResult, BenchError> {
    let strict_names = if config.mix.has_strict_ops() {
        config.strict_names
    } else {
        0
    };
    let spec = WorkloadSpec {
        mix: config.mix,
        dist: NameDist::new(config.dist, config.names, config.hot_fraction),
        strict_names,
        strict_initial: config.strict_initial,
        keys: config.keys,
        key_nonce: rand::random(),
        seed: config.seed,
    };
    match config.target {
        Target::Tally => {
            let info = driver_tally::setup(&config.addr, strict_names, config.strict_initial)?;
            let shard_count = info.hello.shard_count;
            let partition = config
                .shard_aware
                .then(|| Arc::new(Partition::new(config.names, shard_count)));
            let (recorder, elapsed) = run_connections(config, &spec, |connection| {
                let binding = partition.as_ref().map(|partition| ShardBinding {
                    shard: (connection % usize::from(shard_count)) as u16,
                    partition: partition.clone(),
                });
                let stream = driver_tally::connect(&info, binding.as_ref().map(|b| b.shard))?;
                Ok((TallyWire::new(), stream, binding))
            })?;
            Ok(RunResult {
                recorder,
                elapsed,
                server: ServerInfo::Tally(info),
            })
        }
        Target::Redis => {
            let info = driver_redis::setup(&config.addr, strict_names, config.strict_initial)?;
            let (recorder, elapsed) = run_connections(config, &spec, |_| {
                Ok((RedisWire::new(&info), driver_redis::connect(&config.addr)?, None))
            })?;
            Ok(RunResult {
                recorder,
                elapsed,
                server: ServerInfo::Redis(info),
            })
        }
    }
}

type Opened<W> = (W, TcpStream, Option<ShardBinding>);

/// What one thread measured: its connections' recorders merged, and when its last measured frame
/// was answered.
type Measured = (Recorder, Option<u64>);

/// Runs `config.connections` connections (`open` makes each) on `config.threads` threads, and
/// merges what they measured. Thread t drives connections t, t + threads, t + 2·threads, ...
fn run_connections<W, F>(config: &Config, spec: &WorkloadSpec, open: F) -> Result<(Recorder, Duration), BenchError>
where
    W: Wire + Send,
    F: Fn(usize) -> Result<Opened<W>, BenchError> + Sync,
{
    let (connections, threads) = (config.connections, config.threads);
    assert!((1..=connections).contains(&threads));
    assert!(
        config.rate.is_some() || threads == connections,
        "the closed loop is one thread per connection"
    );
    let abort = Arc::new(AtomicBool::new(false));
    let barrier = Barrier::new(threads + 1);
    let epoch = OnceLock::<Instant>::new();
    let counters: Vec<Arc<PaddedCounter>> = (0..threads).map(|_| Arc::default()).collect();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let warmup_ns = config.warmup.as_nanos() as u64;

    let outcomes = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|thread| {
                let (abort, barrier, epoch, open) = (&abort, &barrier, &epoch, &open);
                let progress = counters[thread].clone();
                let done = done_tx.clone();
                scope.spawn(move || {
                    let mine: Vec<usize> = (thread..connections).step_by(threads).collect();
                    let opened: Result<Vec<Opened<W>>, BenchError> = mine.iter().map(|&c| open(c)).collect();
                    if opened.is_err() {
                        abort.store(true, Ordering::Relaxed);
                    }
                    barrier.wait();
                    barrier.wait();
                    let result = match opened {
                        Err(error) => Err(error),
                        Ok(_) if abort.load(Ordering::Relaxed) => Ok(None),
                        Ok(opened) => {
                            let context = RunContext {
                                epoch: *epoch.get().expect("the epoch is set between the barriers"),
                                abort: abort.clone(),
                                progress,
                            };
                            drive(config, spec, &mine, opened, context, warmup_ns).map(Some)
                        }
                    };
                    if result.is_err() {
                        abort.store(true, Ordering::Relaxed);
                    }
                    let _ = done.send(());
                    result
                })
            })
            .collect();
        drop(done_tx);

        barrier.wait();
        epoch.set(Instant::now()).expect("the epoch is set once");
        barrier.wait();
        let start = *epoch.get().expect("just set");
        let mut progress = Progress::new(config.progress, config.length, config.warmup);
        let mut finished = 0;
        while finished < threads {
            match done_rx.recv_timeout(Duration::from_millis(PROGRESS_TICK_MS)) {
                Ok(()) => finished += 1,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            let ops = counters.iter().map(|c| c.0.load(Ordering::Relaxed)).sum();
            let elapsed = start.elapsed();
            progress.tick(elapsed, ops, elapsed < config.warmup);
        }
        progress.finish();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("connection threads do not panic"))
            .collect::<Vec<_>>()
    });

    let mut merged = Recorder::new(&spec.mix);
    let mut last_done_ns = None;
    let mut first_error = None;
    for outcome in outcomes {
        match outcome {
            Ok(Some((recorder, done_ns))) => {
                merged.merge(&recorder);
                last_done_ns = last_done_ns.max(done_ns);
            }
            Ok(None) => {}
            Err(error) => {
                first_error.get_or_insert(error);
            }
        }
    }
    if let Some(error) = first_error {
        return Err(error);
    }
    let Some(last_done_ns) = last_done_ns else {
        return Err(BenchError::Args(
            "no op was measured: is the duration or op count too small for the rate?".to_string(),
        ));
    };
    Ok((merged, Duration::from_nanos(last_done_ns.saturating_sub(warmup_ns))))
}

/// One thread's work: its connections (`indices`, opened as `opened`) through the closed loop
/// (exactly one connection) or the open loop.
fn drive<W: Wire>(
    config: &Config,
    spec: &WorkloadSpec,
    indices: &[usize],
    opened: Vec<Opened<W>>,
    context: RunContext,
    warmup_ns: u64,
) -> Result<Measured, BenchError> {
    let mut conns: Vec<Conn<W>> = indices
        .iter()
        .zip(opened)
        .map(|(&connection, (wire, stream, binding))| {
            Conn::new(
                wire,
                stream,
                Workload::new(spec, connection, binding),
                Recorder::new(&spec.mix),
                budget(config, connection, warmup_ns),
                config.pipeline,
                context.clone(),
            )
        })
        .collect();
    match config.rate {
        None => {
            assert_eq!(conns.len(), 1);
            conns[0].run_closed()?;
        }
        Some(rate) => {
            let pacers = indices
                .iter()
                .map(|&c| Pacer::new(rate, config.connections, c, config.batch))
                .collect();
            run_open(&mut conns, pacers)?;
        }
    }
    let mut recorder = Recorder::new(&spec.mix);
    let mut last_done_ns = None;
    for conn in &conns {
        recorder.merge(&conn.recorder);
        last_done_ns = last_done_ns.max(conn.last_measured_done_ns);
    }
    Ok((recorder, last_done_ns))
}

/// Connection `connection`'s share of the run: everything after the warm-up until the duration
/// ends, or its share of the op count (spread evenly, the first connections taking the remainder).
fn budget(config: &Config, connection: usize, warmup_ns: u64) -> Budget {
    let (end_ns, ops_left) = match config.length {
        Length::Duration(duration) => (Some(warmup_ns + duration.as_nanos() as u64), None),
        Length::Ops(ops) => {
            let connections = config.connections as u64;
            let share = ops / connections + u64::from((connection as u64) < ops % connections);
            (None, Some(share))
        }
    };
    Budget {
        measure_from_ns: warmup_ns,
        end_ns,
        ops_left,
        batch: config.batch,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::Args;
    use clap::Parser;

    use crate::resp::{self, Resp};
    use std::io::{Read, Write};
    use std::net::TcpListener;

    /// A stand-in Redis on loopback that answers what tally-bench sends: INFO, CONFIG GET, INCR
    /// (with a per-key count), GET. It serves `connections` connections, each until it closes.
    fn fake_redis(connections: usize) -> (String, std::thread::JoinHandle<u64>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let handle = std::thread::spawn(move || {
            let served: Vec<_> = (0..connections)
                .map(|_| {
                    let (mut stream, _) = listener.accept().unwrap();
                    std::thread::spawn(move || {
                        let (mut buf, mut incrs) = (Vec::new(), 0u64);
                        let mut chunk = [0u8; 4096];
                        loop {
                            let read = stream.read(&mut chunk).unwrap();
                            if read == 0 {
                                return incrs;
                            }
                            buf.extend_from_slice(&chunk[..read]);
                            let mut out = Vec::new();
                            let mut used_total = 0;
                            while let Some((command, used)) = resp::decode(&buf[used_total..]).unwrap() {
                                used_total += used;
                                let Resp::Array(Some(args)) = command else {
                                    panic!("not a command")
                                };
                                let Resp::Bulk(Some(verb)) = args[0] else {
                                    panic!("no verb")
                                };
                                match verb {
                                    b"INFO" => out.extend_from_slice(b"$22\r\nredis_version:fake-1.0\r\n"),
                                    b"CONFIG" => out.extend_from_slice(b"*2\r\n$1\r\nk\r\n$3\r\nyes\r\n"),
                                    b"INCR" => {
                                        incrs += 1;
                                        out.extend_from_slice(format!(":{incrs}\r\n").as_bytes());
                                    }
                                    b"GET" => out.extend_from_slice(b"$-1\r\n"),
                                    other => panic!("unexpected {:?}", String::from_utf8_lossy(other)),
                                }
                            }
                            buf.drain(..used_total);
                            stream.write_all(&out).unwrap();
                        }
                    })
                })
                .collect();
            served.into_iter().map(|s| s.join().unwrap()).sum()
        });
        (addr, handle)
    }

    fn config(args: &[&str]) -> Config {
        let base = ["tally-bench", "--target", "redis", "--no-progress", "--warmup", "0s"];
        Args::parse_from(base.iter().chain(args)).validate().unwrap()
    }

    #[test]
    fn closed_loop_against_a_fake_server_sends_exactly_the_op_count() {
        let (addr, server) = fake_redis(1 + 3);
        let config = config(&[
            "--addr",
            &addr,
            "--connections",
            "3",
            "--pipeline",
            "4",
            "--ops",
            "2000",
        ]);
        let result = run(&config).unwrap();
        let total = result.recorder.total();
        assert_eq!((total.ops(), total.ok), (2000, 2000));
        assert!(result.elapsed > Duration::ZERO);
        assert_eq!(server.join().unwrap(), 2000, "the server saw every INCR once");
        let ServerInfo::Redis(info) = result.server else {
            panic!("not redis")
        };
        assert_eq!((info.version.as_str(), info.appendonly.as_str()), ("fake-1.0", "yes"));
    }

    #[test]
    fn open_loop_against_a_fake_server_keeps_its_schedule() {
        let (addr, server) = fake_redis(1 + 4);
        // 20 000 ops/s for 2000 ops: the schedule says 100 ms.
        let config = config(&[
            "--addr",
            &addr,
            "--connections",
            "4",
            "--threads",
            "2",
            "--pipeline",
            "8",
            "--ops",
            "2000",
            "--rate",
            "20k",
            "--mix",
            "incr=1,get=1",
        ]);
        let started = Instant::now();
        let result = run(&config).unwrap();
        let took = started.elapsed();
        let total = result.recorder.total();
        assert_eq!((total.ops(), total.ok), (2000, 2000));
        assert!(
            took >= Duration::from_millis(95),
            "an open loop cannot finish before its schedule: {took:?}"
        );
        let incrs = result.recorder.kind(crate::workload::OpKind::Incr).unwrap().ops();
        assert_eq!(server.join().unwrap(), incrs);
    }

    #[test]
    fn op_counts_are_shared_exactly() {
        let config = Args::parse_from(["tally-bench", "--connections", "3", "--ops", "10"])
            .validate()
            .unwrap();
        let shares: Vec<u64> = (0..3).map(|c| budget(&config, c, 0).ops_left.unwrap()).collect();
        assert_eq!(shares, [4, 3, 3]);
        let timed = Args::parse_from(["tally-bench", "--duration", "5s", "--warmup", "1s"])
            .validate()
            .unwrap();
        let budget = budget(&timed, 0, 1_000_000_000);
        assert_eq!(
            (budget.measure_from_ns, budget.end_ns),
            (1_000_000_000, Some(6_000_000_000))
        );
    }
}
