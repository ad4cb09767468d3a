//! Regression test of issue 11's split brain: an old primary restarted while partitioned must not
//! take over from the replica promoted in its absence, and no acknowledged write may be lost.
//!
//! n0 primary, n1 and n2 its replicas (`--ack-mode quorum`, 2 shards), every link through its own
//! proxy (`tally_tests::group`). `x += 1` is acknowledged; n0 is SIGKILLed; n1 is promoted;
//! `x += 100` is acknowledged by n1 and n2 reads 101. Then n0 is started twice with every link to
//! and from it cut, each time SIGKILLed 0.5 s after its ready line (on the code of issue 11 each of
//! these starts raised n0's epoch, to above n1's). The links are healed and n0 is started once more
//! with the same flags. Then:
//!
//! - every node, n0 included, reads x = 101 (no acknowledged write lost);
//! - n1 is the one primary and n0 ends as a replica (STATS `node.role`), at no epoch above n1's;
//! - n0 refuses a write; n1 takes one, and it reaches n0 and n2 (x = 102 everywhere).
//!
//! ```sh
//! cargo build -p tally-net && cargo test -p tally-tests --test split_brain -- --nocapture
//! ```

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tally_sdk::ErrorCode;
use tally_tests::cluster::{client, stats, CATCH_UP_TIMEOUT, ROLE_PRIMARY, ROLE_REPLICA};
use tally_tests::group::{Group, GroupOptions};
use tally_tests::jepsen::{check, Attempt, Outcome};
use tally_tests::wait_for;

const N0: usize = 0;
const N1: usize = 1;
const N2: usize = 2;
/// Above the replication wait, so a write that cannot replicate is answered, not timed out.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long each partitioned start of n0 stays up before its SIGKILL (the issue's reproduction).
const ISOLATED_UP: Duration = Duration::from_millis(500);
/// Partitioned starts of n0.
const ISOLATED_STARTS: usize = 2;

/// One keyed increment on the node at `addr`; the attempt is recorded.
fn send(addr: &str, history: &mut Vec<Attempt>, name: &str, key: u128, delta: i64) -> Outcome {
    let result = client(addr, REPLY_TIMEOUT).and_then(|mut c| c.incr_detailed(name, delta, Some(key)));
    let outcome = Outcome::of(&result, |ack| ack.duplicate);
    history.push(Attempt {
        name: name.into(),
        key,
        delta,
        outcome,
    });
    outcome
}

