//! `tally`: the command-line client. One command per invocation, sent over the main port (the CLI
//! is not shard-aware; the server forwards). Plain output is the bare value so that scripts can use
//! `$(tally get x)`; `--json` prints one JSON object per command, errors included.
//!
//! Exit codes: 0 success, 1 the server refused the op (or the client refused it with the same
//! code), 2 usage error, 3 connection, timeout or protocol error. Errors also print one line on
//! stderr: `tally: bound_violation (10): would go below 0 (current 2)`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::{json, Map, Value};
use tally_sdk::{
    key_from_str, Client, ClientOptions, CounterSpec, Error, ErrorCode, EventKind, SeriesStep, StatsReply, WindowUnit,
};

/// Exit code when the server (or the client, with the server's code) refused the op.
const EXIT_REFUSED: u8 = 1;
/// Exit code for connection, timeout and protocol errors. Usage errors exit with clap's 2.
const EXIT_CONNECTION: u8 = 3;
/// Exit code of `events` and `audit` when this node does not hold the start of the range
/// (`history_not_held`): what it holds was printed, from the time the warning names.
const EXIT_INCOMPLETE: u8 = 4;
/// `admin promote --wait-ms` default: a few of the replication wait's 2 s, so a peer that is merely
/// slow still answers, while an operator waiting on a dead peer learns it within seconds.
const PROMOTE_WAIT_MS_DEFAULT: u32 = 5_000;

/// Talk to a Tally counter server.
#[derive(Debug, Parser)]
#[command(name = "tally", version)]
struct Cli {
    /// The server's main port, host:port.
    #[arg(long, global = true, env = "TALLY_ADDR", default_value = "127.0.0.1:7400")]
    addr: String,
    /// Connect to this Unix socket instead of --addr.
    #[arg(long, global = true, value_name = "PATH")]
    unix: Option<PathBuf>,
    /// Print one JSON object per command (errors too).
    #[arg(long, global = true)]
    json: bool,
    /// Connect and reply timeout: seconds (2, 0.5) or with a unit (500ms, 2s). `admin promote`
    /// waits its --wait-ms longer for the reply.
    #[arg(long, global = true, default_value = "5s", value_parser = parse_timeout)]
    timeout: Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, PartialEq, Eq, Subcommand)]
