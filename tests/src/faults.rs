//! The fault schedule of the randomized partition test, as pure functions: given the faults in
//! force and a seeded RNG, which fault comes next and how long it is held. No processes, sockets
//! or clocks here; the runner (`tests/tests/partition.rs`, with `group::Group`) applies each step to
//! real `tallyd` processes and proxies, so a seed replays the same schedule.
//!
//! The model: three nodes, a proxy on every ordered link between two of them (`cut[from][to]`
//! stops the connections `from` opens to `to`, both directions of their bytes), a proxy in front of
//! each node for the clients, and per node: down (SIGKILLed, not restarted yet) or paused
//! (SIGSTOPped).
//!
//! **At most one node is lost at a time.** Every fault in force must be blamable on one node: a
//! down or paused node on itself, a cut link on either of its ends. The schedule only adds a fault
//! when some node can still take the blame for all of them (`Faults::suspects` stays non-empty),
//! so two nodes always stay up, running and connected both ways: a majority of the group. Client
//! links are outside the rule (they never split the group), but at most `CLIENT_CUTS_MAX` are cut
//! at once so the load goes on.
//!
//! **The operator.** When the primary has been unavailable (down, paused, or cut from both
//! replicas so it cannot ship) for `PROMOTE_AFTER_STEPS` steps, the next step is `Promote`: the
//! runner promotes the healthy replica whose STATS show the highest durable lsns
//! (`promotion_candidate`) and reports it with `Faults::promoted`.

/// Nodes in a replication group: a primary and two replicas.
pub const NODES: usize = 3;
/// Steps the primary must stay unavailable before the operator promotes a replica: one step is
/// "the operator notices", the next "the operator acts" (with holds of `HOLD_MS_MIN..HOLD_MS_MAX`,
/// about a second).
pub const PROMOTE_AFTER_STEPS: u32 = 2;
/// Shortest hold of a step: long enough for a write or two to meet the fault.
pub const HOLD_MS_MIN: u64 = 200;
/// Longest hold of a step (exclusive): keeps an iteration's faults within a few seconds.
pub const HOLD_MS_MAX: u64 = 1_200;
/// Client links cut at once, at most: more would stall the load the faults are meant to meet.
pub const CLIENT_CUTS_MAX: usize = 1;

/// A small seeded generator (splitmix64 to spread the seed, then xorshift64*). Same seed, same
/// numbers, on every machine.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        // xorshift never leaves 0.
        Rng(z.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (n > 0); the modulo bias is far below anything a test can notice.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "below(0)");
        self.next_u64() % n
    }

    /// Uniform in `low..high` (low < high).
    pub fn range(&mut self, low: u64, high: u64) -> u64 {
        assert!(low < high, "empty range {low}..{high}");
        low + self.below(high - low)
    }
}

/// One change to the group's faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Close and refuse the connections `from` opens to `to`.
    Cut {
        from: usize,
        to: usize,
    },
    Heal {
        from: usize,
        to: usize,
    },
    /// Cut every link to and from the node (a partition of one node from the other two).
    Isolate(usize),
    /// Close and refuse clients' connections to the node.
    CutClient(usize),
    HealClient(usize),
    /// SIGSTOP.
    Pause(usize),
    /// SIGCONT.
    Resume(usize),
    /// SIGKILL; the node stays down until `Restart`.
    Kill(usize),
    /// Start the node again on its directory, with the flags its `DATA_DIR/node` calls for.
    Restart(usize),
    /// Promote a replica; the runner chooses which (`promotion_candidate`).
    Promote,
}

/// A fault and how long the runner lets it act before the next step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub fault: Fault,
    pub hold_ms: u64,
}

/// The faults in force, and who the operator believes is primary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    pub down: [bool; NODES],
    pub paused: [bool; NODES],
    /// `cut[from][to]`: connections `from` opens to `to` are cut.
    pub cut: [[bool; NODES]; NODES],
    pub client_cut: [bool; NODES],
    pub primary: Option<usize>,
    /// Steps (`step_done` calls) in a row that ended with the primary unavailable.
    pub primary_unavailable_steps: u32,
}

impl Faults {
    /// No fault in force, `primary` the primary.
    pub fn new(primary: usize) -> Faults {
        assert!(primary < NODES);
        Faults {
            primary: Some(primary),
            ..Faults::default()
        }
    }

