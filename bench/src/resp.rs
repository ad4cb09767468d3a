//! RESP2, the part of it tally-bench speaks: commands out as arrays of bulk strings, replies in as
//! simple strings, errors, integers, bulk strings (nil included) and arrays. Decoding borrows from
//! the read buffer, so the replies of the hot path (integers, short bulk strings) allocate nothing.
//! It never panics on any input: `Ok(None)` means more bytes are needed, `Err` that the bytes can
//! never be a reply.

use bytes::{BufMut, BytesMut};

/// Longest bulk string accepted (Redis's own `proto-max-bulk-len` default is 512 MB).
const BULK_BYTES_MAX: i64 = 512 << 20;

/// Most elements of an array reply, and deepest nesting: replies to the commands tally-bench sends
/// (INFO, CONFIG GET, SCRIPT LOAD) are flat and short.
const ARRAY_LEN_MAX: i64 = 1 << 20;
const ARRAY_DEPTH_MAX: usize = 8;

/// One decoded reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp<'a> {
    Simple(&'a [u8]),
    Error(&'a [u8]),
    Integer(i64),
    /// `None` is the nil bulk string (`$-1`), e.g. GET of a missing key.
    Bulk(Option<&'a [u8]>),
    /// `None` is the nil array.
    Array(Option<Vec<Resp<'a>>>),
}

/// Appends a command: an array of `args.len()` bulk strings.
pub fn put_command(out: &mut BytesMut, args: &[&[u8]]) {
    put_array_header(out, args.len());
    for arg in args {
        put_bulk(out, arg);
    }
}

/// Appends `*{n}\r\n`.
pub fn put_array_header(out: &mut BytesMut, n: usize) {
    out.put_u8(b'*');
    put_decimal(out, n as i64);
    out.put_slice(b"\r\n");
}

/// Appends one bulk string.
pub fn put_bulk(out: &mut BytesMut, bytes: &[u8]) {
    out.put_u8(b'$');
    put_decimal(out, bytes.len() as i64);
    out.put_slice(b"\r\n");
    out.put_slice(bytes);
    out.put_slice(b"\r\n");
}

/// Appends an integer as a bulk string (how Redis takes numeric arguments).
pub fn put_bulk_i64(out: &mut BytesMut, value: i64) {
    let mut digits = [0u8; 20];
    let text = format_decimal(value, &mut digits);
    put_bulk(out, text);
}

fn put_decimal(out: &mut BytesMut, value: i64) {
    let mut digits = [0u8; 20];
    out.put_slice(format_decimal(value, &mut digits));
}

/// `value` in decimal, written into `buf` without allocating.
fn format_decimal(value: i64, buf: &mut [u8; 20]) -> &[u8] {
    let mut magnitude = value.unsigned_abs();
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (magnitude % 10) as u8;
        magnitude /= 10;
        if magnitude == 0 {
            break;
        }
    }
    if value < 0 {
        at -= 1;
        buf[at] = b'-';
    }
    &buf[at..]
}

/// Decodes the reply at the front of `buf`: `Ok(Some((reply, bytes taken)))`, `Ok(None)` if
/// incomplete, `Err(why)` if malformed.
pub fn decode(buf: &[u8]) -> Result<Option<(Resp<'_>, usize)>, String> {
    decode_at(buf, 0, 0)
}

fn decode_at(buf: &[u8], at: usize, depth: usize) -> Result<Option<(Resp<'_>, usize)>, String> {
    let Some(line_end) = find_crlf(buf, at + 1) else {
        if buf.len() > at && !b"+-:$*".contains(&buf[at]) {
            return Err(format!("reply starts with byte 0x{:02x}", buf[at]));
        }
        return Ok(None);
    };
    let line = &buf[at + 1..line_end];
    let next = line_end + 2;
    let reply = match buf[at] {
        b'+' => Resp::Simple(line),
        b'-' => Resp::Error(line),
        b':' => Resp::Integer(parse_integer(line)?),
        b'$' => {
            let len = parse_integer(line)?;
            if len == -1 {
                return Ok(Some((Resp::Bulk(None), next)));
            }
            if !(0..=BULK_BYTES_MAX).contains(&len) {
                return Err(format!("bulk string length {len}"));
            }
            let end = next + len as usize;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err("bulk string not followed by CRLF".to_string());
            }
            return Ok(Some((Resp::Bulk(Some(&buf[next..end])), end + 2)));
        }
        b'*' => {
            let len = parse_integer(line)?;
            if len == -1 {
                return Ok(Some((Resp::Array(None), next)));
            }
            if !(0..=ARRAY_LEN_MAX).contains(&len) {
                return Err(format!("array length {len}"));
            }
            if depth >= ARRAY_DEPTH_MAX {
                return Err(format!("arrays nested deeper than {ARRAY_DEPTH_MAX}"));
            }
            let mut items = Vec::new();
            let mut pos = next;
            for _ in 0..len {
                let Some((item, end)) = decode_at(buf, pos, depth + 1)? else {
                    return Ok(None);
                };
                items.push(item);
                pos = end;
            }
            return Ok(Some((Resp::Array(Some(items)), pos)));
        }
        other => return Err(format!("reply starts with byte 0x{other:02x}")),
    };
    Ok(Some((reply, next)))
}

fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    if from >= buf.len() {
        return None;
    }
    buf[from..].windows(2).position(|w| w == b"\r\n").map(|p| from + p)
}

