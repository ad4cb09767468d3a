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
use tally_sdk::{key_from_str, Client, ClientOptions, CounterSpec, Error, ErrorCode, StatsReply};

/// Exit code when the server (or the client, with the server's code) refused the op.
const EXIT_REFUSED: u8 = 1;
/// Exit code for connection, timeout and protocol errors. Usage errors exit with clap's 2.
const EXIT_CONNECTION: u8 = 3;
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
            ExitCode::SUCCESS
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
            }
        }
        Command::Stats => stats_output(&client.stats()?),
        Command::Admin(Admin::Promote { force, wait_ms }) => {
            let epoch = client.promote(*force, *wait_ms)?;
            Output {
                text: format!("primary at epoch {epoch}"),
                json: json!({ "promoted": true, "epoch": epoch, "force": force }),
            }
        }
    })
}

/// How long to wait for a reply. A promotion may legitimately wait `wait_ms` for its peers before
/// it answers, so its reply gets `--timeout` on top of that.
fn reply_timeout(command: &Command, timeout: Duration) -> Duration {
    match command {
        Command::Admin(Admin::Promote { wait_ms, .. }) => timeout + Duration::from_millis(u64::from(*wait_ms)),
        _ => timeout,
    }
}

fn write_output(value: i64, token: tally_sdk::Token) -> Output {
    Output {
        text: value.to_string(),
        json: json!({ "value": value, "shard": token.shard, "lsn": token.lsn }),
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
