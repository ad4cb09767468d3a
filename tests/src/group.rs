//! A replication group of three real `tallyd` processes on loopback in which every path goes
//! through a fault proxy, and whose nodes restart with the flags their `DATA_DIR/node` calls for.
//!
//! - **Links.** For every ordered pair (from, to) a `ProxySet` fronts node `to` for node `from`
//!   only: `from`'s `--replica` and `--replica-of` flags name `link_addr(from, to)`, so cutting
//!   that link closes and refuses exactly the connections `from` opens to `to` (both directions of
//!   their bytes). A primary opens the shipping connections, so `cut(p, r)` stops p shipping to r,
//!   and `cut(r, p)` stops r's fences and probes reaching p.
//! - **Clients.** A `ProxySet` in front of each node for clients (`client_addr`); clients through
//!   it must not be shard-aware (`client_via_proxy`), since a shard-aware client would connect to
//!   the shard ports the node reports, past the proxy.
//! - **Restarts.** `args(i)` reads node i's `DATA_DIR/node`: `role primary` → `--replica L(i,j)
//!   --replica L(i,k)`; `role replica P` → `--replica-of L(i,p) --replica L(i,k)`, where p is the
//!   node P belongs to (its own address or one of its proxies) and k the third node; no role yet →
//!   its initial flags (node 0 the primary, `--replica-of L(i,0)` on the others). tallyd refuses a
//!   flag that contradicts the file's role (primary against replica) but takes another address of
//!   the same role ("the file takes the flag's address", `reconcile_role` in net/src/node.rs), so a
//!   replica whose file holds its primary's own listen address (learnt from that primary) is still
//!   started through the link's proxy. One path escapes the proxies: a node that steps down in
//!   process follows the address its new primary announced (its listen address) until its next
//!   restart.
//! - **Logs.** Each node's stderr is appended to its own log file, with a `==== harness:` line
//!   before each thing the harness does to it; `log_tails` quotes them when a test fails. The log
//!   directory is kept (and its path printed) when the test panics.
//!
//! Fields drop in order: processes first (a paused one too: SIGKILL ends it), proxies, directories.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tally_sdk::{Client, ClientOptions, Error, RetryPolicy};

use crate::cluster::{lsns_durable, stats, Slot, CATCH_UP_TIMEOUT, ROLE_PRIMARY, SHARDS};
use crate::faults::{promotion_candidate, Fault, Faults, NODES};
use crate::proxy::ProxySet;
use crate::{fresh_dir, log_tail, Launch, Server};

/// Lines of each node's log quoted by `log_tails`.
pub const GROUP_LOG_TAIL_LINES: usize = 60;
/// How long a promotion may wait for its peers (`PROMOTE`'s `wait_ms`).
pub const PROMOTE_WAIT_MS: u32 = 5_000;

/// How a group is configured.
#[derive(Debug, Clone)]
pub struct GroupOptions {
    /// `local`, `quorum` or `all`.
    pub ack_mode: &'static str,
    pub replication_wait_ms: u32,
    /// `--log-level` of every node (`info` shows epochs, promotions and step-downs).
    pub log_level: &'static str,
    /// More flags for every node.
    pub extra: Vec<String>,
}

impl Default for GroupOptions {
    fn default() -> GroupOptions {
        GroupOptions {
            ack_mode: "quorum",
            replication_wait_ms: 1_000,
            log_level: "info",
            extra: Vec::new(),
        }
    }
}

/// The role a node file records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileRole {
    /// No node file, or one without a role line yet.
    Unset,
    Primary,
    Replica {
        primary: String,
    },
}

/// Parses the text of a `DATA_DIR/node` file (`id HEX`, `role primary` or `role replica ADDR`).
pub fn parse_node_file(text: &str) -> Result<FileRole, String> {
    let mut role = FileRole::Unset;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        match line.split_whitespace().collect::<Vec<_>>().as_slice() {
            ["id", _] => {}
            ["role", "primary"] => role = FileRole::Primary,
            ["role", "replica", primary] => {
                role = FileRole::Replica {
                    primary: (*primary).to_string(),
                }
            }
            _ => return Err(format!("node file line {line:?} is neither `id` nor `role`")),
        }
    }
    Ok(role)
}

/// A directory of node logs: removed when dropped, unless the thread is panicking (then kept, and
/// its path printed, for the post-mortem).
struct LogDir(PathBuf);

