//! Damage to a real tallyd's log, and a restart on a full disk.
//!
//! Damage: a node takes acknowledged writes and is killed with SIGKILL once its acknowledged mark
//! (`shard-0/acked.mark`) holds them; then the last segment's used bytes are damaged (a flipped
//! byte in the last batch, the last used block zeroed, the file truncated) and the node is started
//! again. It must refuse, naming exactly the lsns that were acknowledged and are gone; after the
//! operator accepts the loss as the message says, it serves exactly the prefix the message named.
//!
//! Full disk: on a small tmpfs (the test mounts one; without the privilege to mount it says so and
//! checks nothing here: `wal/tests/faults.rs` covers the same path on the storage double), a node
//! with split counters fills the disk, is killed, and restarts: it must become ready, serve every
//! acknowledged write, refuse writes with `disk_full` (22), and take writes again once space
//! returns.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tally_proto::{ErrorCode, Reply, Request};
use tally_tests::{tallyd_path, wait_for, wait_until, DataDir, RawConn, RawReply, Server};
use tally_wal::ack_mark::read_ack_mark;
use tally_wal::limits::{BATCH_HEADER_BYTES, BLOCK_BYTES};
use tally_wal::{parse_segment_file_name, SegmentReader, Step, ACK_MARK_FILE_NAME};

/// One shard and no splitting: every INCR is exactly one log record, so lsns count the writes.
const FLAGS: &[&str] = &["--shards", "1", "--no-split"];
const NAME: &[u8] = b"damage:x";
/// Single writes (one batch each), then one frame of keyed writes whose batch spans blocks.
const SINGLE_WRITES: u64 = 200;
const FRAME_WRITES: u64 = 400;
const WAIT: Duration = Duration::from_secs(20);

fn incr(conn: &mut RawConn, name: &[u8], delta: i64) -> Result<i64, (u16, String)> {
    match conn.call(&[Request::Incr { name, delta, key: None }]) {
        RawReply::Ops(mut ops) => match ops.remove(0).result {
            Ok(Reply::Incr { value, .. }) => Ok(value),
            Ok(other) => panic!("INCR answered {other:?}"),
            Err(e) => Err((e.code, e.message)),
        },
        RawReply::Refused { code, message } => Err((code, message)),
    }
}

fn get(conn: &mut RawConn, name: &[u8]) -> i64 {
    match conn.call(&[Request::Get {
        name,
        fresh: true,
        token: None,
    }]) {
        RawReply::Ops(mut ops) => match ops.remove(0).result {
            Ok(Reply::Get { value, .. }) => value,
            other => panic!("GET failed: {other:?}"),
        },
        RawReply::Refused { code, message } => panic!("GET refused {code} {message}"),
    }
}

/// Writes SINGLE_WRITES + FRAME_WRITES acknowledged increments of 1; returns the value (= lsn).
fn acked_writes(addr: &str) -> u64 {
    let mut conn = RawConn::connect(addr);
    for i in 1..=SINGLE_WRITES {
        assert_eq!(incr(&mut conn, NAME, 1), Ok(i as i64));
    }
    let requests: Vec<Request> = (0..FRAME_WRITES)
        .map(|k| Request::Incr {
            name: NAME,
            delta: 1,
            key: Some(0xda4a6e_u128 << 32 | u128::from(k)),
        })
        .collect();
    match conn.call(&requests) {
        RawReply::Ops(ops) => {
            assert_eq!(ops.len() as u64, FRAME_WRITES);
            for op in ops {
                assert!(matches!(op.result, Ok(Reply::Incr { .. })), "{:?}", op.result);
            }
        }
        RawReply::Refused { code, message } => panic!("refused {code} {message}"),
    }
    let total = SINGLE_WRITES + FRAME_WRITES;
    assert_eq!(get(&mut conn, NAME), total as i64);
    total
}

fn shard_dir(data: &Path) -> PathBuf {
    std::fs::canonicalize(data).unwrap().join("shard-0")
}

fn mark_lsn(shard_dir: &Path) -> u64 {
    std::fs::read(shard_dir.join(ACK_MARK_FILE_NAME))
        .ok()
        .and_then(|bytes| read_ack_mark(&bytes, 0).mark)
        .map_or(0, |m| m.lsn_acked)
}