enum Command {
    /// Add DELTA (default 1) to NAME; prints the new value.
    Incr {
        name: String,
        #[arg(allow_negative_numbers = true, default_value_t = 1)]
        delta: i64,
        /// Idempotency key: 32 hex digits are the 128-bit key itself, any other text is hashed
        /// (FNV-1a 128). Running the command again with the same key counts once.
        #[arg(long)]
        key: Option<String>,
    },
    /// Print NAME's value (0 if it was never written).
    Get {
        name: String,
        /// Sum a split counter's shards now instead of reading the owner's aggregate.
        #[arg(long)]
        fresh: bool,
    },
    /// Declare NAME: analytic by default, or strict with optional bounds.
    Create {
        name: String,
        /// A strict counter: single owner, CAS and bounded adds, bounds enforced.
        #[arg(long)]
        strict: bool,
        /// Lowest value a strict counter may take.
        #[arg(long, requires = "strict", allow_negative_numbers = true)]
        min: Option<i64>,
        /// Highest value a strict counter may take.
        #[arg(long, requires = "strict", allow_negative_numbers = true)]
        max: Option<i64>,
        /// Starting value.
        #[arg(long, allow_negative_numbers = true, default_value_t = 0)]
        initial: i64,
    },
    /// Set strict counter NAME to NEW if it is EXPECTED; prints the new value.
    Cas {
        name: String,
        #[arg(allow_negative_numbers = true)]
        expected: i64,
        #[arg(allow_negative_numbers = true)]
        new: i64,
    },
    /// Add DELTA to strict counter NAME unless the result leaves [--min, --max]; prints the new
    /// value.
    Add {
        name: String,
        #[arg(allow_negative_numbers = true)]
        delta: i64,
        /// Floor (default: none).
        #[arg(long, allow_negative_numbers = true)]
        min: Option<i64>,
        /// Ceiling (default: none).
        #[arg(long, allow_negative_numbers = true)]
        max: Option<i64>,
    },
    /// Set NAME to VALUE, recording the old value and the reason; prints "old -> new".
    Reset {
        name: String,
        #[arg(allow_negative_numbers = true)]
        value: i64,
        /// Why, for the audit log.
        #[arg(long)]
        reason: String,
    },
    /// Print server statistics.
    Stats,
    /// Print the sum of NAME's increments over the last SPAN (60s, 5m, or seconds), the current
    /// second or minute included.
    Window {
        name: String,
        #[arg(value_parser = parse_span)]
        span: (u32, WindowUnit),
    },
    /// Print NAME's increments per step, one "time value" line per step.
    Series {
        name: String,
        /// Start: RFC 3339 (2026-11-23T17:00:00Z), unix seconds, or relative to now (-1h, -30m, -2d).
        #[arg(long, default_value = "-1h", allow_hyphen_values = true, value_parser = parse_time_arg)]
        from: u64,
        /// End (exclusive), same forms as --from.
        #[arg(long, default_value = "now", allow_hyphen_values = true, value_parser = parse_time_arg)]
        to: u64,
        /// 1s, 1m, 1h or 1d.
        #[arg(long, default_value = "1m", value_parser = parse_step)]
        step: SeriesStep,
    },
    /// Print RESET records of NAME (or of every counter): time, name, old -> new, who, reason.
    Audit {
        name: Option<String>,
        /// Start, same forms as `series --from` (default: everything kept).
        #[arg(long, default_value = "0", allow_hyphen_values = true, value_parser = parse_time_arg)]
        from: u64,
        /// End (exclusive).
        #[arg(long, default_value = "+1m", allow_hyphen_values = true, value_parser = parse_time_arg)]
        to: u64,
    },
    /// Print NAME's logged increments: time, delta, idempotency key, shard and lsn, one per line.
    Events {
        name: String,
        #[arg(long, default_value = "-1h", allow_hyphen_values = true, value_parser = parse_time_arg)]
        from: u64,
        #[arg(long, default_value = "now", allow_hyphen_values = true, value_parser = parse_time_arg)]
        to: u64,
        /// Print at most this many.
        #[arg(long)]
        limit: Option<u64>,
    },
    /// Operator commands that change a node's role.
    #[command(subcommand)]
    Admin(Admin),
}

/// `tally admin ...`.
#[derive(Debug, PartialEq, Eq, Subcommand)]
enum Admin {
    /// Make the replica at --addr the primary: it fences its fellow replicas, collects what they
    /// have that it lacks, answers with the new epoch (printed), then restarts as primary.
    Promote {
        /// Go on without fellow replicas that do not answer within --wait-ms. Writes acknowledged
        /// only on those replicas are lost: use it only when they are known to be gone.
        #[arg(long)]
        force: bool,
        /// How long the replica waits for its fellow replicas, milliseconds.
        #[arg(long, default_value_t = PROMOTE_WAIT_MS_DEFAULT)]
        wait_ms: u32,
    },
}

/// What a command prints on success.
struct Output {
    text: String,
    json: Value,
    /// Set when the answer is complete only from a later time than asked (`history_not_held`):
    /// printed to stderr, and the exit code is `EXIT_INCOMPLETE`.
    warning: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match connect(&cli).and_then(|mut client| run(&cli.command, &mut client)) {
        Ok(output) => {
            if cli.json {
                println!("{}", output.json);
            } else {
                println!("{}", output.text);
            }
            match &output.warning {
                Some(warning) => {
                    eprintln!("tally: warning: {warning}");
                    ExitCode::from(EXIT_INCOMPLETE)
                }
                None => ExitCode::SUCCESS,
            }
        }
        Err(error) => {
            if cli.json {
                println!("{}", error_json(&error));
            }
            eprintln!("tally: {error}");
            ExitCode::from(exit_code(&error))
        }
    }
}

fn connect(cli: &Cli) -> Result<Client, Error> {
    let options = ClientOptions::new()
        .client_name("tally-cli")
        .shard_aware(false)
        .connect_timeout(cli.timeout)
        .read_timeout(Some(reply_timeout(&cli.command, cli.timeout)));
    match &cli.unix {
        Some(path) => options.connect_unix(path),
        None => options.connect(&cli.addr),
    }
}

