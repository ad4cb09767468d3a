//! `tallyd`: starts a node, prints one `ready` line on stdout per start, stops cleanly on
//! SIGINT/SIGTERM. A role change (a promotion, or a primary that learns it was replaced) stops the
//! node and starts it again from its data directory in the new role, in the same process.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tally_net::log::Level;
use tally_net::replication::state::PersistedRole;
use tally_net::system::{block_shutdown_signals, wait_for_signal};
use tally_net::{log, Config, Node};

/// How often the main thread looks for a stop request (a signal or a role change).
const STOP_POLL_MS: u64 = 20;

fn main() -> ExitCode {
    let config = Config::parse();
    // Block the signals before any executor thread exists, so only the signal thread sees them.
    block_shutdown_signals();
    let signalled = Arc::new(AtomicBool::new(false));
    std::thread::spawn({
        let signalled = signalled.clone();
        move || {
            let signal = wait_for_signal();
            log!(Level::Info, "signal {signal}: finishing in-flight requests");
            signalled.store(true, Ordering::Release);
            // A second signal during the drain exits at once.
            let signal = wait_for_signal();
            eprintln!("tallyd: signal {signal} during shutdown, exiting now");
            std::process::exit(1);
        }
    });
    let mut role_changed: Option<PersistedRole> = None;
    loop {
        let node = match Node::start_after(&config, role_changed.as_ref()) {
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
        while !node.stop_requested() && !signalled.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(STOP_POLL_MS));
        }
        let role_change = node.stop();
        if signalled.load(Ordering::Acquire) {
            break;
        }
        match role_change {
            Some(role) => {
                log!(Level::Info, "restarting as {role:?}");
                role_changed = Some(role);
            }
            None => break,
        }
    }
    log!(Level::Info, "stopped");
    ExitCode::SUCCESS
}
