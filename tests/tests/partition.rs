//! The randomized fault test of issue 11: under keyed load, random partitions, pauses, kills,
//! restarts and operator promotions, with at most one node lost at a time; after every iteration
//! the group must converge and keep every acknowledged increment.
//!
//! Three real `tallyd` (`--ack-mode quorum`, 2 shards) in a `tally_tests::group::Group`: a proxy on
//! every ordered link between nodes and one in front of each node for the clients. `THREADS`
//! client threads send keyed increments of `NAMES` counters through the client proxies, to the
//! node the operator believes is primary (others on a refusal or a broken connection); every
//! attempt is recorded, and a key whose outcome is unknown is resent, same key, until acknowledged
//! or the iteration ends. A refused key (`not_primary` and the like: not applied) is resent too,
//! except every odd key, which is dropped: if a refusal was sent for a write that was in fact
//! applied, that counter reads above the rule's upper bound.
//!
//! Each iteration applies `STEPS` steps of the pure schedule in `tally_tests::faults` (cut or heal
//! one ordered link, isolate a node, cut or heal a client link, SIGSTOP/SIGCONT, SIGKILL and restart
//! with the flags the node's `DATA_DIR/node` calls for, and the operator's promotion of the
//! replica with the highest durable lsns once the primary has been unavailable for a while), each
//! held a random 0.2–1.2 s. Then: the load stops, every fault is lifted, there must be exactly one
//! primary taking writes (the operator promotes one if none appears), every node must reach the
//! same durable lsns and read identical values within `CONVERGE_TIMEOUT`, and the counter rule
//! (`tally_tests::jepsen`) must hold over every attempt so far, on every node.
//!
//! `TALLY_PARTITION_ITERATIONS` (default `ITERATIONS_DEFAULT`, about a minute on a loaded 2-core
//! machine) and `TALLY_PARTITION_SEED` (printed; set it to replay a failure's schedule). A long
//! run:
//!
//! ```sh
//! cargo build -p tally-net
//! TALLY_PARTITION_ITERATIONS=50 cargo test -p tally-tests --test partition -- --nocapture
//! ```
//!
//! A failure names the seed, the iteration, the steps applied and each node's log lines about
//! epochs, roles and snapshots; the full logs are kept (their directory is printed).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tally_sdk::Client;
use tally_tests::cluster::{lsns_durable, stats, wait_writable_at, ROLE_PRIMARY, ROLE_REPLICA};
use tally_tests::faults::{next_step, promotion_candidate, Fault, Faults, Rng, NODES};
use tally_tests::group::{client_via_proxy, Group, GroupOptions};
use tally_tests::jepsen::{check, Attempt, Outcome};

/// Client threads.
const THREADS: usize = 4;
/// Counters the load spreads over (both shards get some).
const NAMES: usize = 8;
/// Iterations when `TALLY_PARTITION_ITERATIONS` is not set: the test stays within two minutes on
/// a loaded 2-core machine.
const ITERATIONS_DEFAULT: u64 = 8;
/// Schedule steps per iteration.
const STEPS: usize = 6;
/// The nodes' bounded wait for replica acks.
const REPLICATION_WAIT_MS: u32 = 1_000;
/// A client's reply timeout: above the replication wait, so a write that cannot replicate is
/// answered `replicas_unavailable`; a paused node costs this much per attempt.
const REPLY_TIMEOUT: Duration = Duration::from_secs(3);
/// A client's pause after a refusal or a broken connection before its next attempt.
const RETRY_BACKOFF: Duration = Duration::from_millis(20);
/// From the end of an iteration's faults to one writable primary and identical nodes, at most.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(45);
/// With every fault lifted and no node primary for this long, the operator promotes one.
const NO_PRIMARY_GRACE: Duration = Duration::from_secs(5);
/// Log lines quoted from each node when the test fails.
const FAILURE_LOG_LINES: usize = 40;

