//! How fast the batch encoder appends INCR records, and how many bytes each takes on disk.
//!
//! `cargo run --release -p tally-wal --example encode_speed [records] [names] [batch_records]`
//! (defaults: 20M records over 10K names in batches of 1000 records, rotating 64 MiB segments).

use std::time::Instant;

use tally_wal::limits::SEGMENT_BYTES_DEFAULT;
use tally_wal::{BatchEncoder, LogRecord, LogSink, Room};

fn main() {
    let arg = |i: usize, default: u64| {
        std::env::args()
            .nth(i)
            .map_or(default, |a| a.parse().expect("a number"))
    };
    let records = arg(1, 20_000_000);
    let name_count = arg(2, 10_000) as usize;
    let batch_records = arg(3, 1_000);
    let names: Vec<Vec<u8>> = (0..name_count)
        .map(|i| format!("views:page:{i:010}").into_bytes())
        .collect();

    let mut enc = BatchEncoder::new(None, 0, 0, 0, SEGMENT_BYTES_DEFAULT);
    enc.grant_rotation(1);
    let (mut body_bytes, mut disk_bytes, mut batches, mut segments) = (0u64, 0u64, 0u64, 0u64);
    let mut salt = 1;
    let start = Instant::now();
    let mut lsn = 0;
    let mut seal = |enc: &mut BatchEncoder, lsn: u64| {
        let sealed = enc.seal(lsn / 1000).expect("records were appended");
        body_bytes += u64::from(u32::from_le_bytes(sealed.bytes()[4..8].try_into().unwrap())) + 32;
        disk_bytes += sealed.bytes().len() as u64;
        batches += 1;
        segments += u64::from(sealed.starts_segment);
        enc.recycle(sealed);
    };
    while lsn < records {
        lsn += 1;
        // A pseudo-random name and a small positive delta, like a page-view counter.
        let which = (lsn.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40) as usize % names.len();
        enc.record(
            lsn,
            &LogRecord::Incr {
                name: &names[which],
                name_id: which as u32,
                delta: 1,
                key: None,
            },
        );
        if lsn % batch_records == 0 || enc.room() != Room::Ready {
            seal(&mut enc, lsn);
            if !enc.rotation_granted() {
                salt += 1;
                enc.grant_rotation(salt);
            }
        }
    }
    if enc.buffered_records() > 0 {
        seal(&mut enc, lsn);
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "{records} INCR records over {name_count} names, {batch_records} per batch: {:.1} M records/s, {:.2} bytes/record in batches, {:.2} bytes/record on disk with block padding ({batches} batches, {segments} segments)",
        records as f64 / elapsed / 1e6,
        body_bytes as f64 / records as f64,
        disk_bytes as f64 / records as f64,
    );
}
