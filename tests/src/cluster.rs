//! A replicated set of three real `tallyd` processes on loopback: a primary and two replicas,
//! each with `SHARDS` shards, on addresses chosen before any starts (they name each other on the
//! command line).
//!
//! Flags given (the node-side replication runtime's interface):
//! - the primary: `--replica R1 --replica R2 --ack-mode MODE --replication-wait-ms W`, where `Ri`
//!   is replica *i*'s main address, or the address of a `ProxySet` in front of it;
//! - replica *i*: `--replica-of P --replica R_other` (the fellow replica it fences when promoted and
//!   ships to afterwards), the same ack mode and wait, so that once promoted it behaves the same.
//!
//! Node *k* listens on `127.0.0.1:port_k` with its shards on `port_k + 1 + i` (tallyd's default
//! layout), which is also the layout a `ProxySet` mirrors. Every wait is a bounded poll.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tally_sdk::{Client, ClientOptions, Error, RetryPolicy};

use crate::ports::free_block;
use crate::proxy::ProxySet;
use crate::{wait_for, DataDir, Server};

/// Shards of every node in a set.
pub const SHARDS: u16 = 2;
/// How long a node may take to catch up or reconnect before a test fails.
pub const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);
/// Index of the initial primary in `Cluster::slots`; 1 and 2 are the replicas R1 and R2.
pub const PRIMARY: usize = 0;

/// `node.role` values in STATS.
pub const ROLE_PRIMARY: i64 = 0;
pub const ROLE_REPLICA: i64 = 1;
/// A restarting primary re-establishing its epoch (it serves as a replica meanwhile).
pub const ROLE_CANDIDATE: i64 = 2;

/// A node's place: its ports and data directory, which survive restarts of its process.
pub struct Slot {
    /// The main port; shard *i* is on `port + 1 + i`.
    pub port: u16,
    pub dir: DataDir,
}

impl Slot {
    /// A fresh directory and a free block of ports for `SHARDS` shards.
    pub fn new(tag: &str) -> Slot {
        Slot {
            port: free_block(SHARDS + 1),
            dir: DataDir::new(tag),
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn shard_ports(&self) -> Vec<u16> {
        (0..SHARDS).map(|i| self.port + 1 + i).collect()
    }
}

/// How a set is configured.
#[derive(Debug, Clone)]
pub struct Options {
    /// `local`, `quorum` or `all`.
    pub ack_mode: &'static str,
    pub replication_wait_ms: u32,
    /// Put a `ProxySet` in front of each replica; the primary reaches the replicas through them.
    pub proxied: bool,
    /// More flags for every node.
    pub extra: Vec<String>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            ack_mode: "quorum",
            replication_wait_ms: 2_000,
            proxied: false,
            extra: Vec::new(),
        }
    }
}

/// Three nodes: slot 0 starts as the primary, slots 1 and 2 as its replicas.
///
/// Fields drop in order: processes first, then proxies, then the directories.
pub struct Cluster {
    nodes: Vec<Option<Server>>,
    /// `proxies[i]` fronts slot `i` when `options.proxied` (None for the primary).
    pub proxies: Vec<Option<ProxySet>>,
    pub slots: Vec<Slot>,
    pub options: Options,
}

impl Cluster {
    /// Chooses addresses and directories and starts the replicas, then the primary. Returns once
    /// every process printed its ready line (not yet once replication is connected: see
    /// `wait_connected`).
    pub fn start(options: Options) -> Cluster {
        let slots: Vec<Slot> = ["primary", "r1", "r2"].into_iter().map(Slot::new).collect();
        let proxies = slots
            .iter()
            .enumerate()
            .map(|(i, slot)| (options.proxied && i != PRIMARY).then(|| ProxySet::start(slot.port, &slot.shard_ports())))
            .collect();
        let mut cluster = Cluster {
            options,
            slots,
            proxies,
            nodes: vec![None, None, None],
        };
        for i in [1, 2, PRIMARY] {
            cluster.start_node(i);
        }
        cluster
    }

