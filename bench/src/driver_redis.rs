//! Redis over RESP2 on a `TcpStream`, the same names (`bench:{i}`) and the same loops as Tally, so
//! one program measures both on the same machine and workload.
//!
//! Ops: `incr` is `INCR key`, `get` is `GET key`. Redis has no strict counters, so the strict ops
//! run as Lua scripts (loaded once with SCRIPT LOAD, sent with EVALSHA), which Redis executes
//! atomically: `add` is a bounded decrement (`INCRBY -1` unless the value would go below 0, else
//! the error `BOUND <value>`), `cas` sets `expected - 1` if the value is `expected` (else
//! `CASMISMATCH <value>`). Both refusals are counted as refused, like Tally's. A "frame" is one
//! command: `--batch` must be 1, and `--pipeline` commands are in flight per connection.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use bytes::BytesMut;

use crate::connection::Wire;
use crate::error::BenchError;
use crate::limits::CONNECT_TIMEOUT_MS;
use crate::recorder::{OpReply, Outcome};
use crate::resp::{self, put_array_header, put_bulk, put_bulk_i64, put_command, Resp};
use crate::workload::{OpKind, PlannedOp, Target};

/// Bounded decrement: KEYS[1] the counter, ARGV[1] the delta, ARGV[2] the floor.
const SCRIPT_ADD: &str = "local s = redis.call('GET', KEYS[1]) or '0'\n\
    if tonumber(s) + tonumber(ARGV[1]) < tonumber(ARGV[2]) then return redis.error_reply('BOUND ' .. s) end\n\
    return redis.call('INCRBY', KEYS[1], ARGV[1])";

/// Compare-and-set: KEYS[1] the counter, ARGV[1] expected, ARGV[2] new, ARGV[3] the floor.
const SCRIPT_CAS: &str = "local s = redis.call('GET', KEYS[1]) or '0'\n\
    if s ~= ARGV[1] then return redis.error_reply('CASMISMATCH ' .. s) end\n\
    if tonumber(ARGV[2]) < tonumber(ARGV[3]) then return redis.error_reply('BOUND ' .. s) end\n\
    redis.call('SET', KEYS[1], ARGV[2])\n\
    return tonumber(ARGV[2])";

/// What setup learned about the server.
#[derive(Debug, Clone, Default)]
pub struct RedisInfo {
    pub version: String,
    /// `CONFIG GET` answers, `unknown` where CONFIG is disabled.
    pub appendonly: String,
    pub appendfsync: String,
    /// SHA1s of the loaded scripts (empty when the mix has no strict ops).
    pub sha_add: String,
    pub sha_cas: String,
}

/// Opens one connection.
pub fn connect(addr: &str) -> Result<TcpStream, BenchError> {
    let resolved = addr
        .to_socket_addrs()
        .map_err(|e| BenchError::io(format!("resolving {addr}"), e))?
        .next()
        .ok_or_else(|| BenchError::Args(format!("{addr} resolves to no address")))?;
    let stream = TcpStream::connect_timeout(&resolved, Duration::from_millis(CONNECT_TIMEOUT_MS))
        .map_err(|e| BenchError::io(format!("connecting to {addr}"), e))?;
    stream
        .set_nodelay(true)
        .map_err(|e| BenchError::io("setting TCP_NODELAY", e))?;
    stream
        .set_read_timeout(Some(Duration::from_millis(CONNECT_TIMEOUT_MS)))
        .map_err(|e| BenchError::io("setting the read timeout", e))?;
    Ok(stream)
}

/// Reads the server's version and durability settings, loads the scripts, and sets the strict
/// counters to `strict_initial`.
pub fn setup(addr: &str, strict_names: u32, strict_initial: i64) -> Result<RedisInfo, BenchError> {
    let mut client = SetupClient {
        stream: connect(addr)?,
        buf: Vec::new(),
    };
    let version = client.call(&[b"INFO", b"server"], |reply| match reply {
        Resp::Bulk(Some(text)) => Ok(info_field(&String::from_utf8_lossy(text), "redis_version").unwrap_or_default()),
        other => Err(format!("INFO answered {other:?}")),
    })?;
    let config = |client: &mut SetupClient, key: &str| {
        client.call(&[b"CONFIG", b"GET", key.as_bytes()], |reply| match reply {
            Resp::Array(Some(items)) => match items.as_slice() {
                [_, Resp::Bulk(Some(value))] => Ok(String::from_utf8_lossy(value).into_owned()),
                _ => Ok("unknown".to_string()),
            },
            _ => Ok("unknown".to_string()),
        })
    };
    let appendonly = config(&mut client, "appendonly")?;
    let appendfsync = config(&mut client, "appendfsync")?;
    let mut info = RedisInfo {
        version,
        appendonly,
        appendfsync,
        ..RedisInfo::default()
    };
    if strict_names > 0 {
        let load = |client: &mut SetupClient, script: &str| {
            client.call(&[b"SCRIPT", b"LOAD", script.as_bytes()], |reply| match reply {
                Resp::Bulk(Some(sha)) => Ok(String::from_utf8_lossy(sha).into_owned()),
                other => Err(format!("SCRIPT LOAD answered {other:?}")),
            })
        };
        info.sha_add = load(&mut client, SCRIPT_ADD)?;
        info.sha_cas = load(&mut client, SCRIPT_CAS)?;
        let initial = strict_initial.to_string();
        let mut name = Vec::new();
        for index in 0..strict_names {
            name.clear();
            Target::Strict(index).write_name(&mut name);
            client.call(&[b"SET", &name, initial.as_bytes()], |reply| match reply {
                Resp::Simple(b"OK") => Ok(()),
                other => Err(format!("SET answered {other:?}")),
            })?;
        }
    }
    Ok(info)
}

