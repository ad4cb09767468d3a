//! History budgets through a real node: WINDOW latency, a 30-day per-minute SERIES, and EVENTS
//! streaming over an hour of one hot counter.
//!
//! It builds a one-shard data directory by hand, as if a node had run for 30 days:
//! - window files as compaction leaves them at `now` (29 day files, hour files for today up to two
//!   hours ago, minute files since), each holding `--names` other counters (one bucket each) and
//!   `series:hot`, which has 1 in every minute (at the minute's first second in minute files);
//! - a WAL segment chain holding the last hour of `events:hot`: `--events-per-sec` unkeyed
//!   increments per second (every tenth with a key), one batch per second.
//!
//! Then it starts `tallyd` on it, waits for it to serve (recovery replays the hour), and measures
//! with the blocking SDK client on one connection: WINDOW (last 60 s, last 5 min, last 60 min),
//! the 30-day per-minute SERIES (43 200 points: 6 requests of `SERIES_POINTS_MAX`), and EVENTS
//! pages over the hour. It checks every answer against what it wrote.
//!
//! `cargo run --release -p tally-bench --example history -- --tallyd target/release/tallyd`; with
//! `--addr HOST:PORT` it only measures WINDOW against that running node (names of `tally-bench`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use tally_engine::window::{encode_slices, SealedSlice};
use tally_engine::{Keyed, LogRecord};
use tally_sdk::{Client, SeriesStep, WindowUnit};
use tally_wal::segment::segment_file_name;
use tally_wal::{BatchEncoder, SegmentHeader};

const SECOND: u64 = 1_000;
const MINUTE: u64 = 60 * SECOND;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;

struct Options {
    tallyd: PathBuf,
    dir: PathBuf,
    names: usize,
    events_per_sec: u64,
    iterations: usize,
    /// Only measure WINDOW against this running node (e.g. one under `tally-bench` load).
    addr: Option<String>,
}