    /// The address the primary is told for replica `i`: its proxy's, or its own.
    pub fn replica_addr_seen_by_primary(&self, i: usize) -> String {
        match &self.proxies[i] {
            Some(proxy) => proxy.addr().to_string(),
            None => self.slots[i].addr(),
        }
    }

    /// The flags node `i` starts with in its initial role.
    pub fn args(&self, i: usize) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "--listen".into(),
            self.slots[i].addr(),
            "--shards".into(),
            SHARDS.to_string(),
            // Keyed increments go to the owner anyway; no split keeps reads exact without FRESH.
            "--no-split".into(),
            "--ack-mode".into(),
            self.options.ack_mode.into(),
            "--replication-wait-ms".into(),
            self.options.replication_wait_ms.to_string(),
        ];
        if i == PRIMARY {
            for r in [1, 2] {
                args.extend(["--replica".into(), self.replica_addr_seen_by_primary(r)]);
            }
        } else {
            let other = 3 - i;
            args.extend(["--replica-of".into(), self.slots[PRIMARY].addr()]);
            args.extend(["--replica".into(), self.slots[other].addr()]);
        }
        args.extend(self.options.extra.iter().cloned());
        args
    }

    /// Starts node `i`'s process on its slot (its directory as it is: restarts keep their data).
    pub fn start_node(&mut self, i: usize) {
        assert!(self.nodes[i].is_none(), "node {i} is already running");
        let args = self.args(i);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let server = Server::start_in(self.slots[i].dir.0.clone(), &args);
        assert_eq!(
            server.addr,
            self.slots[i].addr(),
            "node {i} listens where its peers look"
        );
        assert_eq!(
            server.shard_ports,
            self.slots[i].shard_ports(),
            "node {i}'s shard layout"
        );
        self.nodes[i] = Some(server);
    }

    /// SIGKILL node `i`.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].take().expect("running").kill();
    }

    /// SIGTERM node `i` and check it exits cleanly.
    pub fn stop(&mut self, i: usize) {
        let code = self.nodes[i].take().expect("running").stop();
        assert_eq!(code, Some(0), "node {i} exit code");
    }

    /// Deletes node `i`'s data (the node must be down): it restarts empty.
    pub fn wipe(&mut self, i: usize) {
        assert!(self.nodes[i].is_none(), "wipe a running node");
        let dir: &Path = &self.slots[i].dir.0;
        std::fs::remove_dir_all(dir).expect("remove data dir");
        std::fs::create_dir_all(dir).expect("create data dir");
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].is_some()
    }

    pub fn addr(&self, i: usize) -> String {
        self.slots[i].addr()
    }

    pub fn proxy(&self, i: usize) -> &ProxySet {
        self.proxies[i].as_ref().expect("the set was started with proxies")
    }

    /// Waits until node `primary` reports every replica connected on every shard
    /// (`shard.N.repl.R.connected` = 1 for `replicas` values of R).
    pub fn wait_connected(&self, primary: usize, replicas: usize) {
        let addr = self.addr(primary);
        let want = usize::from(SHARDS) * replicas;
        wait_for(
            &format!("{addr} to have {want} replica streams connected"),
            CATCH_UP_TIMEOUT,
            || {
                let stats = stats(&addr).ok()?;
                let connected = repl_figures(&stats, "connected");
                (connected.len() >= want && connected.iter().filter(|(_, v)| *v == 1).count() >= want).then_some(())
            },
        );
    }

    /// Waits until node `primary` takes writes on every shard (`wait_writable_at`).
    pub fn wait_writable(&self, primary: usize) {
        wait_writable_at(&self.addr(primary), CATCH_UP_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    }

    /// `wait_connected` for both replicas, then `wait_writable`.
    pub fn wait_ready(&self, primary: usize) {
        self.wait_connected(primary, 2);
        self.wait_writable(primary);
    }

    /// Waits until node `i` reports `node.role` = `role` (a promoted node restarts in its new role
    /// after answering PROMOTE). Returns its `node.epoch`.
    pub fn wait_role(&self, i: usize, role: i64) -> i64 {
        let addr = self.addr(i);
        wait_for(&format!("{addr} to report node.role {role}"), CATCH_UP_TIMEOUT, || {
            let s = stats(&addr).ok()?;
            (s.get("node.role") == Some(&role)).then(|| s.get("node.epoch").copied().unwrap_or(-1))
        })
    }

    /// Waits until node `replica`'s `shard.N.lsn_durable` equals node `primary`'s for every shard,
    /// with the primary's figures read after the replica's (so a primary still being written keeps
    /// the wait going). Returns the lsns.
    pub fn wait_caught_up(&self, primary: usize, replica: usize) -> Vec<i64> {
        let (p, r) = (self.addr(primary), self.addr(replica));
        wait_for(&format!("{r} to catch up with {p}"), CATCH_UP_TIMEOUT, || {
            let replica_lsns = lsns_durable(&stats(&r).ok()?);
            let primary_lsns = lsns_durable(&stats(&p).ok()?);
            (replica_lsns == primary_lsns).then_some(primary_lsns)
        })
    }
}