    /// The nodes on which every node fault in force can be blamed (every node when none is). The
    /// rule holds while at least one is left.
    pub fn suspects(&self) -> [bool; NODES] {
        let mut suspects = [true; NODES];
        for node in 0..NODES {
            if self.down[node] || self.paused[node] {
                blame(&mut suspects, &[node]);
            }
            for to in 0..NODES {
                if self.cut[node][to] {
                    blame(&mut suspects, &[node, to]);
                }
            }
        }
        suspects
    }

    /// True while at most one node is lost (see the module documentation).
    pub fn within_rule(&self) -> bool {
        self.suspects().contains(&true)
    }

    /// True when no node fault and no client cut is in force.
    pub fn is_quiet(&self) -> bool {
        *self
            == Faults {
                primary: self.primary,
                primary_unavailable_steps: self.primary_unavailable_steps,
                ..Faults::default()
            }
    }

    /// Up, running, and no link to or from it cut.
    pub fn is_healthy(&self, node: usize) -> bool {
        !self.down[node]
            && !self.paused[node]
            && (0..NODES).all(|other| !self.cut[node][other] && !self.cut[other][node])
    }

    /// Node `node` can be promoted: it is not the primary, it runs, and it and the other replica
    /// reach each other both ways (the promotion's majority: itself and that peer).
    pub fn is_promotable(&self, node: usize) -> bool {
        let runs = |n: usize| !self.down[n] && !self.paused[n];
        Some(node) != self.primary
            && runs(node)
            && (0..NODES)
                .filter(|&q| q != node && Some(q) != self.primary)
                .any(|q| runs(q) && !self.cut[node][q] && !self.cut[q][node])
    }

    /// The primary cannot take writes: it is down or paused, or cut from both replicas (it opens
    /// the shipping connections, so its outgoing links are what count).
    pub fn primary_unavailable(&self) -> bool {
        let Some(p) = self.primary else { return false };
        self.down[p] || self.paused[p] || (0..NODES).filter(|&r| r != p).all(|r| self.cut[p][r])
    }

    fn client_cuts(&self) -> usize {
        self.client_cut.iter().filter(|&&c| c).count()
    }

    /// Every fault that may come next with its weight: the undoing of each fault in force, and
    /// each new fault that keeps the rule. Only `Promote` once the operator is due to act.
    pub fn candidates(&self) -> Vec<(Fault, u32)> {
        if self.primary_unavailable_steps >= PROMOTE_AFTER_STEPS {
            return vec![(Fault::Promote, 1)];
        }
        let suspects = self.suspects();
        // A new fault blamable on `nodes` keeps the rule if one of them is a suspect already.
        let allowed = |nodes: &[usize]| nodes.iter().any(|&n| suspects[n]);
        let mut out = Vec::new();
        for node in 0..NODES {
            // Losing the primary is what tests failover: twice as likely as losing a replica.
            let lose = if Some(node) == self.primary { 4 } else { 2 };
            if self.down[node] {
                out.push((Fault::Restart(node), 4));
            } else {
                if allowed(&[node]) {
                    out.push((Fault::Kill(node), lose));
                }
                if self.paused[node] {
                    out.push((Fault::Resume(node), 4));
                } else if allowed(&[node]) {
                    out.push((Fault::Pause(node), lose));
                }
            }
            let links_uncut = (0..NODES).any(|o| o != node && (!self.cut[node][o] || !self.cut[o][node]));
            if links_uncut && allowed(&[node]) {
                out.push((Fault::Isolate(node), lose));
            }
            for to in (0..NODES).filter(|&to| to != node) {
                if self.cut[node][to] {
                    out.push((Fault::Heal { from: node, to }, 2));
                } else if allowed(&[node, to]) {
                    out.push((Fault::Cut { from: node, to }, 1));
                }
            }
            if self.client_cut[node] {
                out.push((Fault::HealClient(node), 2));
            } else if self.client_cuts() < CLIENT_CUTS_MAX {
                out.push((Fault::CutClient(node), 1));
            }
        }
        out
    }