/// A RESP integer: optional minus sign, 1 to 19 digits, within i64.
pub fn parse_integer(text: &[u8]) -> Result<i64, String> {
    let (negative, digits) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(format!("{:?} is not an integer", String::from_utf8_lossy(text)));
    }
    let magnitude = digits.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    let value = if negative {
        0i64.checked_sub_unsigned(magnitude)
    } else {
        i64::try_from(magnitude).ok()
    };
    value.ok_or_else(|| format!("{} overflows i64", String::from_utf8_lossy(text)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = BytesMut::new();
        put_command(&mut out, &[b"INCR", b"bench:42"]);
        assert_eq!(&out[..], b"*2\r\n$4\r\nINCR\r\n$8\r\nbench:42\r\n");
        out.clear();
        put_array_header(&mut out, 3);
        put_bulk(&mut out, b"GET");
        put_bulk_i64(&mut out, -12);
        put_bulk_i64(&mut out, i64::MIN);
        assert_eq!(
            &out[..],
            b"*3\r\n$3\r\nGET\r\n$3\r\n-12\r\n$20\r\n-9223372036854775808\r\n"
        );
    }

    #[test]
    fn scalar_replies() {
        assert_eq!(decode(b":5\r\n"), Ok(Some((Resp::Integer(5), 4))));
        assert_eq!(decode(b":-17\r\nrest"), Ok(Some((Resp::Integer(-17), 6))));
        assert_eq!(decode(b"+OK\r\n"), Ok(Some((Resp::Simple(b"OK"), 5))));
        assert_eq!(decode(b"$3\r\n123\r\n"), Ok(Some((Resp::Bulk(Some(b"123")), 9))));
        assert_eq!(decode(b"$0\r\n\r\n"), Ok(Some((Resp::Bulk(Some(b"")), 6))));
        assert_eq!(decode(b"$-1\r\n"), Ok(Some((Resp::Bulk(None), 5))), "nil");
        assert_eq!(
            decode(b"-ERR wrong number of arguments\r\n"),
            Ok(Some((Resp::Error(b"ERR wrong number of arguments"), 32)))
        );
        assert_eq!(decode(b"-BOUND 0\r\n"), Ok(Some((Resp::Error(b"BOUND 0"), 10))));
    }

    #[test]
    fn arrays_including_nil_and_nesting() {
        let reply = b"*2\r\n$10\r\nappendonly\r\n$3\r\nyes\r\n";
        assert_eq!(
            decode(reply),
            Ok(Some((
                Resp::Array(Some(vec![Resp::Bulk(Some(b"appendonly")), Resp::Bulk(Some(b"yes"))])),
                reply.len()
            )))
        );
        assert_eq!(decode(b"*-1\r\n"), Ok(Some((Resp::Array(None), 5))));
        assert_eq!(decode(b"*0\r\n"), Ok(Some((Resp::Array(Some(vec![])), 4))));
        let nested = b"*2\r\n*1\r\n:1\r\n$-1\r\n";
        assert_eq!(
            decode(nested),
            Ok(Some((
                Resp::Array(Some(vec![Resp::Array(Some(vec![Resp::Integer(1)])), Resp::Bulk(None)])),
                nested.len()
            )))
        );
    }

    #[test]
    fn every_prefix_of_a_reply_is_incomplete() {
        let replies: [&[u8]; 6] = [
            b":12345\r\n",
            b"$5\r\nhello\r\n",
            b"$-1\r\n",
            b"-ERR no\r\n",
            b"*2\r\n:1\r\n$2\r\nab\r\n",
            b"+PONG\r\n",
        ];
        for reply in replies {
            for cut in 0..reply.len() {
                assert_eq!(decode(&reply[..cut]), Ok(None), "{:?} cut at {cut}", reply);
            }
            assert_eq!(decode(reply).unwrap().unwrap().1, reply.len());
        }
    }

    #[test]
    fn back_to_back_replies_decode_one_at_a_time() {
        let stream = b":1\r\n$-1\r\n-ERR x\r\n";
        let (first, used) = decode(stream).unwrap().unwrap();
        assert_eq!(first, Resp::Integer(1));
        let (second, used2) = decode(&stream[used..]).unwrap().unwrap();
        assert_eq!(second, Resp::Bulk(None));
        let (third, used3) = decode(&stream[used + used2..]).unwrap().unwrap();
        assert_eq!(third, Resp::Error(b"ERR x"));
        assert_eq!(used + used2 + used3, stream.len());
    }

    #[test]
    fn malformed_replies_are_errors() {
        for bad in [
            &b"?what\r\n"[..],
            b"?",
            b":12a\r\n",
            b":\r\n",
            b":99999999999999999999\r\n",
            b"$-2\r\n",
            b"$3\r\nabcXY",
            b"*-5\r\n",
            b"*1\r\n!\r\n",
        ] {
            assert!(
                decode(bad).is_err(),
                "{:?} should be refused",
                String::from_utf8_lossy(bad)
            );
        }
        let deep = b"*1\r\n".repeat(ARRAY_DEPTH_MAX + 1);
        assert!(decode(&deep).is_err(), "nesting is bounded");
    }

    #[test]
    fn integers_cover_the_whole_range() {
        assert_eq!(parse_integer(b"9223372036854775807"), Ok(i64::MAX));
        assert_eq!(parse_integer(b"-9223372036854775808"), Ok(i64::MIN));
        assert!(parse_integer(b"9223372036854775808").is_err());
        assert!(parse_integer(b"-").is_err());
        assert!(parse_integer(b"+1").is_err());
    }
}