/// Waits until the node at `addr` takes writes on every shard: a primary refuses them
/// (`not_primary`) until a replica has confirmed its epoch on that shard, which happens some time
/// after the stream's `connected` figure turns 1. Probes with one unkeyed increment of a `probe:`
/// counter per shard (names the tests never check). An error naming the shard and the last refusal
/// after `timeout`.
pub fn wait_writable_at(addr: &str, timeout: Duration) -> Result<(), String> {
    let mut connection: Option<Client> = None;
    for shard in 0..SHARDS {
        let probe = (0..)
            .map(|i| format!("probe:{i}"))
            .find(|name| tally_proto::shard_of(name.as_bytes(), SHARDS) == shard)
            .expect("some name hashes to every shard");
        let deadline = std::time::Instant::now() + timeout;
        let mut last = String::from("no attempt");
        loop {
            if connection.is_none() {
                match client(addr, Duration::from_secs(10)) {
                    Ok(c) => connection = Some(c),
                    Err(e) => last = format!("connect: {e}"),
                }
            }
            if let Some(c) = connection.as_mut() {
                match c.incr(&probe, 1) {
                    Ok(_) => break,
                    Err(e) => {
                        last = e.to_string();
                        if e.is_connection() {
                            connection = None;
                        }
                    }
                }
            }
            if std::time::Instant::now() >= deadline {
                return Err(format!(
                    "{addr} took no write on shard {shard} within {timeout:?}; last: {last}"
                ));
            }
            std::thread::sleep(crate::POLL_INTERVAL);
        }
    }
    Ok(())
}

/// A client for tests: no automatic retries (every outcome reaches the test), replies awaited
/// `reply_timeout` (which must exceed the replication wait).
pub fn client(addr: &str, reply_timeout: Duration) -> Result<Client, Error> {
    ClientOptions::new()
        .client_name("replication-test")
        .retry(RetryPolicy::none())
        .connect_timeout(Duration::from_secs(2))
        .read_timeout(Some(reply_timeout))
        .connect(addr)
}

/// STATS of the node at `addr`, as a map.
pub fn stats(addr: &str) -> Result<BTreeMap<String, i64>, Error> {
    let mut client = ClientOptions::new()
        .shard_aware(false)
        .retry(RetryPolicy::none())
        .connect_timeout(Duration::from_secs(2))
        .read_timeout(Some(Duration::from_secs(5)))
        .connect(addr)?;
    Ok(client.stats()?.figures.into_iter().collect())
}

/// `shard.N.lsn_durable` for N = 0, 1, ...; a missing shard reads -1.
pub fn lsns_durable(stats: &BTreeMap<String, i64>) -> Vec<i64> {
    (0..SHARDS)
        .map(|s| stats.get(&format!("shard.{s}.lsn_durable")).copied().unwrap_or(-1))
        .collect()
}

