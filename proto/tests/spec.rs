//! Keeps docs/protocol.md true: its worked example is produced here byte for byte, and its tables
//! of error codes, opcodes, flags and limits are checked against the code.

use bytes::BytesMut;
use tally_proto::limits::*;
use tally_proto::reply::{REPLY_APPROX, REPLY_DUPLICATE, REPLY_EXISTS, REPLY_SPLIT, REPLY_STRICT};
use tally_proto::{
    decode_reply_op, shard_of, ErrorCode, FrameBuilder, FrameHeader, FrameKind, HeaderCheck, Opcode, Reply, Request,
    RequestOps, Token,
};

/// 16 bytes a line, lower-case hex separated by spaces: the layout of the example in the doc.
fn hex_lines(bytes: &[u8]) -> Vec<String> {
    bytes
        .chunks(16)
        .map(|line| line.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" "))
        .collect()
}

fn spec() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/protocol.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

const EXAMPLE_REQUEST: [&str; 3] = [
    "24 00 00 00 01 01 01 00 01 00 00 00 00 00 00 00",
    "02 15 00 00 01 00 00 00 00 00 00 00 0a 00 76 69",
    "65 77 73 3a 68 6f 6d 65",
];

const EXAMPLE_REPLY: [&str; 3] = [
    "24 00 00 00 01 02 01 00 01 00 00 00 00 00 00 00",
    "02 00 00 13 00 00 2a 00 00 00 00 00 00 00 03 00",
    "e8 03 00 00 00 00 00 00",
];

/// The doc's worked example: `INCR views:home by 1` as request 1, answered with value 42 and the
/// token (shard 3, LSN 1000). With 4 shards, shard 3 owns `views:home`.
#[test]
fn worked_example_bytes() {
    let mut request = BytesMut::new();
    let mut frame = FrameBuilder::begin(&mut request, FrameKind::Request, 1);
    Request::Incr {
        name: b"views:home",
        delta: 1,
        key: None,
    }
    .encode(&mut request);
    frame.op_added();
    frame.finish(&mut request);
    assert_eq!(hex_lines(&request), EXAMPLE_REQUEST);

    let header = FrameHeader::parse(&request).unwrap();
    assert_eq!(header.check_request(), HeaderCheck::Serve);
    let ops: Vec<_> = RequestOps::new(&request[FRAME_HEADER_BYTES..], header.op_count).collect();
    assert_eq!(ops.len(), 1);
    assert!(ops[0].1.is_ok());
    assert_eq!(shard_of(b"views:home", 4), 3);

    let mut reply = BytesMut::new();
    let mut frame = FrameBuilder::begin(&mut reply, FrameKind::Response, header.request_id);
    Reply::Incr {
        value: 42,
        flags: 0,
        token: Token { shard: 3, lsn: 1000 },
    }
    .encode(&mut reply);
    frame.op_added();
    frame.finish(&mut reply);
    assert_eq!(hex_lines(&reply), EXAMPLE_REPLY);
    let (op, consumed) = decode_reply_op(&reply[FRAME_HEADER_BYTES..]).unwrap();
    assert_eq!(consumed, reply.len() - FRAME_HEADER_BYTES);
    assert_eq!(op.opcode, Opcode::Incr as u8);

    let spec = spec();
    for line in EXAMPLE_REQUEST.iter().chain(&EXAMPLE_REPLY) {
        assert!(spec.contains(line), "docs/protocol.md lacks the example line `{line}`");
    }
}

#[test]
fn spec_routing_check_values_match_the_hash() {
    let spec = spec();
    for name in ["", "views:home", "views:page:123456"] {
        let line = format!(
            "xxh3_64(\"{name}\") = {:#018x}",
            tally_proto::name_hash(name.as_bytes())
        );
        assert!(spec.contains(&line), "docs/protocol.md lacks `{line}`");
    }
}

#[test]
fn spec_lists_every_error_code() {
    let spec = spec();
    for code in ErrorCode::ALL {
        let row = format!("| {} | `{}` |", code as u16, code.name());
        assert!(spec.contains(&row), "docs/protocol.md lacks the row `{row}`");
    }
}

#[test]
fn spec_lists_every_opcode() {
    let spec = spec();
    let opcodes = [
        (Opcode::Hello, "HELLO"),
        (Opcode::Incr, "INCR"),
        (Opcode::Get, "GET"),
        (Opcode::Create, "CREATE"),
        (Opcode::Cas, "CAS"),
        (Opcode::AddBounded, "ADD_BOUNDED"),
        (Opcode::Reset, "RESET"),
        (Opcode::Stats, "STATS"),
        (Opcode::Promote, "PROMOTE"),
    ];
    for (op, name) in opcodes {
        let row = format!("| 0x{:02x} | {name} |", op as u8);
        assert!(spec.contains(&row), "docs/protocol.md lacks the row `{row}`");
    }
}