fn run(command: &Command, client: &mut Client) -> Result<Output, Error> {
    Ok(match command {
        Command::Incr { name, delta, key } => {
            let key = key.as_deref().map(key_from_str);
            let ack = client.incr_detailed(name, *delta, key)?;
            Output {
                text: ack.value.to_string(),
                json: json!({
                    "value": ack.value,
                    "split": ack.split,
                    "duplicate": ack.duplicate,
                    "shard": ack.token.shard,
                    "lsn": ack.token.lsn,
                }),
                warning: None,
            }
        }
        Command::Get { name, fresh } => {
            let reading = client.get_with(name, *fresh, None)?;
            Output {
                text: reading.value.to_string(),
                json: json!({
                    "value": reading.value,
                    "exists": reading.exists,
                    "split": reading.split,
                    "strict": reading.strict,
                }),
                warning: None,
            }
        }
        Command::Create {
            name,
            strict,
            min,
            max,
            initial,
        } => {
            let mut spec = if *strict {
                CounterSpec::strict()
            } else {
                CounterSpec::analytic()
            };
            spec = spec.initial(*initial);
            if let Some(min) = min {
                spec = spec.min(*min);
            }
            if let Some(max) = max {
                spec = spec.max(*max);
            }
            let created = client.create(name, spec)?;
            let kind = if created.strict { "strict" } else { "analytic" };
            let verb = if created.created { "created" } else { "already declared" };
            Output {
                text: format!("{verb} {kind} counter {name} = {}", created.value),
                json: json!({ "created": created.created, "value": created.value, "strict": created.strict }),
                warning: None,
            }
        }
        Command::Cas { name, expected, new } => {
            let ack = client.cas_detailed(name, *expected, *new)?;
            write_output(ack.value, ack.token)
        }
        Command::Add { name, delta, min, max } => {
            let ack =
                client.add_bounded_detailed(name, *delta, min.unwrap_or(i64::MIN), max.unwrap_or(i64::MAX), None)?;
            write_output(ack.value, ack.token)
        }
        Command::Reset { name, value, reason } => {
            let reset = client.reset(name, *value, reason)?;
            Output {
                text: format!("{} -> {}", reset.old, reset.new),
                json: json!({ "old": reset.old, "new": reset.new, "shard": reset.token.shard, "lsn": reset.token.lsn }),
                warning: None,
            }
        }
        Command::Stats => stats_output(&client.stats()?),
        Command::Window { name, span } => {
            let sum = client.window(name, span.0, span.1)?;
            Output {
                text: sum.value.to_string(),
                json: json!({ "value": sum.value, "from_ms": sum.from_ms, "to_ms": sum.to_ms }),
                warning: None,
            }
        }
        Command::Series { name, from, to, step } => {
            let (from_ms, to_ms) = (*from, *to);
            let series = client.series(name, from_ms, to_ms, *step)?;
            let mut text = Vec::with_capacity(series.points.len());
            for (i, point) in series.points.iter().enumerate() {
                text.push(format!(
                    "{} {point}",
                    format_time(series.from_ms + i as u64 * series.step_ms)
                ));
            }
            Output {
                text: text.join("\n"),
                json: json!({ "from_ms": series.from_ms, "step_ms": series.step_ms, "points": series.points }),
                warning: None,
            }
        }
        Command::Audit { name, from, to } => {
            let (from_ms, to_ms) = (*from, *to);
            let name = name.as_deref().unwrap_or("");
            let (records, held) = complete_from(from_ms, |from_ms| client.audit(name, from_ms, to_ms))?;
            let text_of = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
            let mut text = Vec::new();
            let mut items = Vec::new();
            for r in &records {
                text.push(format!(
                    "{} {} {} -> {} by {:?}: {}",
                    format_time(r.time_ms),
                    text_of(&r.name),
                    r.old,
                    r.new,
                    text_of(&r.client),
                    text_of(&r.reason)
                ));
                items.push(json!({
                    "time_ms": r.time_ms, "name": text_of(&r.name), "old": r.old, "new": r.new,
                    "client": text_of(&r.client), "reason": text_of(&r.reason), "shard": r.shard, "lsn": r.lsn,
                }));
            }
            Output {
                text: if text.is_empty() {
                    "no resets".into()
                } else {
                    text.join("\n")
                },
                json: incomplete_json(json!({ "records": items }), &held),
                warning: held.map(|(_, warning)| warning),
            }
        }
        Command::Events { name, from, to, limit } => {
            let (from_ms, to_ms) = (*from, *to);
            let max = limit.unwrap_or(u64::MAX);
            let (events, held) = complete_from(from_ms, |from_ms| {
                let mut got = Vec::new();
                client.events_each(name, from_ms, to_ms, |events| {
                    for e in events {
                        if got.len() as u64 >= max {
                            return false;
                        }
                        got.push(*e);
                    }
                    (got.len() as u64) < max
                })?;
                Ok(got)
            })?;
            let (mut text, mut items) = (Vec::new(), Vec::new());
            for e in &events {
                let key = e.key.map(|k| format!("{k:032x}"));
                let kind = match e.kind {
                    EventKind::Incr => "incr",
                    EventKind::AddBounded => "add",
                    EventKind::SplitPart => "split_part",
                };
                text.push(format!(
                    "{} {:+} {} {kind} shard {} lsn {}",
                    format_time(e.time_ms),
                    e.delta,
                    key.as_deref().unwrap_or("-"),
                    e.shard,
                    e.lsn
                ));
                items.push(json!({
                    "time_ms": e.time_ms, "delta": e.delta, "key": key, "kind": kind, "shard": e.shard, "lsn": e.lsn,
                }));
            }
            Output {
                text: if text.is_empty() {
                    "no events".into()
                } else {
                    text.join("\n")
                },
                json: incomplete_json(json!({ "events": items }), &held),
                warning: held.map(|(_, warning)| warning),
            }
        }
        Command::Admin(Admin::Promote { force, wait_ms }) => {
            let epoch = client.promote(*force, *wait_ms)?;
            Output {
                text: format!("primary at epoch {epoch}"),
                json: json!({ "promoted": true, "epoch": epoch, "force": force }),
                warning: None,
            }
        }
    })
}