fn options() -> Options {
    let mut options = Options {
        tallyd: PathBuf::from("target/release/tallyd"),
        dir: std::env::temp_dir().join("tally-history-bench"),
        names: 20_000,
        events_per_sec: 2_000,
        iterations: 300,
        addr: None,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let value = pair.get(1).cloned().unwrap_or_default();
        match pair[0].as_str() {
            "--tallyd" => options.tallyd = PathBuf::from(value),
            "--dir" => options.dir = PathBuf::from(value),
            "--names" => options.names = value.parse().expect("--names N"),
            "--events-per-sec" => options.events_per_sec = value.parse().expect("--events-per-sec N"),
            "--iterations" => options.iterations = value.parse().expect("--iterations N"),
            "--addr" => options.addr = Some(value),
            other => panic!("unknown option {other}"),
        }
    }
    options
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// One window file of [from, to): `series:hot` with 1 per `bucket_ms`, and `names` others.
fn window_file(dir: &Path, level: &str, from: u64, to: u64, bucket_ms: u64, names: usize) -> u64 {
    let mut slices = Vec::new();
    let mut t = from;
    while t < to {
        let mut slice = SealedSlice::from_entries(t, [(&b"series:hot"[..], 1)]);
        if t == from {
            for i in 0..names {
                slice.push(format!("views:page:{i:010}").as_bytes(), (i % 5) as i64 + 1);
            }
        }
        slices.push(slice);
        t += bucket_ms;
    }
    let bytes = encode_slices(&slices, from, to, &|_, t| Some(t));
    let name = format!("{level}-{from:020}-{to:020}.tlw");
    std::fs::write(dir.join(name), &bytes).unwrap();
    bytes.len() as u64
}

/// Where the synthetic files stop: 10 minutes before `now`. A node's memory holds every increment
/// of its last 5 minutes and is authoritative for them (files overlap it), so files must not hold
/// increments the node's memory (rebuilt by replay) does not.
fn files_end(now: u64) -> u64 {
    now - now % MINUTE - 10 * MINUTE
}

/// Window files as a node's compaction leaves them at `now`; returns (files, bytes, first minute
/// covered).
fn write_windows(dir: &Path, now: u64, names: usize) -> (usize, u64, u64) {
    std::fs::create_dir_all(dir).unwrap();
    let today = now - now % DAY;
    let minutes_from = (now - 2 * HOUR) - (now - 2 * HOUR) % HOUR;
    let first_day = today - 29 * DAY;
    let (mut files, mut bytes) = (0, 0);
    for day in 0..29 {
        let from = first_day + day * DAY;
        bytes += window_file(dir, "d", from, from + DAY, MINUTE, names);
        files += 1;
    }
    let mut hour = today;
    while hour < minutes_from {
        bytes += window_file(dir, "h", hour, hour + HOUR, MINUTE, names);
        files += 1;
        hour += HOUR;
    }
    let mut minute = hour.max(minutes_from);
    while minute + MINUTE <= files_end(now) {
        bytes += window_file(dir, "m", minute, minute + MINUTE, MINUTE, names);
        files += 1;
        minute += MINUTE;
    }
    (files, bytes, first_day)
}

/// A shard-0 log of the last hour of `events:hot`; returns (records, bytes of segments).
fn write_wal(dir: &Path, now: u64, per_sec: u64) -> (u64, u64) {
    std::fs::create_dir_all(dir).unwrap();
    let segment_bytes = 64 << 20;
    let mut encoder = BatchEncoder::new(None, 0, 0, 0, segment_bytes);
    let mut salt = 1;
    encoder.grant_rotation(salt);
    let mut image: Option<(u64, Vec<u8>)> = None;
    let mut written = 0u64;
    let flush = |image: &mut Option<(u64, Vec<u8>)>, written: &mut u64| {
        if let Some((first, bytes)) = image.take() {
            std::fs::write(dir.join(segment_file_name(first)), &bytes).unwrap();
            *written += bytes.len() as u64;
        }
    };
    let mut lsn = 0u64;
    let start = now - HOUR;
    for second in 0..3_600u64 {
        let time = start + second * SECOND;
        for i in 0..per_sec {
            lsn += 1;
            let key = (i % 10 == 0).then_some(Keyed {
                key: u128::from(lsn) << 32 | 0xabc,
                value: lsn as i64,
            });
            let record = LogRecord::Incr {
                name: b"events:hot",
                name_id: 0,
                delta: 1,
                key,
            };
            if encoder.room() != tally_wal::Room::Ready {
                panic!("a second's batch of {per_sec} records does not fit: lower --events-per-sec");
            }
            encoder.append(lsn, &record);
        }
        let sealed = encoder.seal(time).expect("records buffered");
        if sealed.starts_segment {
            flush(&mut image, &mut written);
            let mut bytes = vec![0u8; sealed.segment_bytes as usize];
            SegmentHeader {
                shard: 0,
                first_lsn: sealed.segment_first_lsn,
                salt: sealed.segment_salt,
                time_ms: sealed.time_ms,
                segment_bytes: sealed.segment_bytes,
            }
            .encode(&mut bytes);
            image = Some((sealed.segment_first_lsn, bytes));
        }
        let (_, bytes) = image.as_mut().expect("a segment is open");
        let at = sealed.offset as usize;
        bytes[at..at + sealed.bytes().len()].copy_from_slice(sealed.bytes());
        encoder.recycle(sealed);
        if !encoder.rotation_granted() {
            // Grant the next segment as soon as one was taken, as the node's maintenance does.
            salt += 1;
            encoder.grant_rotation(salt);
        }
    }
    flush(&mut image, &mut written);
    (lsn, written)
}

fn percentiles(name: &str, histogram: &Histogram<u64>) {
    println!(
        "{name:<44} n={:<6} p50 {:>8.3} ms  p99 {:>8.3} ms  max {:>8.3} ms",
        histogram.len(),
        histogram.value_at_quantile(0.5) as f64 / 1_000.0,
        histogram.value_at_quantile(0.99) as f64 / 1_000.0,
        histogram.max() as f64 / 1_000.0
    );
}

fn time(iterations: usize, mut call: impl FnMut()) -> Histogram<u64> {
    let mut histogram = Histogram::<u64>::new(3).unwrap();
    for _ in 0..iterations {
        let started = Instant::now();
        call();
        histogram.record(started.elapsed().as_micros() as u64).unwrap();
    }
    histogram
}

/// WINDOW latency against a running node, on `tally-bench`'s hottest name and a cold one.
fn windows_only(addr: &str, iterations: usize) {
    let mut client = Client::connect(addr).unwrap();
    for name in ["bench:0", "bench:4321"] {
        for (last, unit, what) in [(60, WindowUnit::Second, "60 s"), (5, WindowUnit::Minute, "5 min")] {
            let histogram = time(iterations, || {
                client.window(name, last, unit).unwrap();
            });
            percentiles(&format!("WINDOW {name} last {what} (under load)"), &histogram);
        }
    }
}

fn main() {
    let options = options();
    if let Some(addr) = &options.addr {
        return windows_only(addr, options.iterations * 10);
    }
    let _ = std::fs::remove_dir_all(&options.dir);
    let shard_dir = options.dir.join("shard-0");
    let now = now_ms();
    let started = Instant::now();
    let (files, file_bytes, first_day) = write_windows(&shard_dir.join("windows"), now, options.names);
    let (records, wal_bytes) = write_wal(&shard_dir, now, options.events_per_sec);
    println!(
        "built {files} window files ({:.1} MiB, {} other names each) and {records} log records ({:.1} MiB of segments) in {:.1} s",
        file_bytes as f64 / (1 << 20) as f64,
        options.names,
        wal_bytes as f64 / (1 << 20) as f64,
        started.elapsed().as_secs_f64()
    );

    let mut child = Command::new(&options.tallyd)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--shards",
            "1",
            "--log-level",
            "warn",
            "--data-dir",
        ])
        .arg(&options.dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start tallyd");
    let stdout = child.stdout.take().unwrap();
    // Killed however this function ends (a failed check panics).
    let _child = KillOnDrop(child);
    let started = Instant::now();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let addr = line
        .split_whitespace()
        .find_map(|f| f.strip_prefix("listen="))
        .unwrap_or_else(|| panic!("no ready line: {line}"))
        .to_string();
    println!(
        "tallyd served after {:.1} s (recovery replayed the hour)",
        started.elapsed().as_secs_f64()
    );
    let mut client = Client::builder()
        .read_timeout(Some(Duration::from_secs(60)))
        .connect(&addr)
        .unwrap();

    let n = options.iterations * 10;
    percentiles(
        "WINDOW events:hot last 60 s (memory)",
        &time(n, || {
            client.window("events:hot", 60, WindowUnit::Second).unwrap();
        }),
    );
    percentiles(
        "WINDOW events:hot last 5 min (memory)",
        &time(n, || {
            client.window("events:hot", 5, WindowUnit::Minute).unwrap();
        }),
    );
    let hour_sum = client.window("series:hot", 60, WindowUnit::Minute).unwrap().value;
    let hour_from = now_ms() - now_ms() % MINUTE + MINUTE - HOUR;
    let expected = (files_end(now) - hour_from) / MINUTE;
    assert!(
        hour_sum.abs_diff(expected as i64) <= 1,
        "1 per minute: {hour_sum}, expected {expected}"
    );
    percentiles(
        "WINDOW series:hot last 60 min (files)",
        &time(options.iterations, || {
            client.window("series:hot", 60, WindowUnit::Minute).unwrap();
        }),
    );
    let from = first_day + DAY;
    let to = files_end(now);
    let points = client
        .series("series:hot", from, to, SeriesStep::Minute)
        .unwrap()
        .points;
    assert_eq!(points.len() as u64, (to - from) / MINUTE);
    assert!(points.iter().all(|&p| p == 1), "every minute of 30 days holds 1");
    percentiles(
        "SERIES series:hot 30 days per minute (6 reqs)",
        &time(options.iterations, || {
            client.series("series:hot", from, to, SeriesStep::Minute).unwrap();
        }),
    );

    for round in 0..3 {
        let started = Instant::now();
        let (mut events, mut pages, mut keyed) = (0u64, 0u64, 0u64);
        client
            .events_each("events:hot", now - HOUR, now, |page| {
                pages += 1;
                events += page.len() as u64;
                keyed += page.iter().filter(|e| e.key.is_some()).count() as u64;
                true
            })
            .unwrap();
        let elapsed = started.elapsed().as_secs_f64();
        assert_eq!(events, records, "every logged increment of the hour");
        assert_eq!(keyed, records / 10);
        println!(
            "EVENTS events:hot over 1 hour, round {round}: {events} events in {pages} pages, {elapsed:.2} s: {:.2} M events/s",
            events as f64 / elapsed / 1e6
        );
    }
    let _ = std::fs::remove_dir_all(&options.dir);
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
