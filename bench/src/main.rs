//! `tally-bench`: parses the flags, runs the benchmark, prints the summary (or `--json`) and writes
//! the `--svg` plot. Exit status: 0 after a run, 1 if the run failed, 2 for bad flags.

use std::process::ExitCode;

use clap::Parser;
use tally_bench::machine::Machine;
use tally_bench::report::Report;
use tally_bench::{plot, run, Args};

fn main() -> ExitCode {
    let config = match Args::parse().validate() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("tally-bench: {error}");
            return ExitCode::from(2);
        }
    };
    let machine = Machine::probe();
    let result = match run::run(&config) {
        Ok(result) => result,
        Err(error) => {
            eprintln!("tally-bench: {error}");
            return ExitCode::FAILURE;
        }
    };
    let report = Report {
        config: &config,
        result: &result,
        machine: &machine,
        command: std::env::args().collect::<Vec<_>>().join(" "),
    };
    if config.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.human());
    }
    if let Some(path) = &config.svg {
        let title = format!(
            "{} {} conns x pipeline {} x batch {}, {}",
            config.target.name(),
            config.connections,
            config.pipeline,
            config.batch,
            config.mix.label()
        );
        if let Err(error) = plot::write_svg(path, &result.recorder, &title) {
            eprintln!("tally-bench: {error}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
