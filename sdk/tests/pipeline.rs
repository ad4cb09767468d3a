//! Pipelines against the fake server: submission order with several frames in flight and several
//! ops per frame, per-op errors, frame cutting at the wire size limit.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use common::{FakeConfig, FakeServer};
use tally_proto::limits::{FRAME_BYTES_MAX, NAME_BYTES_MAX, OPS_PER_FRAME_MAX};
use tally_proto::Opcode;
use tally_sdk::{ClientOptions, CounterSpec, Error, ErrorCode, Outcome, Pipeline};

fn options() -> ClientOptions {
    ClientOptions::new().read_timeout(Some(Duration::from_secs(5)))
}

#[test]
fn results_come_back_in_submission_order_with_depth_and_batch() {
    // The fake answers only once it holds 4 frames, so this completes only if the client really
    // keeps 4 frames of 4 ops in flight.
    let server = FakeServer::start(FakeConfig {
        hold_frames: 4,
        ..FakeConfig::default()
    });
    let mut client = options().connect(&server.addr()).unwrap();
    let mut pipeline = Pipeline::new().batch(4).unwrap().depth(4).unwrap();
    let mut model: HashMap<String, i64> = HashMap::new();
    let mut expected = Vec::new();
    for i in 0..64i64 {
        let name = format!("n{}", i % 5);
        if i % 3 == 0 {
            pipeline.get(name.as_str());
        } else {
            *model.entry(name.clone()).or_default() += i;
            pipeline.incr(name.as_str(), i);
        }
        expected.push(model.get(&name).copied().unwrap_or(0));
    }
    let results = client.execute(&pipeline);
    let values: Vec<i64> = results.into_iter().map(|r| r.unwrap().value().unwrap()).collect();
    assert_eq!(values, expected);
    let served = server.served();
    assert_eq!(served.len(), 64);
    assert!(served.iter().all(|s| s.frame_ops == 4), "every frame carried 4 ops");
    let frames: BTreeSet<u64> = served.iter().map(|s| s.request_id).collect();
    assert_eq!(frames.len(), 16);
}

#[test]
fn a_window_of_one_frame_cannot_satisfy_a_server_that_holds_two() {
    // The converse of the test above, proving the fake's holding works: with depth 1 the second
    // frame is never sent, so the first is never answered.
    let server = FakeServer::start(FakeConfig {
        hold_frames: 2,
        ..FakeConfig::default()
    });
    let mut client = options()
        .read_timeout(Some(Duration::from_millis(200)))
        .connect(&server.addr())
        .unwrap();
    let mut pipeline = Pipeline::new().depth(1).unwrap();
    pipeline.incr("a", 1);
    pipeline.incr("a", 1);
    let results = client.execute(&pipeline);
    assert!(matches!(results[0], Err(Error::Timeout)), "{results:?}");
}

#[test]
fn each_op_has_its_own_result() {
    let server = FakeServer::start(FakeConfig::default());
    let mut client = options().connect(&server.addr()).unwrap();
    client.create("strict", CounterSpec::strict().initial(3)).unwrap();
    let mut pipeline = Pipeline::new().batch(8).unwrap();
    let ok = pipeline.incr("a", 1);
    let refused = pipeline.incr("x".repeat(NAME_BYTES_MAX + 1), 1);
    let mismatch = pipeline.cas("strict", 0, 1);
    let read = pipeline.get("a");
    let stats = pipeline.stats();
    let results = client.execute(&pipeline);
    assert_eq!(results[ok].as_ref().unwrap().value(), Some(1));
    assert_eq!(
        results[refused].as_ref().unwrap_err().error_code(),
        Some(ErrorCode::NameTooLong)
    );
    let error = results[mismatch].as_ref().unwrap_err();
    assert!(error.is_cas_mismatch());
    assert_eq!(error.current(), Some(3));
    assert_eq!(results[read].as_ref().unwrap().value(), Some(1));
    assert!(matches!(results[stats], Ok(Outcome::Stats(_))));
    // The refused op never left the client: the other four went in one frame.
    let served: Vec<_> = server
        .served()
        .into_iter()
        .filter(|s| s.opcode != Opcode::Create)
        .collect();
    assert_eq!(served.len(), 4);
    assert!(served.iter().all(|s| s.frame_ops == 4));
}

#[test]
fn frames_are_cut_before_the_wire_size_limit() {
    let server = FakeServer::start(FakeConfig::default());
    let mut client = options().connect(&server.addr()).unwrap();
    let mut pipeline = Pipeline::new().batch(usize::from(OPS_PER_FRAME_MAX)).unwrap();
    // 4096 increments of maximal names are about 1.1 MB, more than one frame may carry.
    let ops = usize::from(OPS_PER_FRAME_MAX);
    for i in 0..ops {
        let mut name = format!("{i:05}");
        name.push_str(&"x".repeat(NAME_BYTES_MAX - name.len()));
        pipeline.incr(name, 1);
    }
    let results = client.execute(&pipeline);
    assert!(results.iter().all(|r| r.as_ref().unwrap().value() == Some(1)));
    let served = server.served();
    assert_eq!(served.len(), ops);
    let mut frame_sizes: Vec<u16> = served.iter().map(|s| s.frame_ops).collect();
    frame_sizes.dedup();
    assert!(frame_sizes.len() >= 2, "split into several frames: {frame_sizes:?}");
    let op_bytes = 3 + 1 + 8 + 2 + NAME_BYTES_MAX;
    let first = usize::from(frame_sizes[0]);
    assert!(12 + first * op_bytes <= FRAME_BYTES_MAX as usize);
    assert!(
        12 + (first + 1) * op_bytes > FRAME_BYTES_MAX as usize,
        "the first frame was filled"
    );
}

#[test]
fn an_empty_pipeline_returns_no_results() {
    let server = FakeServer::start(FakeConfig::default());
    let mut client = options().connect(&server.addr()).unwrap();
    assert!(client.execute(&Pipeline::new()).is_empty());
    assert!(server.served().is_empty());
}

#[test]
fn oversized_batches_are_refused_with_the_wire_code() {
    let error = Pipeline::new().batch(usize::from(OPS_PER_FRAME_MAX) + 1).unwrap_err();
    assert_eq!(error.error_code(), Some(ErrorCode::TooManyOps));
}
