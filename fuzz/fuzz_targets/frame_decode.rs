//! Feeds arbitrary bytes to every decoder of tally-proto: the frame header, `check_request`, every
//! request op of the body, the body read as reply ops and as an error frame, and the input as one
//! request op and one reply op. Nothing may panic, and every decoded value must re-encode to bytes
//! that decode to the same value.
//!
//! The checks live in proto/tests/support/frame_decode.rs so that the stable test suite runs the
//! very same function (proto/tests/fuzz_smoke.rs). Run: `cargo +nightly fuzz run frame_decode`.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../proto/tests/support/frame_decode.rs"]
mod frame_decode;

fuzz_target!(|data: &[u8]| {
    frame_decode::frame_decode(data);
});
