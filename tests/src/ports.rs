//! Blocks of consecutive free loopback ports, for tests that must know a node's address before it
//! starts (replicas and primaries name each other on the command line).
//!
//! A node started with `--listen 127.0.0.1:B` puts shard *i* on `B + 1 + i`, so a node of `s`
//! shards needs a block of `s + 1` consecutive ports. Blocks come from below the kernel's ephemeral
//! range, so that the local ports of outgoing connections (which the kernel takes from that range)
//! never land on a port a test is about to hand to a node. Each block is checked by binding every
//! port in it, and a block is never handed out twice by one test process.

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::Mutex;

/// Lowest port handed out: above the registered services tests might meet on a developer machine.
const PORT_MIN: u16 = 20_000;
/// Used when /proc does not say where the ephemeral range starts (Linux's default start).
const EPHEMERAL_FIRST_DEFAULT: u16 = 32_768;
/// How many candidate blocks to try before failing the test.
const ATTEMPTS_MAX: usize = 2_000;

/// Ports this process already handed out.
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// The first port of the kernel's ephemeral range.
fn ephemeral_first() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(EPHEMERAL_FIRST_DEFAULT)
}

/// `count` consecutive ports on 127.0.0.1 that were all free a moment ago and that this process
/// has not handed out before. Returns the first. Panics if none is found.
pub fn free_block(count: u16) -> u16 {
    assert!(count >= 1);
    let high = ephemeral_first().max(PORT_MIN + 1_000);
    let span = high - PORT_MIN - count;
    // Different test processes start their search in different places, so that two of them racing
    // for a block seldom try the same ports.
    let mut candidate = PORT_MIN + (std::process::id() as u16).wrapping_mul(7919) % span;
    let mut handed_out = HANDED_OUT.lock().unwrap();
    let handed_out = handed_out.get_or_insert_with(HashSet::new);
    for _ in 0..ATTEMPTS_MAX {
        let ports = candidate..candidate + count;
        let unused = ports.clone().all(|p| !handed_out.contains(&p));
        // Hold every listener until all are bound, so the check covers the whole block at once.
        if unused {
            let listeners: Result<Vec<TcpListener>, _> = ports
                .clone()
                .map(|p| TcpListener::bind((Ipv4Addr::LOCALHOST, p)))
                .collect();
            if listeners.is_ok() {
                handed_out.extend(ports);
                return candidate;
            }
        }
        candidate += count;
        if candidate + count >= high {
            candidate = PORT_MIN;
        }
    }
    panic!("no block of {count} free consecutive ports below {high} after {ATTEMPTS_MAX} tries");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_free_disjoint_and_below_the_ephemeral_range() {
        let a = free_block(3);
        let b = free_block(3);
        assert!(a + 3 <= b || b + 3 <= a, "blocks {a} and {b} overlap");
        for port in [a, a + 1, a + 2, b, b + 2] {
            assert!(port < ephemeral_first());
            // Free: binding works (and is released at once).
            TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
        }
    }

    #[test]
    fn a_busy_port_is_skipped() {
        let first = free_block(1);
        // Occupy the next candidate ports; the next block must not include any held port.
        let held: Vec<TcpListener> = (first + 1..first + 4)
            .filter_map(|p| TcpListener::bind((Ipv4Addr::LOCALHOST, p)).ok())
            .collect();
        let held_ports: Vec<u16> = held.iter().map(|l| l.local_addr().unwrap().port()).collect();
        let block = free_block(2);
        for port in [block, block + 1] {
            assert!(!held_ports.contains(&port), "{port} is held by this test");
        }
    }
}