/// What the client threads share with the test.
struct Load {
    stop: AtomicBool,
    /// The node the operator believes is primary: where a client sends first.
    primary: AtomicUsize,
    acked: AtomicU64,
    unknown: AtomicU64,
}

fn names() -> Vec<String> {
    (0..NAMES).map(|i| format!("part:{i}")).collect()
}

/// One client thread: keyed increments until `stop`, each key resent until acknowledged. Returns
/// every attempt.
fn client_thread(addrs: Vec<String>, thread: usize, iteration: u64, load: Arc<Load>) -> Vec<Attempt> {
    let names = names();
    let mut history = Vec::new();
    let mut connections: Vec<Option<Client>> = (0..NODES).map(|_| None).collect();
    let mut believed = load.primary.load(Ordering::Acquire);
    let mut target = believed;
    let mut pending: Option<(String, u128)> = None;
    let mut seq = 0u64;
    while !load.stop.load(Ordering::Acquire) {
        let primary = load.primary.load(Ordering::Acquire);
        if primary != believed {
            (believed, target) = (primary, primary);
        }
        let (name, key) = pending.take().unwrap_or_else(|| {
            seq += 1;
            let key = (1u128 << 127) | (u128::from(iteration) << 80) | ((thread as u128) << 64) | u128::from(seq);
            (names[(seq as usize + thread) % NAMES].clone(), key)
        });
        if connections[target].is_none() {
            connections[target] = client_via_proxy(&addrs[target], REPLY_TIMEOUT).ok();
        }
        let Some(connection) = connections[target].as_mut() else {
            pending = Some((name, key));
            target = (target + 1) % NODES;
            std::thread::sleep(RETRY_BACKOFF);
            continue;
        };
        let result = connection.incr_detailed(&name, 1, Some(key));
        let outcome = Outcome::of(&result, |ack| ack.duplicate);
        history.push(Attempt {
            name: name.clone(),
            key,
            delta: 1,
            outcome,
        });
        match outcome {
            Outcome::Acked { .. } => {
                load.acked.fetch_add(1, Ordering::AcqRel);
            }
            Outcome::Unknown | Outcome::Failed(_) => {
                if outcome == Outcome::Unknown {
                    load.unknown.fetch_add(1, Ordering::AcqRel);
                }
                if result.as_ref().is_err_and(|e| e.is_connection()) {
                    connections[target] = None;
                }
                // A refusal means "not applied": half the refused keys are never sent again, so
                // a refusal of a write that was applied shows as a count above the rule's upper
                // bound. Unknown outcomes are always resent.
                let abandon = matches!(outcome, Outcome::Failed(_)) && key & 1 == 1;
                if !abandon {
                    pending = Some((name, key));
                }
                target = (target + 1) % NODES;
                std::thread::sleep(RETRY_BACKOFF);
            }
        }
    }
    history
}

/// The test's state across iterations, and how it reports a failure.
struct Run {
    group: Group,
    faults: Faults,
    rng: Rng,
    seed: u64,
    iteration: u64,
    history: Vec<Attempt>,
    /// The steps of the current iteration, as applied (with what came of promotions).
    steps: Vec<String>,
}

impl Run {
    /// Panics with everything needed to understand and replay the failure.
    fn fail(&self, what: &str) -> ! {
        let mut logs = String::new();
        for node in 0..NODES {
            let lines = self.group.log_lines_with(
                node,
                &[
                    "==== harness",
                    "epoch",
                    "primary",
                    "snapshot",
                    "restarting",
                    "promot",
                    "error",
                    "refus",
                    "lost",
                ],
            );
            let from = lines.len().saturating_sub(FAILURE_LOG_LINES);
            logs.push_str(&format!(
                "---- node {node} ({}), the last {} lines about epochs, roles and snapshots of {}:\n{}\n",
                self.group.addr(node),
                lines.len() - from,
                self.group.log_path(node).display(),
                lines[from..].join("\n")
            ));
        }
        // A running node that does not answer STATS is stuck: say on what.
        for node in 0..NODES {
            if self.group.is_running(node) && !self.group.is_paused(node) && stats(&self.group.addr(node)).is_err() {
                logs.push_str(&format!(
                    "---- node {node} does not answer STATS; {}\n",
                    self.group.thread_dump(node)
                ));
            }
        }
        panic!(
            "TALLY_PARTITION_SEED={} iteration {}: {what}\nsteps of this iteration: {:?}\nfull logs in {}\n{logs}",
            self.seed,
            self.iteration,
            self.steps,
            self.group.log_dir().display()
        );
    }