/// The newest segment: (path, its image, the last batch's offset, used bytes and first lsn).
fn last_batch(shard_dir: &Path) -> (PathBuf, Vec<u8>, u64, u64, u64) {
    let newest = std::fs::read_dir(shard_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| parse_segment_file_name(n).is_some())
        .max()
        .expect("a segment");
    let path = shard_dir.join(newest);
    let image = std::fs::read(&path).unwrap();
    let mut reader = SegmentReader::new(&image, 0).unwrap();
    let mut last = None;
    while let Step::Batch { offset, first_lsn, .. } = reader.next_batch(&mut |_| {}).unwrap() {
        let body_len = u32::from_le_bytes(image[offset as usize + 4..offset as usize + 8].try_into().unwrap());
        last = Some((offset, BATCH_HEADER_BYTES + u64::from(body_len), first_lsn));
    }
    let (offset, used, first_lsn) = last.expect("a batch");
    (path, image, offset, used, first_lsn)
}

/// Runs tallyd on `data` expecting it to refuse: returns its exit code and stderr. Fails if it
/// becomes ready or does not exit within WAIT.
fn start_expecting_refusal(data: &Path) -> (Option<i32>, String) {
    let mut child = Command::new(tallyd_path())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--log-level",
            "warn",
            "--segment-mib",
            "2",
            "--data-dir",
        ])
        .arg(data)
        .args(FLAGS)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tallyd");
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tallyd neither refused nor exited within {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stdout = String::new();
    child.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(!stdout.contains("tallyd ready"), "it served a damaged log: {stdout}");
    (status.code(), stderr)
}

#[derive(Debug, Clone, Copy)]
enum Damage {
    FlipInLastBatch,
    ZeroLastUsedBlock,
    Truncate,
}

/// Acked writes, SIGKILL once the mark holds them, `damage`, restart: refused with the lost lsns;
/// then the loss accepted as the message says, and exactly the named prefix served.
fn damage_refuses_and_names_the_lost_lsns(damage: Damage) {
    let data = DataDir::new("wal-damage");
    let server = Server::start_in(data.0.clone(), FLAGS);
    let total = acked_writes(&server.addr);
    let dir = shard_dir(&data.0);
    // The mark trails the acks by about one fdatasync: wait (bounded) until it holds them all,
    // so the damage below is damage to acknowledged records and the refusal is certain.
    wait_until("the acknowledged mark to reach the last write", WAIT, || {
        mark_lsn(&dir) >= total
    });
    assert_eq!(mark_lsn(&dir), total, "the mark never passes the durable lsn");
    server.kill();

    let (path, mut image, offset, used, first_lsn) = last_batch(&dir);
    assert!(used > BLOCK_BYTES, "the frame's batch spans blocks ({used} bytes)");
    let preallocated = image.len() as u64;
    match damage {
        Damage::FlipInLastBatch => image[(offset + used / 2) as usize] ^= 0x40,
        Damage::ZeroLastUsedBlock => {
            let last_block = (offset + used).next_multiple_of(BLOCK_BYTES) - BLOCK_BYTES;
            image[last_block as usize..(last_block + BLOCK_BYTES) as usize].fill(0);
        }
        Damage::Truncate => image.truncate((offset + BLOCK_BYTES) as usize),
    }
    std::fs::write(&path, &image).unwrap();

    let (code, stderr) = start_expecting_refusal(&data.0);
    assert_ne!(code, Some(0), "{damage:?}: {stderr}");
    let lsn_last = first_lsn - 1;
    let file = path.file_name().unwrap().to_str().unwrap();
    let expected = format!(
        "shard 0: REFUSING TO START: acknowledged writes are lost. The log in {} ends at lsn {lsn_last} (",
        dir.display()
    );
    assert!(
        stderr.contains(&expected),
        "{damage:?}: expected {expected:?} in:\n{stderr}"
    );
    let lost = format!(
        "{file} at byte {offset}), but its acknowledged mark says every lsn up to {total} was durable: lsns {}..={total} of shard 0 ({} records) may have been acknowledged and are gone.",
        lsn_last + 1,
        total - lsn_last
    );
    assert!(stderr.contains(&lost), "{damage:?}: expected {lost:?} in:\n{stderr}");
    let mark = dir.join(ACK_MARK_FILE_NAME);
    let mark_aside = format!("mv {} {}.damaged", mark.display(), mark.display());
    assert!(
        stderr.contains(&mark_aside),
        "{damage:?}: the remedy is named: {stderr}"
    );

    // Accept the loss as the message says, and the node serves exactly up to lsn_last.
    std::fs::rename(&mark, dir.join("acked.mark.damaged")).unwrap();
    if let Damage::Truncate = damage {
        let extend = format!("truncate -s {preallocated} {}", path.display());
        assert!(
            stderr.contains(&extend),
            "{damage:?}: expected {extend:?} in:\n{stderr}"
        );
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(preallocated)
            .unwrap();
    }
    let server = Server::start_in(data.0.clone(), FLAGS);
    let mut conn = RawConn::connect(&server.addr);
    assert_eq!(
        get(&mut conn, NAME),
        lsn_last as i64,
        "{damage:?}: the named prefix is served"
    );
    assert_eq!(incr(&mut conn, NAME, 1), Ok(lsn_last as i64 + 1), "and takes writes");
    server.stop();
}