impl Drop for LogDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("node logs kept in {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Three nodes behind proxies. See the module documentation.
pub struct Group {
    nodes: Vec<Option<Server>>,
    paused: [bool; NODES],
    /// `links[from][to]`, `None` when from == to.
    links: Vec<Vec<Option<ProxySet>>>,
    clients: Vec<ProxySet>,
    pub slots: Vec<Slot>,
    logs: LogDir,
    pub options: GroupOptions,
    started: Instant,
}

impl Group {
    /// Chooses addresses, starts every proxy, then the replicas (nodes 1 and 2) and the primary
    /// (node 0). Returns once each printed its ready line (see `wait_ready`).
    pub fn start(options: GroupOptions) -> Group {
        let slots: Vec<Slot> = ["n0", "n1", "n2"].into_iter().map(Slot::new).collect();
        let links = (0..NODES)
            .map(|from| {
                (0..NODES)
                    .map(|to| (from != to).then(|| ProxySet::start(slots[to].port, &slots[to].shard_ports())))
                    .collect()
            })
            .collect();
        let clients = slots
            .iter()
            .map(|slot| ProxySet::start(slot.port, &slot.shard_ports()))
            .collect();
        let mut group = Group {
            nodes: (0..NODES).map(|_| None).collect(),
            paused: [false; NODES],
            links,
            clients,
            slots,
            logs: LogDir(fresh_dir("logs")),
            options,
            started: Instant::now(),
        };
        for node in [1, 2, 0] {
            group.start_node(node).unwrap_or_else(|e| panic!("{e}"));
        }
        group
    }

    /// Node `i`'s own main address.
    pub fn addr(&self, i: usize) -> String {
        self.slots[i].addr()
    }

    /// The address `from` is told for `to`: the proxy of that one link.
    pub fn link_addr(&self, from: usize, to: usize) -> String {
        self.link(from, to).addr().to_string()
    }

    pub fn link(&self, from: usize, to: usize) -> &ProxySet {
        self.links[from][to].as_ref().expect("a link joins two different nodes")
    }

    /// Where clients reach node `i`.
    pub fn client_addr(&self, i: usize) -> String {
        self.clients[i].addr().to_string()
    }

    pub fn client_proxy(&self, i: usize) -> &ProxySet {
        &self.clients[i]
    }

    /// Which node an address belongs to: its own, one of its link proxies, or its client proxy.
    pub fn node_of_addr(&self, addr: &str) -> Option<usize> {
        (0..NODES).find(|&n| {
            self.addr(n) == addr
                || self.client_addr(n) == addr
                || (0..NODES).any(|from| from != n && self.link_addr(from, n) == addr)
        })
    }

    /// The role node `i`'s `DATA_DIR/node` records.
    pub fn file_role(&self, i: usize) -> Result<FileRole, String> {
        let path = self.slots[i].dir.0.join("node");
        match std::fs::read_to_string(&path) {
            Ok(text) => parse_node_file(&text).map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(FileRole::Unset),
            Err(e) => Err(format!("read {}: {e}", path.display())),
        }
    }

    /// Flags every node gets, before its role's.
    fn common_args(&self, i: usize) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "--listen".into(),
            self.addr(i),
            "--shards".into(),
            SHARDS.to_string(),
            "--no-split".into(),
            "--ack-mode".into(),
            self.options.ack_mode.into(),
            "--replication-wait-ms".into(),
            self.options.replication_wait_ms.to_string(),
        ];
        args.extend(self.options.extra.iter().cloned());
        args
    }

    /// The flags of a primary at node `i`: its two links.
    pub fn primary_args(&self, i: usize) -> Vec<String> {
        let mut args = self.common_args(i);
        for to in (0..NODES).filter(|&to| to != i) {
            args.extend(["--replica".into(), self.link_addr(i, to)]);
        }
        args
    }

    /// The flags of node `i` as a replica of node `p`: both peers through their links.
    pub fn replica_args(&self, i: usize, p: usize) -> Vec<String> {
        assert!(p != i, "node {i} cannot follow itself");
        let other = (0..NODES).find(|&n| n != i && n != p).expect("a third node");
        let mut args = self.common_args(i);
        args.extend(["--replica-of".into(), self.link_addr(i, p)]);
        args.extend(["--replica".into(), self.link_addr(i, other)]);
        args
    }

    /// The flags node `i` starts with now: those its node file calls for (module documentation).
    pub fn args(&self, i: usize) -> Result<Vec<String>, String> {
        match self.file_role(i)? {
            FileRole::Unset if i == 0 => Ok(self.primary_args(i)),
            FileRole::Unset => Ok(self.replica_args(i, 0)),
            FileRole::Primary => Ok(self.primary_args(i)),
            FileRole::Replica { primary } => {
                let p = self
                    .node_of_addr(&primary)
                    .ok_or_else(|| format!("node {i}'s file names primary {primary}, which is no node of the group"))?;
                if p == i {
                    return Err(format!("node {i}'s file names itself ({primary}) as its primary"));
                }
                Ok(self.replica_args(i, p))
            }
        }
    }

    /// Starts node `i` on its directory with the flags of `args(i)`.
    pub fn start_node(&mut self, i: usize) -> Result<(), String> {
        let args = self.args(i)?;
        self.start_node_with(i, &args)
    }

    /// Starts node `i` on its directory with exactly `args`. An error with the log's end if it
    /// exits or prints no ready line.
    pub fn start_node_with(&mut self, i: usize, args: &[String]) -> Result<(), String> {
        assert!(self.nodes[i].is_none(), "node {i} is already running");
        self.note(i, &format!("start: tallyd {}", args.join(" ")));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let log = self.log_path(i);
        let server = Server::launch(&Launch {
            data_dir: self.slots[i].dir.0.clone(),
            extra: &args,
            log_level: self.options.log_level,
            log: Some(&log),
            ..Launch::default()
        })
        .map_err(|e| format!("node {i}: {e}"))?;
        if server.addr != self.addr(i) || server.shard_ports != self.slots[i].shard_ports() {
            return Err(format!(
                "node {i} listens on {} shards {:?}, not where its peers look ({} shards {:?})",
                server.addr,
                server.shard_ports,
                self.addr(i),
                self.slots[i].shard_ports()
            ));
        }
        self.nodes[i] = Some(server);
        self.paused[i] = false;
        Ok(())
    }

    /// SIGKILL (a paused node too).
    pub fn kill(&mut self, i: usize) {
        self.note(i, "SIGKILL");
        self.nodes[i].take().expect("running").kill();
        self.paused[i] = false;
    }

    pub fn pause(&mut self, i: usize) {
        assert!(!self.paused[i], "node {i} is already paused");
        self.note(i, "SIGSTOP");
        self.nodes[i].as_ref().expect("running").pause();
        self.paused[i] = true;
    }

    pub fn resume(&mut self, i: usize) {
        assert!(self.paused[i], "node {i} is not paused");
        self.note(i, "SIGCONT");
        self.nodes[i].as_ref().expect("running").resume();
        self.paused[i] = false;
    }

    pub fn cut(&self, from: usize, to: usize) {
        self.note(from, &format!("cut link {from} -> {to}"));
        self.note(to, &format!("cut link {from} -> {to}"));
        self.link(from, to).cut();
    }

    pub fn heal(&self, from: usize, to: usize) {
        self.note(from, &format!("heal link {from} -> {to}"));
        self.note(to, &format!("heal link {from} -> {to}"));
        self.link(from, to).heal();
    }

    /// Cuts every link to and from node `i`.
    pub fn isolate(&self, i: usize) {
        for other in (0..NODES).filter(|&o| o != i) {
            self.cut(i, other);
            self.cut(other, i);
        }
    }

    /// Heals every link between nodes.
    pub fn heal_links(&self) {
        for from in 0..NODES {
            for to in (0..NODES).filter(|&to| to != from) {
                self.link(from, to).heal();
            }
        }
    }

    /// `thread_dump` of node `i`'s process (a note when it is not running).
    pub fn thread_dump(&self, i: usize) -> String {
        match &self.nodes[i] {
            Some(server) => crate::thread_dump(server.pid()),
            None => format!("node {i} is not running"),
        }
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].is_some()
    }

    pub fn is_paused(&self, i: usize) -> bool {
        self.paused[i]
    }

    /// Nodes whose process ended without the harness killing it, with their exit status.
    pub fn exited(&mut self) -> Vec<(usize, std::process::ExitStatus)> {
        let mut out = Vec::new();
        for i in 0..NODES {
            if let Some(server) = self.nodes[i].as_mut() {
                if let Some(status) = server.exit_status() {
                    out.push((i, status));
                }
            }
        }
        out
    }

    /// Applies a schedule step to the processes and proxies. `Promote` is the runner's (it needs
    /// STATS: `promote_by_operator`).
    pub fn apply(&mut self, fault: Fault) -> Result<(), String> {
        match fault {
            Fault::Cut { from, to } => self.cut(from, to),
            Fault::Heal { from, to } => self.heal(from, to),
            Fault::Isolate(i) => self.isolate(i),
            Fault::CutClient(i) => {
                self.note(i, "cut clients");
                self.clients[i].cut();
            }
            Fault::HealClient(i) => {
                self.note(i, "heal clients");
                self.clients[i].heal();
            }
            Fault::Pause(i) => self.pause(i),
            Fault::Resume(i) => self.resume(i),
            Fault::Kill(i) => self.kill(i),
            Fault::Restart(i) => self.start_node(i)?,
            Fault::Promote => return Err("Promote is applied with promote_by_operator".into()),
        }
        Ok(())
    }

    /// What an operator does when the primary is lost: read STATS of the healthy replicas, promote
    /// the one with the highest durable lsns (`promotion_candidate`), wait until it serves as
    /// primary. Returns the node and its epoch.
    pub fn promote_by_operator(&self, faults: &Faults) -> Result<(usize, u64), String> {
        let durable: Vec<(usize, Vec<i64>)> = (0..NODES)
            .filter(|&n| faults.is_promotable(n))
            .filter_map(|n| stats(&self.addr(n)).ok().map(|s| (n, lsns_durable(&s))))
            .collect();
        let node = promotion_candidate(faults, &durable)
            .ok_or_else(|| format!("no healthy replica answers STATS to be promoted ({durable:?})"))?;
        let epoch = self.promote(node)?;
        Ok((node, epoch))
    }

    /// Sends PROMOTE to node `i` (no force) and waits until it reports `node.role` primary.
    pub fn promote(&self, i: usize) -> Result<u64, String> {
        self.note(i, "PROMOTE");
        let timeout = Duration::from_millis(u64::from(PROMOTE_WAIT_MS)) + Duration::from_secs(10);
        let epoch = crate::cluster::client(&self.addr(i), timeout)
            .and_then(|mut c| c.promote(false, PROMOTE_WAIT_MS))
            .map_err(|e| format!("PROMOTE on node {i}: {e}"))?;
        self.note(i, &format!("PROMOTE answered epoch {epoch}"));
        let deadline = Instant::now() + CATCH_UP_TIMEOUT;
        loop {
            if let Ok(s) = stats(&self.addr(i)) {
                if s.get("node.role") == Some(&ROLE_PRIMARY) {
                    return Ok(epoch);
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "node {i} answered PROMOTE (epoch {epoch}) but did not report node.role primary within {CATCH_UP_TIMEOUT:?}; {}",
                    self.thread_dump(i)
                ));
            }
            std::thread::sleep(crate::POLL_INTERVAL);
        }
    }

    pub fn log_path(&self, i: usize) -> PathBuf {
        self.logs.0.join(format!("n{i}.log"))
    }

    pub fn log_dir(&self) -> &Path {
        &self.logs.0
    }

    /// Appends a `==== harness:` line (with the time since the group started) to node `i`'s log.
    pub fn note(&self, i: usize, what: &str) {
        let path = self.log_path(i);
        if let Ok(mut file) = OpenOptions::new().create(true).append(true).open(&path) {
            let _ = writeln!(
                file,
                "==== harness +{:.3}s: node {i}: {what}",
                self.started.elapsed().as_secs_f64()
            );
        }
    }

    /// The last `GROUP_LOG_TAIL_LINES` lines of every node's log, for a failure message.
    pub fn log_tails(&self) -> String {
        (0..NODES)
            .map(|i| {
                format!(
                    "---- node {i} ({}), {}:\n{}",
                    self.addr(i),
                    self.log_path(i).display(),
                    log_tail(&self.log_path(i), GROUP_LOG_TAIL_LINES)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Lines of node `i`'s log that contain any of `needles`.
    pub fn log_lines_with(&self, i: usize, needles: &[&str]) -> Vec<String> {
        std::fs::read(self.log_path(i))
            .map(|bytes| {
                String::from_utf8_lossy(&bytes)
                    .lines()
                    .filter(|l| needles.iter().any(|n| l.contains(n)))
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A client through a client proxy: not shard-aware (every request on the proxied main port), no
/// automatic retries, replies awaited `reply_timeout`.
pub fn client_via_proxy(addr: &str, reply_timeout: Duration) -> Result<Client, Error> {
    ClientOptions::new()
        .client_name("partition-test")
        .shard_aware(false)
        .retry(RetryPolicy::none())
        .connect_timeout(Duration::from_secs(1))
        .read_timeout(Some(reply_timeout))
        .connect(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_files_parse_to_their_role() {
        assert_eq!(parse_node_file("id 00ff\n").unwrap(), FileRole::Unset);
        assert_eq!(parse_node_file("id 00ff\nrole primary\n").unwrap(), FileRole::Primary);
        assert_eq!(
            parse_node_file("id 1\nrole replica 127.0.0.1:2000\n").unwrap(),
            FileRole::Replica {
                primary: "127.0.0.1:2000".into()
            }
        );
        assert!(parse_node_file("id 1\nrole boss\n").is_err());
        assert!(parse_node_file("role replica\n").is_err());
    }
}