    /// Puts `fault` in force (or lifts it). Panics on a fault that does not apply to this state
    /// (restarting a running node, pausing a down one...): the schedule never makes one.
    pub fn apply(&mut self, fault: Fault) {
        match fault {
            Fault::Cut { from, to } => {
                assert!(from != to && !self.cut[from][to], "{fault:?} in {self:?}");
                self.cut[from][to] = true;
            }
            Fault::Heal { from, to } => {
                assert!(self.cut[from][to], "{fault:?} in {self:?}");
                self.cut[from][to] = false;
            }
            Fault::Isolate(node) => {
                for other in (0..NODES).filter(|&o| o != node) {
                    self.cut[node][other] = true;
                    self.cut[other][node] = true;
                }
            }
            Fault::CutClient(node) => {
                assert!(!self.client_cut[node], "{fault:?} in {self:?}");
                self.client_cut[node] = true;
            }
            Fault::HealClient(node) => {
                assert!(self.client_cut[node], "{fault:?} in {self:?}");
                self.client_cut[node] = false;
            }
            Fault::Pause(node) => {
                assert!(!self.down[node] && !self.paused[node], "{fault:?} in {self:?}");
                self.paused[node] = true;
            }
            Fault::Resume(node) => {
                assert!(self.paused[node], "{fault:?} in {self:?}");
                self.paused[node] = false;
            }
            Fault::Kill(node) => {
                assert!(!self.down[node], "{fault:?} in {self:?}");
                self.down[node] = true;
                self.paused[node] = false;
            }
            Fault::Restart(node) => {
                assert!(self.down[node], "{fault:?} in {self:?}");
                self.down[node] = false;
            }
            // The runner reports the outcome with `promoted`.
            Fault::Promote => {}
        }
    }

    /// The operator promoted `node`, which now serves as primary.
    pub fn promoted(&mut self, node: usize) {
        assert!(
            self.is_promotable(node),
            "promoted {node}, which cannot be promoted: {self:?}"
        );
        self.primary = Some(node);
        self.primary_unavailable_steps = 0;
    }

    /// A step's hold is over: counts how long the primary has been unavailable.
    pub fn step_done(&mut self) {
        if self.primary_unavailable() {
            self.primary_unavailable_steps += 1;
        } else {
            self.primary_unavailable_steps = 0;
        }
    }

    /// The faults the runner lifts at the end of an iteration, in the order it lifts them: links,
    /// then client links, then paused nodes, then down ones. Leaves the state quiet.
    pub fn heal_all(&mut self) -> Vec<Fault> {
        let mut lifts = Vec::new();
        for from in 0..NODES {
            for to in 0..NODES {
                if self.cut[from][to] {
                    lifts.push(Fault::Heal { from, to });
                }
            }
        }
        for node in 0..NODES {
            if self.client_cut[node] {
                lifts.push(Fault::HealClient(node));
            }
        }
        for node in 0..NODES {
            if self.paused[node] {
                lifts.push(Fault::Resume(node));
            }
        }
        for node in 0..NODES {
            if self.down[node] {
                lifts.push(Fault::Restart(node));
            }
        }
        for &lift in &lifts {
            self.apply(lift);
        }
        self.primary_unavailable_steps = 0;
        assert!(self.is_quiet());
        lifts
    }
}

/// Narrows `suspects` to the nodes among `nodes`.
fn blame(suspects: &mut [bool; NODES], nodes: &[usize]) {
    for (node, suspect) in suspects.iter_mut().enumerate() {
        *suspect &= nodes.contains(&node);
    }
}

/// The next fault, drawn from `faults.candidates()` by weight.
pub fn next_fault(rng: &mut Rng, faults: &Faults) -> Fault {
    let candidates = faults.candidates();
    let total: u32 = candidates.iter().map(|(_, w)| w).sum();
    assert!(total > 0, "no fault applies to {faults:?}");
    let mut pick = rng.below(u64::from(total)) as u32;
    for (fault, weight) in candidates {
        if pick < weight {
            return fault;
        }
        pick -= weight;
    }
    unreachable!("the pick is below the total weight")
}

/// The next fault and its hold.
pub fn next_step(rng: &mut Rng, faults: &Faults) -> Step {
    let fault = next_fault(rng, faults);
    Step {
        fault,
        hold_ms: rng.range(HOLD_MS_MIN, HOLD_MS_MAX),
    }
}