/// Runs a history listing (`events`, `audit`) from `from_ms`. If the node does not hold the start
/// of the range (`history_not_held`), runs it again from the first time it holds completely and
/// returns that time with a warning saying what is missing, so the listing is never silently
/// shorter: the caller prints the warning and exits with `EXIT_INCOMPLETE`.
fn complete_from<T>(
    from_ms: u64,
    mut list: impl FnMut(u64) -> Result<T, Error>,
) -> Result<(T, Option<(u64, String)>), Error> {
    match list(from_ms) {
        Ok(items) => Ok((items, None)),
        Err(error) => match error.history_held_from_ms() {
            Some(held_ms) if held_ms > from_ms => {
                let items = list(held_ms)?;
                let warning = format!(
                    "history before {} is not held on this node, shown from then on ({}); the primary may hold it",
                    format_time(held_ms),
                    error.message()
                );
                Ok((items, Some((held_ms, warning))))
            }
            _ => Err(error),
        },
    }
}

/// A history listing's JSON, with `"complete_from_ms"` when it starts later than asked.
fn incomplete_json(mut value: Value, held: &Option<(u64, String)>) -> Value {
    if let (Some((held_ms, warning)), Some(object)) = (held, value.as_object_mut()) {
        object.insert("complete_from_ms".into(), json!(held_ms));
        object.insert("warning".into(), json!(warning));
    }
    value
}

/// How long to wait for a reply. A promotion may legitimately wait `wait_ms` for its peers before
/// it answers, so its reply gets `--timeout` on top of that.
fn reply_timeout(command: &Command, timeout: Duration) -> Duration {
    match command {
        Command::Admin(Admin::Promote { wait_ms, .. }) => timeout + Duration::from_millis(u64::from(*wait_ms)),
        _ => timeout,
    }
}

