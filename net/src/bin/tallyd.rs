//! `tallyd`: starts a node, prints one `ready` line on stdout, stops cleanly on SIGINT/SIGTERM.

use std::process::ExitCode;

use clap::Parser;
use tally_net::log::Level;
use tally_net::system::{block_shutdown_signals, wait_for_signal};
use tally_net::{log, Config, Node};

fn main() -> ExitCode {
    let config = Config::parse();
    // Block the signals before any executor thread exists, so only the main thread sees them.
    block_shutdown_signals();
    let node = match Node::start(&config) {
        Ok(node) => node,
        Err(error) => {
            eprintln!("tallyd: {error}");
            return ExitCode::FAILURE;
        }
    };
    let ports: Vec<String> = node.shard_ports.iter().map(u16::to_string).collect();
    // One machine-readable line: scripts and tests wait for it.
    println!(
        "tallyd ready listen={} shards={} shard_ports={} cpus={:?} io_memory_kib={} data_dir={}{}",
        node.listen,
        node.shards(),
        ports.join(","),
        node.cpus,
        node.io_memory_bytes / 1024,
        config.data_dir.display(),
        node.unix_socket
            .as_ref()
            .map(|p| format!(" unix={}", p.display()))
            .unwrap_or_default(),
    );
    let signal = wait_for_signal();
    log!(Level::Info, "signal {signal}: finishing in-flight requests");
    // A second signal during the drain exits at once.
    std::thread::spawn(|| {
        let signal = wait_for_signal();
        eprintln!("tallyd: signal {signal} during shutdown, exiting now");
        std::process::exit(1);
    });
    node.stop();
    log!(Level::Info, "stopped");
    ExitCode::SUCCESS
}