/// The replica an operator promotes: among `durable` (node, its `shard.N.lsn_durable` figures),
/// the promotable node (`Faults::is_promotable`) with the most durable records in total (per shard the promotion
/// fetches what the peer has anyway; the total is the operator's reading of "most advanced"), the
/// lowest index on a tie. `None` when no node qualifies.
pub fn promotion_candidate(faults: &Faults, durable: &[(usize, Vec<i64>)]) -> Option<usize> {
    durable
        .iter()
        .filter(|(node, _)| faults.is_promotable(*node))
        .map(|(node, lsns)| (lsns.iter().sum::<i64>(), std::cmp::Reverse(*node)))
        .max()
        .map(|(_, std::cmp::Reverse(node))| node)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rule checked another way: at most one node down or paused, and two running nodes whose
    /// links both ways are whole (a connected majority).
    fn majority_connected(f: &Faults) -> bool {
        let out = (0..NODES).filter(|&n| f.down[n] || f.paused[n]).count();
        let pair = (0..NODES).any(|a| {
            (0..NODES).any(|b| {
                a != b && !f.down[a] && !f.paused[a] && !f.down[b] && !f.paused[b] && !f.cut[a][b] && !f.cut[b][a]
            })
        });
        out <= 1 && pair
    }

    /// Runs `steps` steps of the schedule from a quiet group, the way the runner does (a
    /// promotion always succeeds, on the candidate with the given lsns), checking after each.
    fn run(seed: u64, steps: usize, mut each: impl FnMut(&Faults, Step)) {
        let mut rng = Rng::new(seed);
        let mut faults = Faults::new(0);
        for _ in 0..steps {
            let step = next_step(&mut rng, &faults);
            faults.apply(step.fault);
            if step.fault == Fault::Promote {
                let lsns: Vec<(usize, Vec<i64>)> = (0..NODES).map(|n| (n, vec![n as i64, 1])).collect();
                let chosen = promotion_candidate(&faults, &lsns).expect("a healthy replica");
                faults.promoted(chosen);
            }
            faults.step_done();
            each(&faults, step);
        }
    }

    #[test]
    fn never_two_nodes_lost_at_once() {
        for seed in 0..200 {
            run(seed, 300, |faults, step| {
                assert!(faults.within_rule(), "seed {seed}: {step:?} broke the rule: {faults:?}");
                assert!(
                    majority_connected(faults),
                    "seed {seed}: {step:?} left no connected majority: {faults:?}"
                );
                assert!(faults.client_cut.iter().filter(|&&c| c).count() <= CLIENT_CUTS_MAX);
                assert!((HOLD_MS_MIN..HOLD_MS_MAX).contains(&step.hold_ms));
            });
        }
    }

    #[test]
    fn the_rule_is_what_suspects_say() {
        let mut f = Faults::new(0);
        assert!(f.within_rule() && f.is_quiet());
        f.apply(Fault::Cut { from: 0, to: 1 });
        assert_eq!(f.suspects(), [true, true, false]);
        f.apply(Fault::Pause(1));
        assert_eq!(f.suspects(), [false, true, false]);
        assert!(f.within_rule());
        // Another node's fault now would lose two nodes: the schedule does not offer it.
        assert!(f.candidates().iter().all(|(fault, _)| !matches!(
            fault,
            Fault::Kill(0) | Fault::Kill(2) | Fault::Pause(2) | Fault::Cut { from: 0, to: 2 }
        )));
        f.apply(Fault::Kill(2));
        assert!(!f.within_rule() && !majority_connected(&f));
    }

    #[test]
    fn the_schedule_offers_only_faults_that_keep_the_rule() {
        for seed in 0..50 {
            run(seed, 100, |faults, _| {
                for (fault, _) in faults.candidates() {
                    let mut after = faults.clone();
                    after.apply(fault);
                    assert!(after.within_rule(), "{fault:?} offered in {faults:?}");
                }
            });
        }
    }

    #[test]
    fn the_operator_promotes_after_the_primary_is_unavailable_for_a_while() {
        let mut f = Faults::new(0);
        f.apply(Fault::Kill(0));
        assert!(f.primary_unavailable());
        for step in 0..PROMOTE_AFTER_STEPS {
            assert!(
                f.candidates().iter().all(|(fault, _)| *fault != Fault::Promote),
                "no promotion after {step} steps"
            );
            f.step_done();
        }
        assert_eq!(f.candidates(), vec![(Fault::Promote, 1)]);
        let chosen = promotion_candidate(&f, &[(0, vec![9, 9]), (1, vec![3, 4]), (2, vec![5, 1])]);
        assert_eq!(
            chosen,
            Some(1),
            "the highest total among healthy replicas; never the primary"
        );
        f.promoted(1);
        assert_eq!(f.primary, Some(1));
        f.step_done();
        assert!(!f.primary_unavailable() && f.primary_unavailable_steps == 0);
        // A primary cut from one replica still ships to the other: available.
        let mut f = Faults::new(2);
        f.apply(Fault::Cut { from: 2, to: 0 });
        assert!(!f.primary_unavailable());
        f.apply(Fault::Cut { from: 2, to: 1 });
        assert!(f.primary_unavailable());
        // Cut only from the replicas' side, it still ships.
        let mut f = Faults::new(0);
        f.apply(Fault::Cut { from: 1, to: 0 });
        f.apply(Fault::Cut { from: 2, to: 0 });
        assert!(!f.primary_unavailable());
    }

    #[test]
    fn promotion_candidates_tie_to_the_lowest_index_and_skip_unhealthy_nodes() {
        let mut f = Faults::new(0);
        f.apply(Fault::Pause(0));
        assert_eq!(promotion_candidate(&f, &[(1, vec![2, 2]), (2, vec![3, 1])]), Some(1));
        assert_eq!(promotion_candidate(&f, &[(2, vec![3, 1]), (1, vec![2, 2])]), Some(1));
        let mut f = Faults::new(0);
        f.apply(Fault::Cut { from: 2, to: 1 });
        assert_eq!(
            promotion_candidate(&f, &[(1, vec![1]), (2, vec![9])]),
            None,
            "the replicas cannot reach each other: no majority for either"
        );
        // The primary cut from both replicas: either replica can be promoted with the other.
        let mut f = Faults::new(0);
        f.apply(Fault::Cut { from: 0, to: 1 });
        f.apply(Fault::Cut { from: 0, to: 2 });
        assert_eq!(promotion_candidate(&f, &[(1, vec![1]), (2, vec![9])]), Some(2));
        assert_eq!(promotion_candidate(&f, &[(0, vec![9])]), None, "never the primary");
    }

    #[test]
    fn a_seed_replays_the_same_schedule() {
        let record = |seed| {
            let mut steps = Vec::new();
            run(seed, 200, |_, step| steps.push(step));
            steps
        };
        assert_eq!(record(42), record(42));
        assert_ne!(record(42), record(43));
    }

    #[test]
    fn every_kind_of_fault_comes_up() {
        let mut seen = std::collections::HashSet::new();
        run(7, 2_000, |_, step| {
            seen.insert(std::mem::discriminant(&step.fault));
        });
        let all = [
            Fault::Cut { from: 0, to: 1 },
            Fault::Heal { from: 0, to: 1 },
            Fault::Isolate(0),
            Fault::CutClient(0),
            Fault::HealClient(0),
            Fault::Pause(0),
            Fault::Resume(0),
            Fault::Kill(0),
            Fault::Restart(0),
            Fault::Promote,
        ];
        for fault in all {
            assert!(
                seen.contains(&std::mem::discriminant(&fault)),
                "{fault:?} never came up"
            );
        }
    }

    #[test]
    fn heal_all_lifts_every_fault() {
        for seed in 0..20 {
            let mut last = Faults::new(0);
            run(seed, 50, |faults, _| last = faults.clone());
            let lifts = last.heal_all();
            assert!(last.is_quiet(), "{last:?}");
            assert!(lifts.iter().all(|l| matches!(
                l,
                Fault::Heal { .. } | Fault::HealClient(_) | Fault::Resume(_) | Fault::Restart(_)
            )));
        }
    }

    #[test]
    #[should_panic(expected = "Restart(1)")]
    fn a_fault_that_does_not_apply_is_a_bug() {
        Faults::new(0).apply(Fault::Restart(1));
    }
}