/// The figures `shard.N.repl.R.<suffix>`, by name.
pub fn repl_figures(stats: &BTreeMap<String, i64>, suffix: &str) -> Vec<(String, i64)> {
    stats
        .iter()
        .filter(|(name, _)| {
            let mut parts = name.split('.');
            parts.next() == Some("shard")
                && parts.next().is_some_and(|n| n.parse::<u16>().is_ok())
                && parts.next() == Some("repl")
                && parts.next().is_some()
                && parts.next() == Some(suffix)
                && parts.next().is_none()
        })
        .map(|(name, value)| (name.clone(), *value))
        .collect()
}

/// The figure `name`; panics naming the node if it is missing (the runtime must publish it).
pub fn figure(stats: &BTreeMap<String, i64>, name: &str, addr: &str) -> i64 {
    *stats
        .get(name)
        .unwrap_or_else(|| panic!("{addr}: STATS has no figure {name}; it has {:?}", stats.keys()))
}

/// Reads `names` on the node at `addr` (a replica serves reads too).
pub fn read_values(addr: &str, names: &[String]) -> Result<BTreeMap<String, i64>, Error> {
    let mut client = client(addr, Duration::from_secs(5))?;
    names.iter().map(|name| Ok((name.clone(), client.get(name)?))).collect()
}

/// Parses `127.0.0.1:P` into a socket address.
pub fn socket_addr(addr: &str) -> SocketAddr {
    addr.parse().unwrap_or_else(|e| panic!("{addr}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repl_figures_match_only_the_per_stream_names() {
        let stats: BTreeMap<String, i64> = [
            ("shard.0.repl.0.connected", 1),
            ("shard.1.repl.1.connected", 0),
            ("shard.0.repl.0.lag_lsns", 5),
            ("shard.0.connected", 1),
            ("node.repl.0.connected", 1),
            ("shard.x.repl.0.connected", 1),
            ("shard.0.repl.0.connected.total", 1),
        ]
        .into_iter()
        .map(|(n, v)| (n.to_string(), v))
        .collect();
        let connected = repl_figures(&stats, "connected");
        assert_eq!(
            connected,
            vec![
                ("shard.0.repl.0.connected".to_string(), 1),
                ("shard.1.repl.1.connected".to_string(), 0)
            ]
        );
        assert_eq!(repl_figures(&stats, "lag_lsns").len(), 1);
    }

    #[test]
    fn lsns_read_per_shard_and_mark_missing_ones() {
        let stats: BTreeMap<String, i64> = [("shard.0.lsn_durable".to_string(), 7)].into_iter().collect();
        assert_eq!(lsns_durable(&stats), vec![7, -1]);
    }

    #[test]
    fn nodes_name_each_other_in_their_flags() {
        // Built without starting processes: the flags alone.
        let slots: Vec<Slot> = ["p", "a", "b"].into_iter().map(Slot::new).collect();
        let cluster = Cluster {
            options: Options::default(),
            proxies: vec![None, None, None],
            nodes: vec![None, None, None],
            slots,
        };
        let joined = |i: usize| cluster.args(i).join(" ");
        let (p, r1, r2) = (cluster.addr(0), cluster.addr(1), cluster.addr(2));
        assert!(
            joined(0).contains(&format!("--replica {r1} --replica {r2}")),
            "{}",
            joined(0)
        );
        assert!(
            joined(1).contains(&format!("--replica-of {p} --replica {r2}")),
            "{}",
            joined(1)
        );
        assert!(
            joined(2).contains(&format!("--replica-of {p} --replica {r1}")),
            "{}",
            joined(2)
        );
        for i in 0..3 {
            assert!(joined(i).contains("--ack-mode quorum --replication-wait-ms 2000"));
            assert!(joined(i).contains(&format!("--listen {} --shards 2", cluster.addr(i))));
        }
        assert_eq!(
            cluster.slots[1].shard_ports(),
            vec![cluster.slots[1].port + 1, cluster.slots[1].port + 2]
        );
    }
}
