//! The fuzz target's function (`support/frame_decode.rs`, also run by `fuzz/fuzz_targets/
//! frame_decode.rs`) over a fixed, generated corpus, so every `cargo test` exercises it on stable
//! without libFuzzer. Also replays `fuzz/corpus/frame_decode` and `fuzz/artifacts/frame_decode`
//! when a fuzzing run has left them behind.

mod support;

use std::path::Path;

use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, TestRng, TestRunner};
use support::frame_decode::{frame_decode, Reached};
use support::{damaged_frame, interesting_bytes};

const GENERATED_INPUTS: usize = 6_000;

/// A runner with a fixed seed: the corpus is the same on every run and every machine.
fn runner() -> TestRunner {
    TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(proptest::test_runner::RngAlgorithm::ChaCha, &[7; 32]),
    )
}

#[test]
fn frame_decode_survives_a_generated_corpus() {
    let mut runner = runner();
    let damaged = damaged_frame();
    let random = interesting_bytes(256);
    let mut reached = Reached::default();
    for i in 0..GENERATED_INPUTS {
        let input = if i % 4 == 3 {
            random.new_tree(&mut runner).unwrap().current()
        } else {
            damaged.new_tree(&mut runner).unwrap().current()
        };
        reached.add(frame_decode(&input));
    }
    eprintln!("{reached:?}");
    // The corpus must reach past the first length checks of every decoder, or it proves nothing.
    assert!(reached.headers > GENERATED_INPUTS / 2, "{reached:?}");
    assert!(reached.frames_served > GENERATED_INPUTS / 10, "{reached:?}");
    assert!(reached.frames_refused > GENERATED_INPUTS / 20, "{reached:?}");
    assert!(reached.ops_ok > GENERATED_INPUTS / 2, "{reached:?}");
    assert!(reached.ops_failed > GENERATED_INPUTS / 10, "{reached:?}");
    assert!(reached.replies_ok > GENERATED_INPUTS / 4, "{reached:?}");
    assert!(reached.reply_errors_ok > GENERATED_INPUTS / 20, "{reached:?}");
    assert!(reached.error_frames_ok > GENERATED_INPUTS / 20, "{reached:?}");
}

#[test]
fn frame_decode_survives_the_fuzz_corpus_if_present() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut replayed = 0usize;
    for dir in ["corpus/frame_decode", "artifacts/frame_decode"] {
        let Ok(entries) = std::fs::read_dir(fuzz.join(dir)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_file() {
                frame_decode(&std::fs::read(&path).unwrap());
                replayed += 1;
            }
        }
    }
    // Without a corpus (a fresh checkout) this replays nothing; the inputs below always run.
    let edge_cases: [&[u8]; 6] = [
        b"",
        &[0; 16],
        &[12, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        &[0xff; 16],
        &[13, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
        &[15, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0],
    ];
    for input in edge_cases {
        frame_decode(input);
    }
    let last = frame_decode(edge_cases[5]);
    assert_eq!(last.frames_served, 1);
    assert!(last.ops_ok >= 1, "a STATS op in a one-op frame decodes: {last:?}");
    eprintln!("replayed {replayed} fuzz corpus files");
}

/// The fuzz seeds in fuzz/seeds/frame_decode were written by hand from docs/protocol.md's layouts
/// (not by these encoders). Each must decode cleanly: this checks the spec and the code agree.
#[test]
fn fuzz_seeds_written_from_the_spec_decode_cleanly() {
    use tally_proto::frame::decode_error_frame;
    use tally_proto::limits::FRAME_HEADER_BYTES;
    use tally_proto::{decode_reply_op, FrameHeader, FrameKind, HeaderCheck, RequestOps};

    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/frame_decode");
    let mut seen = [0usize; 3];
    for entry in std::fs::read_dir(&dir).expect("the seed directory is part of the repository") {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let bytes = std::fs::read(&path).unwrap();
        let header = FrameHeader::parse(&bytes).unwrap();
        let body = &bytes[FRAME_HEADER_BYTES..];
        assert_eq!(header.body_len as usize, body.len(), "{name}");
        if name.starts_with("req-") {
            seen[0] += 1;
            assert_eq!(header.check_request(), HeaderCheck::Serve, "{name}");
            let mut ops = RequestOps::new(body, header.op_count);
            for (opcode, result) in ops.by_ref() {
                assert_eq!(result.unwrap().opcode() as u8, opcode, "{name}");
            }
            assert_eq!(ops.trailing_bytes(), 0, "{name}");
        } else if name.starts_with("rsp-") {
            seen[1] += 1;
            assert_eq!(header.frame_kind(), Some(FrameKind::Response), "{name}");
            let mut pos = 0;
            for _ in 0..header.op_count {
                let (_, consumed) = decode_reply_op(&body[pos..]).unwrap();
                pos += consumed;
            }
            assert_eq!(pos, body.len(), "{name}");
        } else {
            seen[2] += 1;
            assert_eq!(header.frame_kind(), Some(FrameKind::Error), "{name}");
            decode_error_frame(body).unwrap();
        }
        frame_decode(&bytes);
    }
    assert_eq!(seen, [11, 11, 1], "request, response and error seeds");
}