    /// Applies one schedule step to the group (the operator's promotion included).
    fn apply(&mut self, fault: Fault, load: &Load) {
        if fault == Fault::Promote {
            match self.group.promote_by_operator(&self.faults) {
                Ok((node, epoch)) => {
                    self.faults.promoted(node);
                    load.primary.store(node, Ordering::Release);
                    self.steps.push(format!("Promote -> node {node} epoch {epoch}"));
                }
                // Not a verdict by itself: the end of the iteration checks there is one primary.
                Err(e) => self.steps.push(format!("Promote failed: {e}")),
            }
            return;
        }
        self.steps.push(format!("{fault:?}"));
        if let Err(e) = self.group.apply(fault) {
            self.fail(&format!("{fault:?}: {e}"));
        }
        self.faults.apply(fault);
    }

    /// STATS `node.role` of every node (`None`: no answer).
    fn roles(&self) -> Vec<Option<i64>> {
        (0..NODES)
            .map(|n| {
                stats(&self.group.addr(n))
                    .ok()
                    .and_then(|s| s.get("node.role").copied())
            })
            .collect()
    }

    /// Waits until exactly one node reports primary, the others replica, and the primary takes
    /// writes; promotes (as an operator would) when no node is primary for `NO_PRIMARY_GRACE`.
    fn one_primary(&mut self, deadline: Instant) -> usize {
        let mut no_primary_since: Option<Instant> = None;
        loop {
            let roles = self.roles();
            let primaries: Vec<usize> = (0..NODES).filter(|&n| roles[n] == Some(ROLE_PRIMARY)).collect();
            let replicas = roles.iter().filter(|&&r| r == Some(ROLE_REPLICA)).count();
            if primaries.len() == 1 && replicas == NODES - 1 {
                let p = primaries[0];
                if wait_writable_at(&self.group.addr(p), Duration::from_secs(2)).is_ok() {
                    return p;
                }
            }
            if primaries.is_empty() && replicas == NODES {
                let since = *no_primary_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= NO_PRIMARY_GRACE {
                    let durable: Vec<(usize, Vec<i64>)> = (0..NODES)
                        .filter_map(|n| stats(&self.group.addr(n)).ok().map(|s| (n, lsns_durable(&s))))
                        .collect();
                    let quiet = Faults {
                        primary: None,
                        ..Faults::default()
                    };
                    if let Some(node) = promotion_candidate(&quiet, &durable) {
                        let outcome = self.group.promote(node);
                        self.steps
                            .push(format!("no primary after healing: Promote node {node}: {outcome:?}"));
                    }
                    no_primary_since = None;
                }
            } else {
                no_primary_since = None;
            }
            if Instant::now() >= deadline {
                self.fail(&format!(
                    "no single writable primary within {CONVERGE_TIMEOUT:?} of healing: node.role per node {roles:?} (0 primary, 1 replica, 2 candidate re-establishing its epoch)"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Resends the key to `node` until acknowledged.
    fn write_until_acked(&mut self, node: usize, name: &str, key: u128, deadline: Instant) {
        let addr = self.group.addr(node);
        loop {
            let result = tally_tests::cluster::client(&addr, REPLY_TIMEOUT)
                .and_then(|mut c| c.incr_detailed(name, 1, Some(key)));
            let outcome = Outcome::of(&result, |ack| ack.duplicate);
            self.history.push(Attempt {
                name: name.into(),
                key,
                delta: 1,
                outcome,
            });
            if outcome.is_acked() {
                return;
            }
            if Instant::now() >= deadline {
                self.fail(&format!(
                    "the primary, node {node}, does not acknowledge {name}: {result:?}"
                ));
            }
            std::thread::sleep(RETRY_BACKOFF);
        }
    }

    /// Waits until every node has the same durable lsns and reads the same value of every counter
    /// of the history; returns the values.
    fn converged(&self, names: &[String], deadline: Instant) -> BTreeMap<String, i64> {
        loop {
            let lsns: Vec<Option<Vec<i64>>> = (0..NODES)
                .map(|n| stats(&self.group.addr(n)).ok().map(|s| lsns_durable(&s)))
                .collect();
            let values: Vec<Option<BTreeMap<String, i64>>> = (0..NODES)
                .map(|n| tally_tests::cluster::read_values(&self.group.addr(n), names).ok())
                .collect();
            let same_lsns = lsns[0].is_some() && lsns.iter().all(|l| *l == lsns[0]);
            let same_values = values[0].is_some() && values.iter().all(|v| *v == values[0]);
            if same_lsns && same_values {
                return values[0].clone().expect("read");
            }
            if Instant::now() >= deadline {
                let differing: Vec<String> = names
                    .iter()
                    .filter_map(|name| {
                        let per_node: Vec<Option<i64>> = values.iter().map(|v| v.as_ref().map(|v| v[name])).collect();
                        per_node
                            .windows(2)
                            .any(|w| w[0] != w[1])
                            .then(|| format!("{name} {per_node:?}"))
                    })
                    .collect();
                self.fail(&format!(
                    "the nodes did not converge within {CONVERGE_TIMEOUT:?} of healing: durable lsns per node {lsns:?}; counters that differ: {differing:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn random_partitions_pauses_kills_and_promotions_keep_every_acked_increment() {
    let iterations: u64 = std::env::var("TALLY_PARTITION_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(ITERATIONS_DEFAULT);
    let seed: u64 = std::env::var("TALLY_PARTITION_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock after 1970")
                .as_nanos() as u64
        });
    println!("partition: TALLY_PARTITION_SEED={seed} TALLY_PARTITION_ITERATIONS={iterations}");
    let group = Group::start(GroupOptions {
        ack_mode: "quorum",
        replication_wait_ms: REPLICATION_WAIT_MS,
        ..GroupOptions::default()
    });
    let mut run = Run {
        group,
        faults: Faults::new(0),
        rng: Rng::new(seed),
        seed,
        iteration: 0,
        history: Vec::new(),
        steps: Vec::new(),
    };
    if let Err(e) = wait_writable_at(&run.group.addr(0), CONVERGE_TIMEOUT) {
        run.fail(&format!("the new group takes no writes: {e}"));
    }
    let client_addrs: Vec<String> = (0..NODES).map(|n| run.group.client_addr(n)).collect();
    let started = Instant::now();
    let (mut acked_total, mut unknown_total, mut faults_total, mut promotions_total) = (0u64, 0u64, 0usize, 0usize);
    let mut converge_ms_max = 0u128;
    for iteration in 0..iterations {
        run.iteration = iteration;
        run.steps.clear();
        let load = Arc::new(Load {
            stop: AtomicBool::new(false),
            primary: AtomicUsize::new(run.faults.primary.expect("a primary between iterations")),
            acked: AtomicU64::new(0),
            unknown: AtomicU64::new(0),
        });
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let (addrs, load) = (client_addrs.clone(), load.clone());
                std::thread::spawn(move || client_thread(addrs, t, iteration, load))
            })
            .collect();

        // The first fault meets a running load, not threads still connecting.
        let warm = Instant::now() + CONVERGE_TIMEOUT;
        while load.acked.load(Ordering::Acquire) < THREADS as u64 {
            if Instant::now() >= warm {
                run.fail("the load got no acknowledgements before the first fault");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let attempts_before = run.history.len();
        for _ in 0..STEPS {
            let step = next_step(&mut run.rng, &run.faults);
            run.apply(step.fault, &load);
            // The fault's hold: the load meets it meanwhile.
            std::thread::sleep(Duration::from_millis(step.hold_ms));
            run.faults.step_done();
            let exited = run.group.exited();
            if !exited.is_empty() {
                run.fail(&format!("nodes exited by themselves: {exited:?}"));
            }
        }
        load.stop.store(true, Ordering::Release);
        for thread in threads {
            let attempts = thread.join().expect("client thread");
            run.history.extend(attempts);
        }

        // Lift every fault; then one primary, then identical nodes.
        let healed_at = Instant::now();
        let deadline = healed_at + CONVERGE_TIMEOUT;
        let mut lifted = run.faults.clone();
        for lift in lifted.heal_all() {
            run.apply(lift, &load);
        }
        run.faults.primary_unavailable_steps = 0;
        let primary = run.one_primary(deadline);
        run.faults.primary = Some(primary);
        run.write_until_acked(
            primary,
            "part:barrier",
            (2u128 << 120) | u128::from(iteration),
            deadline,
        );
        let names = names_of(&run.history);
        let values = run.converged(&names, deadline);
        let converge_ms = healed_at.elapsed().as_millis();
        let report = check(&run.history, &values);
        if !report.is_valid() {
            run.fail(&format!(
                "the counter rule does not hold on the converged nodes: {report}"
            ));
        }
        assert!(run.faults.is_quiet());

        // Refusals of this iteration's load by wire code (its retries of unknown keys included).
        let mut refused: BTreeMap<u16, u64> = BTreeMap::new();
        for attempt in &run.history[attempts_before..] {
            if let Outcome::Failed(code) = attempt.outcome {
                *refused.entry(code).or_default() += 1;
            }
        }
        let acked = load.acked.load(Ordering::Acquire);
        let unknown = load.unknown.load(Ordering::Acquire);
        let faults_applied = run.steps.len();
        let promotions = run.steps.iter().filter(|s| s.starts_with("Promote ->")).count();
        let epochs: Vec<i64> = (0..NODES)
            .map(|n| {
                stats(&run.group.addr(n))
                    .ok()
                    .and_then(|s| s.get("node.epoch").copied())
                    .unwrap_or(-1)
            })
            .collect();
        let epoch = epochs[primary];
        println!(
            "partition {iteration}: acked {acked}, unknown outcomes {unknown}, refused by code {refused:?}, \
             steps {faults_applied} ({promotions} promotions), converged in {converge_ms} ms, primary node \
             {primary} at epoch {epoch} (node.epoch per node {epochs:?}); {report}\n  steps: {:?}",
            run.steps
        );
        acked_total += acked;
        unknown_total += unknown;
        faults_total += faults_applied;
        promotions_total += promotions;
        converge_ms_max = converge_ms_max.max(converge_ms);
    }
    let final_report = check(
        &run.history,
        &run.converged(&names_of(&run.history), Instant::now() + CONVERGE_TIMEOUT),
    );
    println!(
        "partition: seed {seed}, {iterations} iterations in {:.1} s: acked writes {acked_total}, unknown outcomes \
         {unknown_total}, steps {faults_total} ({promotions_total} promotions), slowest convergence {converge_ms_max} ms, \
         distinct keys acked {}, violations {}",
        started.elapsed().as_secs_f64(),
        final_report.acked_keys(),
        final_report.violations.len()
    );
    assert!(acked_total > 0, "the load got no acknowledgement at all");
    final_report.assert_valid();
}

fn names_of(history: &[Attempt]) -> Vec<String> {
    history
        .iter()
        .map(|a| a.name.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}