/// A `key:value` line of an INFO reply.
pub fn info_field(info: &str, key: &str) -> Option<String> {
    info.lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
        .map(|value| value.trim().to_string())
}

/// One request, one reply: setup only.
struct SetupClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl SetupClient {
    fn call<T>(&mut self, args: &[&[u8]], answer: impl FnOnce(Resp<'_>) -> Result<T, String>) -> Result<T, BenchError> {
        let mut out = BytesMut::new();
        put_command(&mut out, args);
        self.stream
            .write_all(&out)
            .map_err(|e| BenchError::io("sending a setup command", e))?;
        self.buf.clear();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if let Some((reply, _)) = resp::decode(&self.buf).map_err(BenchError::Protocol)? {
                if let Resp::Error(message) = reply {
                    return Err(BenchError::Setup(format!(
                        "{}: {}",
                        String::from_utf8_lossy(args[0]),
                        String::from_utf8_lossy(message)
                    )));
                }
                return answer(reply).map_err(BenchError::Setup);
            }
            let read = self
                .stream
                .read(&mut chunk)
                .map_err(|e| BenchError::io("reading a setup reply", e))?;
            if read == 0 {
                return Err(BenchError::Setup("the server closed the connection".to_string()));
            }
            self.buf.extend_from_slice(&chunk[..read]);
        }
    }
}

/// RESP commands out, one reply per command in.
#[derive(Debug)]
pub struct RedisWire {
    sha_add: Vec<u8>,
    sha_cas: Vec<u8>,
    name: Vec<u8>,
}

impl RedisWire {
    pub fn new(info: &RedisInfo) -> RedisWire {
        RedisWire {
            sha_add: info.sha_add.as_bytes().to_vec(),
            sha_cas: info.sha_cas.as_bytes().to_vec(),
            name: Vec::new(),
        }
    }
}

impl Wire for RedisWire {
    fn encode_frame(&mut self, ops: &[PlannedOp], out: &mut BytesMut) {
        assert_eq!(ops.len(), 1, "a Redis frame is one command");
        let op = &ops[0];
        self.name.clear();
        op.target.write_name(&mut self.name);
        match op.kind {
            OpKind::Incr => put_command(out, &[b"INCR", &self.name]),
            OpKind::Get => put_command(out, &[b"GET", &self.name]),
            OpKind::Add => {
                put_array_header(out, 6);
                put_bulk(out, b"EVALSHA");
                put_bulk(out, &self.sha_add);
                put_bulk(out, b"1");
                put_bulk(out, &self.name);
                put_bulk_i64(out, -1);
                put_bulk_i64(out, 0);
            }
            OpKind::Cas => {
                put_array_header(out, 7);
                put_bulk(out, b"EVALSHA");
                put_bulk(out, &self.sha_cas);
                put_bulk(out, b"1");
                put_bulk(out, &self.name);
                put_bulk_i64(out, op.expected);
                put_bulk_i64(out, op.expected.saturating_sub(1));
                put_bulk_i64(out, 0);
            }
        }
    }

    fn decode_frame(
        &mut self,
        input: &[u8],
        ops: usize,
        replies: &mut Vec<OpReply>,
    ) -> Result<Option<usize>, BenchError> {
        assert_eq!(ops, 1, "a Redis frame is one command");
        let Some((reply, used)) = resp::decode(input).map_err(BenchError::Protocol)? else {
            return Ok(None);
        };
        replies.push(op_reply(&reply));
        Ok(Some(used))
    }
}

/// One RESP reply as the recorder sees it.
pub fn op_reply(reply: &Resp<'_>) -> OpReply {
    match *reply {
        Resp::Integer(value) => OpReply::ok(None, Some(value)),
        Resp::Bulk(Some(text)) => OpReply::ok(None, resp::parse_integer(text).ok()),
        Resp::Bulk(None) | Resp::Simple(_) | Resp::Array(_) => OpReply::ok(None, None),
        Resp::Error(message) => {
            let text = String::from_utf8_lossy(message);
            let (word, rest) = text.split_once(' ').unwrap_or((&text, ""));
            let value = resp::parse_integer(rest.trim().as_bytes()).ok();
            let outcome = match word {
                "BOUND" => Outcome::Refused("bound_violation"),
                "CASMISMATCH" => Outcome::Refused("cas_mismatch"),
                _ => Outcome::Failed(error_code(word)),
            };
            OpReply {
                echoed: None,
                outcome,
                value,
                message: Some(text.into_owned()),
            }
        }
    }
}