#[test]
fn spec_lists_every_reply_flag_and_limit() {
    let spec = spec();
    let flags = [
        (REPLY_SPLIT, "SPLIT"),
        (REPLY_DUPLICATE, "DUPLICATE"),
        (REPLY_APPROX, "APPROX"),
        (REPLY_EXISTS, "EXISTS"),
        (REPLY_STRICT, "STRICT"),
    ];
    for (bit, name) in flags {
        let row = format!("| 0x{bit:02x} | `{name}` |");
        assert!(spec.contains(&row), "docs/protocol.md lacks the row `{row}`");
    }
    let limits: [(&str, u64); 13] = [
        ("FRAME_BYTES_MAX", u64::from(FRAME_BYTES_MAX)),
        ("OPS_PER_FRAME_MAX", u64::from(OPS_PER_FRAME_MAX)),
        ("NAME_BYTES_MAX", NAME_BYTES_MAX as u64),
        ("REASON_BYTES_MAX", REASON_BYTES_MAX as u64),
        ("OP_PAYLOAD_BYTES_MAX", OP_PAYLOAD_BYTES_MAX as u64),
        ("ERROR_MESSAGE_BYTES_MAX", ERROR_MESSAGE_BYTES_MAX as u64),
        ("IN_FLIGHT_FRAMES_MAX", IN_FLIGHT_FRAMES_MAX as u64),
        ("CONNECTIONS_MAX", CONNECTIONS_MAX as u64),
        ("CONNECTION_BUFFER_BYTES_MAX", CONNECTION_BUFFER_BYTES_MAX as u64),
        ("SHARDS_MAX", u64::from(SHARDS_MAX)),
        ("FRAME_HEADER_BYTES", FRAME_HEADER_BYTES as u64),
        ("REQUEST_OP_HEADER_BYTES", REQUEST_OP_HEADER_BYTES as u64),
        ("REPLY_OP_HEADER_BYTES", REPLY_OP_HEADER_BYTES as u64),
    ];
    for (name, value) in limits {
        let row = format!("| `{name}` | {value} |");
        assert!(spec.contains(&row), "docs/protocol.md lacks the row `{row}`");
    }
}

/// A length prefix below 12: `FrameHeader::parse` says the stream is broken with `BadFrame`, and
/// the server (tests/tests/bad_input.rs) answers one error frame with request id 0, then closes.
/// §2, §3 and §7 must all say so; none may promise a close "without a reply".
#[test]
fn spec_says_a_short_length_prefix_gets_an_error_frame_then_a_close() {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    header[0] = 11;
    match FrameHeader::parse(&header) {
        Err(tally_proto::DecodeError::Invalid { code, .. }) => assert_eq!(code, ErrorCode::BadFrame),
        other => panic!("a length of 11 parsed as {other:?}"),
    }
    let spec = spec();
    assert!(
        !spec.contains("without a reply"),
        "docs/protocol.md still says a short length prefix is closed without a reply"
    );
    let section3 = spec
        .split("**What the server checks, in order**")
        .nth(1)
        .and_then(|rest| rest.split("2. `ver != 1`").next())
        .expect("§3 lists the header checks");
    for words in ["`BadFrame` (1)", "request id 0", "closes the connection"] {
        assert!(section3.contains(words), "§3 check 1 lacks `{words}`: {section3}");
    }
    let row = spec
        .lines()
        .find(|line| line.starts_with("| 1 | `bad_frame` |"))
        .expect("the bad_frame row");
    assert!(
        row.contains("request id 0") && row.contains("closed"),
        "§7's bad_frame row: {row}"
    );
}

/// §14 must say what the dedup check covers: the owner shard's set only, so reusing a key with a
/// name of another shard is applied (tests/tests/sdk.rs shows it against a node).
#[test]
fn spec_says_dedup_is_per_owner_shard() {
    let spec = spec();
    let section = spec
        .split("## 14. Idempotency keys")
        .nth(1)
        .and_then(|rest| rest.split("## 15.").next())
        .expect("§14");
    for words in [
        "Dedup is per owner shard",
        "**owned by another shard**: not detected",
        "applied as a fresh one",
    ] {
        assert!(section.contains(words), "§14 lacks `{words}`");
    }
}
