//! Never-panic properties: every decoder, fed arbitrary bytes (and valid frames with random damage),
//! returns a value or an error and never panics. The checks live in `support/frame_decode.rs`, which
//! the cargo-fuzz target runs too.

mod support;

use proptest::prelude::*;
use support::frame_decode::*;
use support::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn frame_header_parse_never_panics(buf in interesting_bytes(40)) {
        let _ = check_header(&buf);
    }

    #[test]
    fn request_ops_never_panic(body in interesting_bytes(300), op_count in any::<u16>()) {
        check_request_ops(&body, op_count, &mut Reached::default());
    }

    /// Small op counts hit the interesting part (the first few op headers) far more often.
    #[test]
    fn request_ops_with_few_ops_never_panic(body in interesting_bytes(300), op_count in 0u16..8) {
        check_request_ops(&body, op_count, &mut Reached::default());
    }

    #[test]
    fn request_decode_never_panics(opcode in 0u8..=12, payload in interesting_bytes(300)) {
        let _ = check_request_decode(opcode, &payload);
    }

    #[test]
    fn request_decode_of_any_opcode_never_panics(opcode in any::<u8>(), payload in interesting_bytes(64)) {
        let _ = check_request_decode(opcode, &payload);
    }

    #[test]
    fn decode_reply_op_never_panics(buf in interesting_bytes(300)) {
        check_reply_ops(&buf, &mut Reached::default());
    }

    #[test]
    fn reply_decode_never_panics(opcode in 0u8..=12, payload in interesting_bytes(300)) {
        check_reply_decode(opcode, &payload);
    }

    #[test]
    fn decode_error_frame_never_panics(body in interesting_bytes(64)) {
        let _ = check_error_frame(&body);
    }

    #[test]
    fn damaged_frames_never_panic(bytes in damaged_frame()) {
        frame_decode(&bytes);
    }

    #[test]
    fn arbitrary_streams_never_panic(bytes in interesting_bytes(512)) {
        frame_decode(&bytes);
    }
}