/// Redis error prefixes as stable lower-case names.
fn error_code(word: &str) -> &'static str {
    match word {
        "ERR" => "err",
        "WRONGTYPE" => "wrongtype",
        "NOSCRIPT" => "noscript",
        "OOM" => "oom",
        "LOADING" => "loading",
        "BUSY" => "busy",
        "MISCONF" => "misconf",
        "READONLY" => "readonly",
        "NOAUTH" => "noauth",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(kind: OpKind, target: Target, expected: i64) -> PlannedOp {
        PlannedOp {
            kind,
            target,
            key: None,
            expected,
        }
    }

    fn wire() -> RedisWire {
        RedisWire::new(&RedisInfo {
            sha_add: "aaaa".into(),
            sha_cas: "cccc".into(),
            ..RedisInfo::default()
        })
    }

    #[test]
    fn commands_for_each_op() {
        let mut wire = wire();
        let mut out = BytesMut::new();
        wire.encode_frame(&[op(OpKind::Incr, Target::Name(7), 0)], &mut out);
        assert_eq!(&out[..], b"*2\r\n$4\r\nINCR\r\n$7\r\nbench:7\r\n");
        out.clear();
        wire.encode_frame(&[op(OpKind::Get, Target::Name(12), 0)], &mut out);
        assert_eq!(&out[..], b"*2\r\n$3\r\nGET\r\n$8\r\nbench:12\r\n");
        out.clear();
        wire.encode_frame(&[op(OpKind::Add, Target::Strict(0), 0)], &mut out);
        assert_eq!(
            &out[..],
            &b"*6\r\n$7\r\nEVALSHA\r\n$4\r\naaaa\r\n$1\r\n1\r\n$14\r\nbench:strict:0\r\n$2\r\n-1\r\n$1\r\n0\r\n"[..]
        );
        out.clear();
        wire.encode_frame(&[op(OpKind::Cas, Target::Strict(1), 10)], &mut out);
        assert_eq!(
            &out[..],
            &b"*7\r\n$7\r\nEVALSHA\r\n$4\r\ncccc\r\n$1\r\n1\r\n$14\r\nbench:strict:1\r\n$2\r\n10\r\n$1\r\n9\r\n$1\r\n0\r\n"[..]
        );
    }

    #[test]
    fn incr_and_get_replies_including_nil() {
        let mut wire = wire();
        let mut replies = Vec::new();
        assert_eq!(wire.decode_frame(b":42\r\n", 1, &mut replies).unwrap(), Some(5));
        assert_eq!(wire.decode_frame(b"$2\r\n17\r\n", 1, &mut replies).unwrap(), Some(8));
        assert_eq!(wire.decode_frame(b"$-1\r\n", 1, &mut replies).unwrap(), Some(5));
        assert_eq!(wire.decode_frame(b"$2\r\n1", 1, &mut replies).unwrap(), None);
        assert_eq!(
            replies,
            [
                OpReply::ok(None, Some(42)),
                OpReply::ok(None, Some(17)),
                OpReply::ok(None, None)
            ]
        );
        assert!(matches!(
            wire.decode_frame(b"!oops\r\n", 1, &mut replies),
            Err(BenchError::Protocol(_))
        ));
    }

    #[test]
    fn error_replies_are_refusals_or_failures() {
        let bound = op_reply(&Resp::Error(b"BOUND 0"));
        assert_eq!(
            (bound.outcome, bound.value),
            (Outcome::Refused("bound_violation"), Some(0))
        );
        let mismatch = op_reply(&Resp::Error(b"CASMISMATCH 1099511627770"));
        assert_eq!(
            (mismatch.outcome, mismatch.value),
            (Outcome::Refused("cas_mismatch"), Some(1_099_511_627_770))
        );
        let wrong = op_reply(&Resp::Error(
            b"WRONGTYPE Operation against a key holding the wrong kind of value",
        ));
        assert_eq!(wrong.outcome, Outcome::Failed("wrongtype"));
        assert!(wrong.message.unwrap().starts_with("WRONGTYPE"));
        assert_eq!(op_reply(&Resp::Error(b"ERR")).outcome, Outcome::Failed("err"));
        assert_eq!(op_reply(&Resp::Error(b"WEIRD thing")).outcome, Outcome::Failed("other"));
    }

    #[test]
    fn info_fields() {
        let info = "# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\n";
        assert_eq!(info_field(info, "redis_version"), Some("7.0.15".to_string()));
        assert_eq!(info_field(info, "redis_mode"), Some("standalone".to_string()));
        assert_eq!(info_field(info, "redis"), None);
    }
}
