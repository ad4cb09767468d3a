//! Creates N distinct counters (`views:page:0000000000` ..) with one increment each, through the
//! shard-aware SDK in pipelined batches: the setup for the "10M names: RSS and restart time"
//! scenario.
//!
//! `cargo run --release -p tally-bench --example fill -- 127.0.0.1:7400 10000000`

use std::time::Instant;

use tally_sdk::{Client, Pipeline};

const CHUNK: u64 = 200_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:7400".to_string());
    let names: u64 = args.next().map(|n| n.parse()).transpose()?.unwrap_or(10_000_000);
    let mut client = Client::connect(&addr)?;
    let started = Instant::now();
    let mut done = 0;
    while done < names {
        let end = (done + CHUNK).min(names);
        let mut pipeline = Pipeline::new().batch(1000)?.depth(16)?;
        for i in done..end {
            pipeline.incr(format!("views:page:{i:010}"), 1);
        }
        for result in client.execute(&pipeline) {
            result?;
        }
        done = end;
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "filled {names} names in {seconds:.1} s ({:.0} increments/s)",
        names as f64 / seconds
    );
    Ok(())
}