#[test]
fn a_flipped_byte_in_the_last_batch_of_acked_writes_refuses_naming_the_lost_lsns() {
    damage_refuses_and_names_the_lost_lsns(Damage::FlipInLastBatch);
}

#[test]
fn a_zeroed_last_used_block_of_acked_writes_refuses_naming_the_lost_lsns() {
    damage_refuses_and_names_the_lost_lsns(Damage::ZeroLastUsedBlock);
}

#[test]
fn a_truncated_last_segment_of_acked_writes_refuses_naming_the_lost_lsns() {
    damage_refuses_and_names_the_lost_lsns(Damage::Truncate);
}

/// A tmpfs of `size_mib` mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(size_mib: u64) -> Result<Tmpfs, String> {
        let dir = tally_tests::fresh_dir("wal-diskfull");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(&dir)
            .output()
            .map_err(|e| format!("run mount: {e}"))?;
        if !out.status.success() {
            let _ = std::fs::remove_dir(&dir);
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

const HOT: &[u8] = b"disk:hot";
const FRAME_OPS: usize = 512;

/// Sends frames of increments of HOT to one shard's port until the shard refuses them with
/// disk_full; returns the sum acknowledged.
fn fill_until_disk_full(port: u16) -> i64 {
    let mut conn = RawConn::connect(&format!("127.0.0.1:{port}"));
    let requests: Vec<Request> = (0..FRAME_OPS)
        .map(|_| Request::Incr {
            name: HOT,
            delta: 1,
            key: None,
        })
        .collect();
    let mut acked = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(Instant::now() < deadline, "the disk never filled");
        let RawReply::Ops(ops) = conn.call(&requests) else {
            panic!("frame refused")
        };
        let mut full = false;
        for op in ops {
            match op.result {
                Ok(Reply::Incr { .. }) => acked += 1,
                Err(e) if e.code == ErrorCode::DiskFull as u16 => full = true,
                other => panic!("unexpected reply {other:?}"),
            }
        }
        if full {
            return acked;
        }
    }
}

/// Fills the file system of `path` with one file.
fn fill_file_system(path: &Path) {
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0x5au8; 64 << 10];
    loop {
        match file.write_all(&chunk) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    let _ = file.sync_all();
}

#[test]
fn a_restart_on_a_full_disk_serves_reads_refuses_writes_and_resumes_when_space_returns() {
    let tmpfs = match Tmpfs::mount(24) {
        Ok(tmpfs) => tmpfs,
        Err(e) => {
            eprintln!(
                "NOT TESTED HERE: cannot mount a tmpfs ({e}); the full-disk restart is covered on the storage double by wal/tests/faults.rs"
            );
            return;
        }
    };
    let data = tmpfs.0.join("data");
    // Two shards and a split counter: a restart's reconcile logs merges before any new write,
    // which is what a full disk used to make fail.
    let flags = ["--shards", "2", "--split-force", "disk:hot"];
    let server = Server::start_in(data.clone(), &flags);
    fill_file_system(&tmpfs.0.join("filler"));
    let acked: i64 = server.shard_ports.iter().map(|&port| fill_until_disk_full(port)).sum();
    assert!(acked > 0);
    server.kill();

    // The restart must come up (Server::start_in fails the test after START_TIMEOUT).
    let server = Server::start_in(data.clone(), &flags);
    let mut conn = RawConn::connect(&server.addr);
    assert_eq!(get(&mut conn, HOT), acked, "every acknowledged write is served");
    for &port in &server.shard_ports {
        let mut shard = RawConn::connect(&format!("127.0.0.1:{port}"));
        match incr(&mut shard, HOT, 1) {
            Err((code, _)) => assert_eq!(code, ErrorCode::DiskFull as u16, "shard port {port}"),
            Ok(value) => panic!("shard port {port} took a write on a full disk ({value})"),
        }
    }
    std::fs::remove_file(tmpfs.0.join("filler")).unwrap();
    let mut expected = acked;
    for &port in &server.shard_ports {
        let mut shard = RawConn::connect(&format!("127.0.0.1:{port}"));
        expected += 1;
        let value = wait_for("writes to be taken once space returned", WAIT, || {
            incr(&mut shard, HOT, 1).ok()
        });
        assert!(value <= expected, "{value} > {expected}");
    }
    assert_eq!(get(&mut conn, HOT), expected);
    server.stop();
}