/// Resends the key until `addr` acknowledges it (a new primary takes writes once a replica has
/// confirmed its epoch).
fn send_until_acked(group: &Group, node: usize, history: &mut Vec<Attempt>, name: &str, key: u128, delta: i64) {
    let addr = group.addr(node);
    let deadline = Instant::now() + CATCH_UP_TIMEOUT;
    while !send(&addr, history, name, key, delta).is_acked() {
        assert!(
            Instant::now() < deadline,
            "node {node} did not acknowledge {name} += {delta} within {CATCH_UP_TIMEOUT:?}; last: {:?}\n{}",
            history.last(),
            group.log_tails()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `x` on a node, or why it cannot be read.
fn read_x(group: &Group, node: usize) -> Result<i64, String> {
    client(&group.addr(node), REPLY_TIMEOUT)
        .and_then(|mut c| c.get("x"))
        .map_err(|e| e.to_string())
}

/// What a node says about itself: role, epoch, x.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    role: Option<i64>,
    epoch: Option<i64>,
    x: Result<i64, String>,
}

fn seen(group: &Group, node: usize) -> Seen {
    let s = stats(&group.addr(node)).ok();
    Seen {
        role: s.as_ref().and_then(|s| s.get("node.role").copied()),
        epoch: s.as_ref().and_then(|s| s.get("node.epoch").copied()),
        x: read_x(group, node),
    }
}

fn all_seen(group: &Group) -> BTreeMap<usize, Seen> {
    (0..3).map(|n| (n, seen(group, n))).collect()
}

#[test]
fn an_old_primary_restarted_in_a_partition_never_takes_over_the_promoted_epoch() {
    let mut group = Group::start(GroupOptions {
        ack_mode: "quorum",
        replication_wait_ms: 2_000,
        ..GroupOptions::default()
    });
    let n0_args = group.primary_args(N0);
    tally_tests::cluster::wait_writable_at(&group.addr(N0), CATCH_UP_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\n{}", group.log_tails()));
    let mut history = Vec::new();

    // 1. x += 1 on n0, acknowledged by a quorum.
    assert!(
        send(&group.addr(N0), &mut history, "x", 1, 1).is_acked(),
        "x += 1 on n0: {:?}",
        history.last()
    );

    // 2. n0 dies; n1 is promoted and acknowledges x += 100; n2 follows it.
    group.kill(N0);
    let epoch_n1 = group
        .promote(N1)
        .unwrap_or_else(|e| panic!("{e}\n{}", group.log_tails()));
    send_until_acked(&group, N1, &mut history, "x", 2, 100);
    let x_n2 = wait_for("n2 to read x = 101", CATCH_UP_TIMEOUT, || {
        (read_x(&group, N2) == Ok(101)).then_some(101)
    });
    println!("n1 promoted at epoch {epoch_n1}; n1 acknowledged x += 100; n2 reads {x_n2}");

    // 3. n0 starts twice cut off from both peers (both directions of both links), each time
    //    killed 0.5 s after its ready line. A write sent to it meanwhile must not be acknowledged.
    group.isolate(N0);
    for start in 0..ISOLATED_STARTS {
        group
            .start_node_with(N0, &n0_args)
            .unwrap_or_else(|e| panic!("partitioned start {start} of n0: {e}"));
        let up = Instant::now();
        let key = 100 + start as u128;
        let outcome = send(&group.addr(N0), &mut history, "isolated", key, 5);
        assert!(
            !outcome.is_acked(),
            "n0, cut off from both peers, acknowledged a quorum write: {outcome:?}"
        );
        // The fault's timing, not a wait for anything.
        std::thread::sleep(ISOLATED_UP.saturating_sub(up.elapsed()));
        group.kill(N0);
    }

    // 4. Healed; n0 starts once more with the same flags.
    group.heal_links();
    group
        .start_node_with(N0, &n0_args)
        .unwrap_or_else(|e| panic!("n0's start after the partition, with its flags: {e}"));

    // n0 must end as a replica of n1 holding every acknowledged write, n1 still primary.
    let want = |s: &BTreeMap<usize, Seen>| {
        s[&N1].role == Some(ROLE_PRIMARY)
            && s[&N0].role == Some(ROLE_REPLICA)
            && s[&N2].role == Some(ROLE_REPLICA)
            && s.values().all(|seen| seen.x == Ok(101))
    };
    let deadline = Instant::now() + CATCH_UP_TIMEOUT;
    let mut last = all_seen(&group);
    while !want(&last) {
        if Instant::now() >= deadline {
            panic!(
                "within {CATCH_UP_TIMEOUT:?} of n0's restart the group did not converge to n1 primary, \
                 n0 and n2 replicas, x = 101 on every node (101 acknowledged: 1 by n0, 100 by n1 at epoch \
                 {epoch_n1}). Each node (role 0 primary, 1 replica, 2 candidate): {last:?}\n{}",
                group.log_tails()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
        last = all_seen(&group);
    }
    let epoch_n0 = last[&N0].epoch.expect("n0's epoch");
    let epoch_now = last[&N1].epoch.expect("n1's epoch");
    assert!(
        epoch_n0 <= epoch_now,
        "n0 holds epoch {epoch_n0}, above the primary n1's {epoch_now}: {last:?}"
    );

    // 5. n0 refuses writes (it is a replica); n1 takes one and both replicas get it.
    let outcome = send(&group.addr(N0), &mut history, "x", 3, 5);
    assert_eq!(
        outcome,
        Outcome::Failed(ErrorCode::NotPrimary as u16),
        "a write on n0 after it rejoined"
    );
    send_until_acked(&group, N1, &mut history, "x", 4, 1);
    for node in [N0, N2] {
        wait_for(&format!("node {node} to read x = 102"), CATCH_UP_TIMEOUT, || {
            (read_x(&group, node) == Ok(102)).then_some(())
        });
    }

    // The counter rule over every attempt, on every node.
    for node in [N0, N1, N2] {
        let finals: BTreeMap<String, i64> = ["x", "isolated"]
            .into_iter()
            .map(|name| {
                let value = client(&group.addr(node), REPLY_TIMEOUT)
                    .and_then(|mut c| c.get(name))
                    .unwrap_or_else(|e| panic!("read {name} on node {node}: {e}"));
                (name.to_string(), value)
            })
            .collect();
        let report = check(&history, &finals);
        assert!(report.is_valid(), "node {node}: {report}");
        println!("node {node}: {report}");
    }
    let roles: Vec<Option<i64>> = (0..3).map(|n| seen(&group, n).role).collect();
    assert_eq!(
        roles,
        vec![Some(ROLE_REPLICA), Some(ROLE_PRIMARY), Some(ROLE_REPLICA)],
        "n1 is the one primary"
    );
    println!("split brain regression: n1 primary at epoch {epoch_now}, n0 replica at epoch {epoch_n0}, x = 102 on all");
}