fn parse_time_arg(text: &str) -> Result<u64, String> {
    parse_time(text, now_ms())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `60s`, `5m` or a number of seconds.
fn parse_span(text: &str) -> Result<(u32, WindowUnit), String> {
    let (number, unit) = match text.strip_suffix('m') {
        Some(minutes) => (minutes, WindowUnit::Minute),
        None => (text.strip_suffix('s').unwrap_or(text), WindowUnit::Second),
    };
    match number.parse::<u32>() {
        Ok(n) if n > 0 => Ok((n, unit)),
        _ => Err(format!("{text:?} is not a window: use 60s, 5m or a number of seconds")),
    }
}

fn parse_step(text: &str) -> Result<SeriesStep, String> {
    match text {
        "1s" => Ok(SeriesStep::Second),
        "1m" => Ok(SeriesStep::Minute),
        "1h" => Ok(SeriesStep::Hour),
        "1d" => Ok(SeriesStep::Day),
        _ => Err(format!("{text:?} is not a step: use 1s, 1m, 1h or 1d")),
    }
}

/// A time in ms since the Unix epoch: `now`, relative (`-1h`, `+30s`, `-2d`), unix seconds, or
/// RFC 3339 (`2026-11-23T17:00:00Z`, `2026-11-23T18:00:00.5+01:00`).
fn parse_time(text: &str, now_ms: u64) -> Result<u64, String> {
    let bad = || format!("{text:?} is not a time: use now, -1h, unix seconds or RFC 3339");
    if text == "now" {
        return Ok(now_ms);
    }
    if let Some(sign) = text.chars().next().filter(|c| *c == '-' || *c == '+') {
        let body = &text[1..];
        let unit_ms = match body.chars().last() {
            Some('s') => 1_000,
            Some('m') => 60_000,
            Some('h') => 3_600_000,
            Some('d') => 86_400_000,
            _ => return Err(bad()),
        };
        let n: u64 = body[..body.len() - 1].parse().map_err(|_| bad())?;
        let delta = n.checked_mul(unit_ms).ok_or_else(bad)?;
        return Ok(if sign == '-' {
            now_ms.saturating_sub(delta)
        } else {
            now_ms.saturating_add(delta)
        });
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        let seconds: u64 = text.parse().map_err(|_| bad())?;
        return seconds.checked_mul(1_000).ok_or_else(bad);
    }
    parse_rfc3339(text).ok_or_else(bad)
}

fn parse_rfc3339(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<i64> { std::str::from_utf8(b.get(range)?).ok()?.parse().ok() };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut at = 19;
    let mut millis = 0i64;
    if b[at] == b'.' {
        let start = at + 1;
        at = start;
        while at < b.len() && b[at].is_ascii_digit() {
            at += 1;
        }
        let digits = std::str::from_utf8(&b[start..at]).ok()?;
        let padded: String = digits.chars().chain("000".chars()).take(3).collect();
        millis = padded.parse().ok()?;
    }
    let offset_s = match b.get(at..)? {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let h = i64::from(h1 - b'0') * 10 + i64::from(h2 - b'0');
            let m = i64::from(m1 - b'0') * 10 + i64::from(m2 - b'0');
            let s = (h * 60 + m) * 60;
            if *sign == b'+' {
                s
            } else {
                -s
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second - offset_s;
    u64::try_from(seconds * 1_000 + millis).ok()
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// RFC 3339 in UTC with milliseconds.
fn format_time(ms: u64) -> String {
    let days = (ms / 86_400_000) as i64;
    let rest = ms % 86_400_000;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3_600_000,
        rest / 60_000 % 60,
        rest / 1_000 % 60,
        rest % 1_000
    )
}

fn write_output(value: i64, token: tally_sdk::Token) -> Output {
    Output {
        text: value.to_string(),
        json: json!({ "value": value, "shard": token.shard, "lsn": token.lsn }),
        warning: None,
    }
}

/// A two-column table of figures, then the split counters.
fn stats_output(stats: &StatsReply) -> Output {
    let width = stats
        .figures
        .iter()
        .map(|(name, _)| name.len())
        .chain(["figure".len()])
        .max()
        .unwrap_or(0);
    let mut text = format!("{:<width$}  {:>20}", "figure", "value");
    let mut figures = Map::new();
    for (name, value) in &stats.figures {
        text.push_str(&format!("\n{name:<width$}  {value:>20}"));
        figures.insert(name.clone(), json!(value));
    }
    let split: Vec<String> = stats
        .split
        .iter()
        .map(|name| String::from_utf8_lossy(name).into_owned())
        .collect();
    if split.is_empty() {
        text.push_str("\nsplit counters: none");
    } else {
        text.push_str(&format!("\nsplit counters: {}", split.join(", ")));
    }
    Output {
        text,
        json: json!({ "figures": figures, "split": split }),
        warning: None,
    }
}

fn exit_code(error: &Error) -> u8 {
    if error.code().is_some() {
        EXIT_REFUSED
    } else {
        EXIT_CONNECTION
    }
}

/// `{"error":"bound_violation","code":10,"current":2,"message":"..."}` for refusals,
/// `{"error":"timeout","message":"..."}` for the rest.
fn error_json(error: &Error) -> Value {
    let mut object = Map::new();
    match error.code() {
        Some(code) => {
            let name = ErrorCode::from_u16(code).map_or("error", ErrorCode::name);
            object.insert("error".into(), json!(name));
            object.insert("code".into(), json!(code));
            if let Some(current) = error.current() {
                object.insert("current".into(), json!(current));
            }
            object.insert("message".into(), json!(error.message()));
        }
        None => {
            let kind = match error {
                Error::Timeout => "timeout",
                Error::Closed => "closed",
                Error::Protocol(_) => "protocol",
                _ => "io",
            };
            object.insert("error".into(), json!(kind));
            object.insert("message".into(), json!(error.to_string()));
        }
    }
    Value::Object(object)
}

/// Seconds (`2`, `0.5`) or a number with `ms` or `s`; at least a millisecond.
fn parse_timeout(text: &str) -> Result<Duration, String> {
    let (number, seconds_per_unit) = if let Some(ms) = text.strip_suffix("ms") {
        (ms, 0.001)
    } else if let Some(s) = text.strip_suffix('s') {
        (s, 1.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a timeout: use seconds (2, 0.5) or 500ms, 2s"))?;
    let timeout = Duration::try_from_secs_f64(value * seconds_per_unit)
        .map_err(|_| format!("{text:?} is not a usable timeout"))?;
    if timeout < Duration::from_millis(1) {
        return Err(format!("timeout {text:?} is under a millisecond"));
    }
    Ok(timeout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("tally").chain(args.iter().copied()))
    }

    fn command(args: &[&str]) -> Command {
        parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}")).command
    }

    #[test]
    fn times_spans_and_steps_parse() {
        let now = 1_700_000_000_000;
        assert_eq!(parse_time("now", now), Ok(now));
        assert_eq!(parse_time("-1h", now), Ok(now - 3_600_000));
        assert_eq!(parse_time("+30s", now), Ok(now + 30_000));
        assert_eq!(parse_time("1700000000", now), Ok(now));
        assert_eq!(parse_time("2023-11-14T22:13:20Z", now), Ok(now));
        assert_eq!(parse_time("2023-11-14T23:13:20.25+01:00", now), Ok(now + 250));
        assert!(parse_time("yesterday", now).is_err());
        assert!(parse_time("-1w", now).is_err());
        assert!(parse_time("2023-13-14T22:13:20Z", now).is_err());
        assert_eq!(format_time(now + 250), "2023-11-14T22:13:20.250Z");
        assert_eq!(format_time(0), "1970-01-01T00:00:00.000Z");
        for ms in [0, 951_782_400_000, now, 4_102_444_800_123] {
            assert_eq!(parse_rfc3339(&format_time(ms)), Some(ms), "{ms}");
        }
        assert_eq!(parse_span("60s"), Ok((60, WindowUnit::Second)));
        assert_eq!(parse_span("5m"), Ok((5, WindowUnit::Minute)));
        assert_eq!(parse_span("90"), Ok((90, WindowUnit::Second)));
        assert!(parse_span("0s").is_err());
        assert_eq!(parse_step("1h"), Ok(SeriesStep::Hour));
        assert!(parse_step("5m").is_err());
        assert_eq!(
            command(&[
                "series",
                "x",
                "--from",
                "1700000000",
                "--to",
                "2023-11-14T22:14:20Z",
                "--step",
                "1s"
            ]),
            Command::Series {
                name: "x".into(),
                from: now,
                to: now + 60_000,
                step: SeriesStep::Second
            }
        );
        assert!(matches!(
            command(&["audit"]),
            Command::Audit {
                name: None,
                from: 0,
                ..
            }
        ));
        assert!(matches!(command(&["events", "e", "--from", "-1m"]), Command::Events { from, .. } if from > now));
        assert!(parse(&["series", "x", "--from", "soon"]).is_err());
    }

    #[test]
    fn negative_numbers_are_positional_values() {
        assert_eq!(
            command(&["incr", "x", "-5"]),
            Command::Incr {
                name: "x".into(),
                delta: -5,
                key: None
            }
        );
        assert_eq!(
            command(&["add", "inv", "-3", "--min", "0"]),
            Command::Add {
                name: "inv".into(),
                delta: -3,
                min: Some(0),
                max: None
            }
        );
        assert_eq!(
            command(&["add", "inv", "-3", "--min", "-10", "--max", "-1"]),
            Command::Add {
                name: "inv".into(),
                delta: -3,
                min: Some(-10),
                max: Some(-1)
            }
        );
        assert_eq!(
            command(&["cas", "s", "-1", "-2"]),
            Command::Cas {
                name: "s".into(),
                expected: -1,
                new: -2
            }
        );
        assert_eq!(
            command(&["reset", "s", "-7", "--reason", "audit fix"]),
            Command::Reset {
                name: "s".into(),
                value: -7,
                reason: "audit fix".into()
            }
        );
    }

    #[test]
    fn defaults_and_options() {
        assert_eq!(
            command(&["incr", "x"]),
            Command::Incr {
                name: "x".into(),
                delta: 1,
                key: None
            }
        );
        assert_eq!(
            command(&["incr", "x", "2", "--key", "order-42"]),
            Command::Incr {
                name: "x".into(),
                delta: 2,
                key: Some("order-42".into())
            }
        );
        assert_eq!(
            command(&[
                "create",
                "s",
                "--strict",
                "--min",
                "-5",
                "--max",
                "10",
                "--initial",
                "-1"
            ]),
            Command::Create {
                name: "s".into(),
                strict: true,
                min: Some(-5),
                max: Some(10),
                initial: -1
            }
        );
        assert_eq!(
            command(&["get", "x", "--fresh"]),
            Command::Get {
                name: "x".into(),
                fresh: true
            }
        );
        assert_eq!(command(&["stats"]), Command::Stats);
        assert_eq!(
            command(&["admin", "promote"]),
            Command::Admin(Admin::Promote {
                force: false,
                wait_ms: PROMOTE_WAIT_MS_DEFAULT
            })
        );
        assert_eq!(
            command(&["admin", "promote", "--force", "--wait-ms", "250", "--addr", "r1:7400"]),
            Command::Admin(Admin::Promote {
                force: true,
                wait_ms: 250
            })
        );
    }

    #[test]
    fn a_promotion_waits_its_wait_ms_beyond_the_timeout() {
        let timeout = Duration::from_secs(5);
        let promote = command(&["admin", "promote", "--wait-ms", "30000"]);
        assert_eq!(reply_timeout(&promote, timeout), Duration::from_secs(35));
        assert_eq!(reply_timeout(&Command::Stats, timeout), timeout);
    }

    #[test]
    fn global_options_go_anywhere() {
        let cli = parse(&["get", "x", "--json", "--timeout", "500ms", "--addr", "h:1"]).unwrap();
        assert!(cli.json);
        assert_eq!(cli.timeout, Duration::from_millis(500));
        assert_eq!(cli.addr, "h:1");
        let cli = parse(&["--unix", "/run/tally.sock", "stats"]).unwrap();
        assert_eq!(cli.unix, Some(PathBuf::from("/run/tally.sock")));
        assert_eq!(cli.timeout, Duration::from_secs(5));
    }

    #[test]
    fn usage_errors_exit_with_2() {
        let cases: [(&[&str], ErrorKind); 8] = [
            (&["create", "s", "--min", "0"], ErrorKind::MissingRequiredArgument),
            (&["reset", "s", "0"], ErrorKind::MissingRequiredArgument),
            (&["incr"], ErrorKind::MissingRequiredArgument),
            (&["bogus"], ErrorKind::InvalidSubcommand),
            (&["incr", "x", "many"], ErrorKind::ValueValidation),
            (&["admin"], ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand),
            (&["admin", "promote", "--wait-ms", "-1"], ErrorKind::UnknownArgument),
            (&["admin", "promote", "--wait-ms", "soon"], ErrorKind::ValueValidation),
        ];
        for (args, kind) in cases {
            let error = parse(args).unwrap_err();
            assert_eq!(error.kind(), kind, "{args:?}");
            assert_eq!(error.exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn timeouts_parse_with_and_without_units() {
        assert_eq!(parse_timeout("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_timeout("0.5").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_timeout("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_timeout("3s").unwrap(), Duration::from_secs(3));
        assert!(parse_timeout("0").is_err());
        assert!(parse_timeout("-1").is_err());
        assert!(parse_timeout("soon").is_err());
    }

    #[test]
    fn errors_render_as_json_and_exit_codes() {
        let error = Error::Server {
            code: ErrorCode::BoundViolation as u16,
            current: Some(2),
            message: "would go below 0".into(),
        };
        assert_eq!(
            error_json(&error),
            json!({"error": "bound_violation", "code": 10, "current": 2, "message": "would go below 0"})
        );
        assert_eq!(exit_code(&error), EXIT_REFUSED);
        assert_eq!(error_json(&Error::Timeout)["error"], "timeout");
        assert_eq!(exit_code(&Error::Timeout), EXIT_CONNECTION);
        assert_eq!(exit_code(&Error::Closed), EXIT_CONNECTION);
        let unavailable = Error::Server {
            code: ErrorCode::ReplicasUnavailable as u16,
            current: None,
            message: "1 of 2 replicas did not answer within 5000 ms".into(),
        };
        assert_eq!(error_json(&unavailable)["error"], "replicas_unavailable");
        assert_eq!(error_json(&unavailable)["code"], 25);
        assert_eq!(exit_code(&unavailable), EXIT_REFUSED);
    }

    /// A listing whose start this node does not hold is asked again from the first time it
    /// holds, with a warning; other errors, and a second refusal, stand.
    #[test]
    fn history_not_held_lists_from_the_first_time_held_with_a_warning() {
        let not_held = |held_ms: i64| Error::Server {
            code: ErrorCode::HistoryNotHeld as u16,
            current: Some(held_ms),
            message: "shard 0's log on this node holds its history only from lsn 9 on".into(),
        };
        let mut asked = Vec::new();
        let (items, held) = complete_from(100, |from_ms| {
            asked.push(from_ms);
            if from_ms < 5_000 {
                Err(not_held(5_000))
            } else {
                Ok(vec![from_ms])
            }
        })
        .unwrap();
        assert_eq!((asked, items), (vec![100, 5_000], vec![5_000]));
        let (held_ms, warning) = held.unwrap();
        assert_eq!(held_ms, 5_000);
        assert!(
            warning.contains("not held on this node") && warning.contains("lsn 9"),
            "{warning}"
        );
        let json = incomplete_json(json!({ "events": [] }), &Some((held_ms, warning)));
        assert_eq!(json["complete_from_ms"], 5_000);
        let (items, held) = complete_from(100, |from_ms| Ok::<_, Error>(vec![from_ms])).unwrap();
        assert_eq!((items, held), (vec![100], None));
        let again = complete_from(100, |_| Err::<(), _>(not_held(5_000)));
        assert_eq!(again.unwrap_err().error_code(), Some(ErrorCode::HistoryNotHeld));
        let other = complete_from(100, |_| Err::<(), _>(Error::Timeout));
        assert!(matches!(other, Err(Error::Timeout)));
    }

    #[test]
    fn replication_figures_print_like_any_other() {
        let stats = StatsReply {
            figures: vec![
                ("node.role".into(), 1),
                ("node.epoch".into(), 4),
                ("shard.1.repl.0.lag_lsns".into(), 17),
            ],
            split: vec![],
        };
        let output = stats_output(&stats);
        assert!(output
            .text
            .lines()
            .any(|l| l.starts_with("shard.1.repl.0.lag_lsns") && l.ends_with(" 17")));
        assert_eq!(output.json["figures"]["node.epoch"], 4);
        assert_eq!(output.json["figures"]["node.role"], 1);
    }

    #[test]
    fn stats_render_as_a_table() {
        let stats = StatsReply {
            figures: vec![("shard.0.counters".into(), 12), ("node.connections".into(), 3)],
            split: vec![b"hot".to_vec()],
        };
        let output = stats_output(&stats);
        let lines: Vec<&str> = output.text.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[1].starts_with("shard.0.counters  "));
        assert!(lines[1].ends_with(" 12"));
        assert_eq!(lines[3], "split counters: hot");
        assert_eq!(output.json["figures"]["node.connections"], 3);
        assert_eq!(output.json["split"][0], "hot");
    }
}
