//! Promotion of a replica to primary, pure: fence the peers, collect their positions, fetch what
//! this node lacks, then become primary. And the probe a restarting primary runs first.
//!
//! An epoch is a fencing token that only a successful promotion creates: it exists once the
//! promoter and at least one peer (a majority of a group of three) durably accepted it. The
//! promoter first persists the number as *proposed* (so no later attempt reuses it), and persists
//! it as its epoch only when the first peer's FenceReply arrives. A promotion nobody answered
//! leaves every node's epoch as it was.
//!
//! Why a majority suffices: a write acknowledged in mode Quorum is durable on two of the three
//! nodes, so any two nodes include one that holds it. Why fence first: once a peer has adopted the
//! new epoch it refuses the old primary, so the position it reports can no longer grow behind our
//! back (the old primary cannot get another quorum ack through it), and it reports only after
//! everything it appended is fsynced. Which log wins: the one whose history ends in the highest
//! epoch, then the longest (Raft's "at least as up-to-date", with epochs for terms; a log claims an
//! epoch once it holds everything that epoch's primary inherited, as in Viewstamped Replication).
//! docs/replication.md has the case-by-case argument.

use crate::error::ReplicateError;
use crate::history::EpochHistory;
use crate::limits::{FETCH_EXTRA_MS_MAX, MAJORITY_GRACE_MS, REPLICAS_MAX};
use crate::message::{Fence, FenceReply, Fenced, Fetch, HelloReply, Message, StreamPosition};
use crate::replica::{Replica, ReplicaCommand};

/// How many peers must answer for a majority of a group of `peers + 1` nodes (the promoter is one).
pub fn peers_for_majority(peers: usize) -> usize {
    peers.div_ceil(2)
}

/// The timing rule a promotion and a probe share: with `answered` of `peers` answers, does it go
/// on now? Only with a majority, and then `MAJORITY_GRACE_MS` after the majority was first seen
/// (`majority_at_ms` remembers it) or at the deadline, whichever is first.
fn majority_goes_on(
    answered: usize,
    peers: usize,
    majority_at_ms: &mut Option<u64>,
    now_ms: u64,
    deadline_ms: u64,
) -> bool {
    let majority = answered >= peers_for_majority(peers);
    if majority && majority_at_ms.is_none() {
        *majority_at_ms = Some(now_ms);
    }
    let grace_over = majority_at_ms.is_some_and(|at| now_ms >= at.saturating_add(MAJORITY_GRACE_MS));
    majority && (grace_over || now_ms >= deadline_ms)
}

/// What the runtime must do for a promotion. Executed in order, like `ReplicaCommand`s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PromotionCommand {
    /// Persist `epoch` as the highest epoch this node has proposed (write + fsync) before sending
    /// anything: a later promotion proposes a higher one. The node's epoch does not change.
    PersistProposal { epoch: u64 },
    /// A peer durably accepted the proposed epoch: it exists. Persist it as the node's epoch.
    PersistEpoch { epoch: u64 },
    /// Send `message` (a Fence or a Fetch) to peer `peer` (an index into the peer list), connecting
    /// first if needed. Its answers come back as `fence_reply`, `fenced`, and Ship frames for the
    /// node's `Replica`.
    Send { peer: usize, message: Message },
    /// The records fetched from now on come from a log described by `history` (the source peer's):
    /// call `Replica::fetch_from(history)` before handing the node's `Replica` any fetched Ship.
    FetchFrom { history: EpochHistory },
    /// Every shard holds every record of the most advanced log the majority had: persist `history`
    /// (this node's log's, with the new epoch starting after `lsn_last`), open the mirror streams as
    /// this node's primary shards, and start serving writes and shipping (Hello with `epoch` and
    /// `history`) to the peers.
    BecomePrimary {
        epoch: u64,
        lsn_last: Vec<u64>,
        history: EpochHistory,
    },
    /// The promotion failed. If no peer accepted the epoch, call `Replica::promote_abort` with the
    /// node's previous epoch: the proposed one does not exist.
    Failed(ReplicateError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromotionState {
    /// Fence sent, waiting for the peers' FenceReplies.
    Fencing,
    /// Fetching the records this node lacks.
    Fetching,
    Done,
    Failed,
}

/// For one shard: the lsn to reach, and the peer to fetch from if it is ahead of us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Target {
    lsn: u64,
    source: Option<usize>,
}

/// A peer's answer to the Fence.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Answer {
    streams: Vec<StreamPosition>,
    history: EpochHistory,
}

/// A promotion in progress.
#[derive(Debug, Clone)]
pub struct Promotion {
    epoch: u64,
    /// The node's epoch before the promotion (what it returns to if nobody accepts).
    epoch_before: u64,
    force: bool,
    deadline_ms: u64,
    /// When a majority had answered (set by the first `tick` after it), for `MAJORITY_GRACE_MS`.
    majority_at_ms: Option<u64>,
    /// This node's own log's history, and what it will be once the fetches are done.
    history: EpochHistory,
    /// This node's own streams (durable advances with `local_synced`).
    local: Vec<StreamPosition>,
    answers: Vec<Option<Answer>>,
    accepted: bool,
    targets: Vec<Target>,
    state: PromotionState,
}

impl Promotion {
    /// Starts promoting the node whose replica state is `replica` to an epoch above its own, above
    /// `epoch_floor` (the highest it ever proposed, and any it saw), with `peers` other members of
    /// the group (at most `REPLICAS_MAX`). `force`: at the deadline, go on even without a majority
    /// — writes acknowledged only on the silent peers are lost. `addr` is this node's address.
    pub fn start(
        replica: &mut Replica,
        addr: &str,
        epoch_floor: u64,
        peers: usize,
        force: bool,
        deadline_ms: u64,
    ) -> (Promotion, Vec<PromotionCommand>, Vec<ReplicaCommand>) {
        assert!(peers <= REPLICAS_MAX);
        let epoch_before = replica.epoch();
        let epoch = epoch_before.max(epoch_floor) + 1;
        let replica_commands = replica.promote_begin(epoch, addr);
        let mut promotion = Promotion {
            epoch,
            epoch_before,
            force,
            deadline_ms,
            majority_at_ms: None,
            history: replica.history().clone(),
            local: replica.positions(),
            answers: vec![None; peers],
            accepted: false,
            targets: Vec::new(),
            state: PromotionState::Fencing,
        };
        let mut commands = vec![PromotionCommand::PersistProposal { epoch }];
        for peer in 0..peers {
            commands.push(PromotionCommand::Send {
                peer,
                message: Message::Fence(Fence {
                    epoch_new: epoch,
                    node_id: replica.node_id(),
                    primary_new: addr.to_owned(),
                }),
            });
        }
        if peers == 0 {
            // A group of one: the promoter alone is the majority.
            commands.push(PromotionCommand::PersistEpoch { epoch });
            promotion.accepted = true;
            commands.extend(promotion.plan());
        }
        (promotion, commands, replica_commands)
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The node's epoch before this promotion.
    pub fn epoch_before(&self) -> u64 {
        self.epoch_before
    }

    /// Whether a peer accepted the epoch (it exists, whatever becomes of the promotion).
    pub fn accepted(&self) -> bool {
        self.accepted
    }

    pub fn state(&self) -> PromotionState {
        self.state
    }

    /// Peer `peer`'s FenceReply.
    pub fn fence_reply(&mut self, peer: usize, reply: &FenceReply) -> Vec<PromotionCommand> {
        if reply.epoch > self.epoch {
            return self.fail(ReplicateError::Superseded {
                epoch: reply.epoch,
                primary: String::new(),
            });
        }
        if self.state != PromotionState::Fencing || reply.epoch != self.epoch || self.answers[peer].is_some() {
            return Vec::new();
        }
        if reply.streams.len() != self.local.len() {
            return self.fail(ReplicateError::Protocol {
                reason: "a peer's FenceReply has another shard count",
            });
        }
        self.answers[peer] = Some(Answer {
            streams: reply.streams.clone(),
            history: reply.history.clone(),
        });
        let mut commands = Vec::new();
        if !self.accepted {
            self.accepted = true;
            commands.push(PromotionCommand::PersistEpoch { epoch: self.epoch });
        }
        if self.answers.iter().all(Option::is_some) {
            commands.extend(self.plan());
        }
        commands
    }

    /// Peer `peer` knows an epoch at least as high as ours: someone else is promoting or promoted.
    pub fn fenced(&mut self, _peer: usize, fenced: &Fenced) -> Vec<PromotionCommand> {
        if fenced.epoch < self.epoch || matches!(self.state, PromotionState::Done | PromotionState::Failed) {
            return Vec::new();
        }
        self.fail(ReplicateError::Superseded {
            epoch: fenced.epoch,
            primary: fenced.primary.clone(),
        })
    }

    /// This node's mirror stream `shard` is fsynced up to `lsn` (the runtime forwards every
    /// `Replica::synced` here while promoting).
    pub fn local_synced(&mut self, shard: u16, lsn: u64) -> Vec<PromotionCommand> {
        let local = &mut self.local[usize::from(shard)];
        local.lsn_durable = local.lsn_durable.max(lsn);
        local.lsn_appended = local.lsn_appended.max(lsn);
        self.finish_if_complete()
    }

    /// The connection to `peer` broke. A fetch from it is retried from another peer that has the
    /// same log up to the target, if any; otherwise the promotion waits for the deadline (or for
    /// `peer_reconnected`).
    pub fn peer_lost(&mut self, peer: usize) -> Vec<PromotionCommand> {
        if self.state != PromotionState::Fetching {
            return Vec::new();
        }
        let mut commands = Vec::new();
        for shard in 0..self.targets.len() {
            let target = self.targets[shard];
            let Some(source) = target.source else { continue };
            if source != peer || self.local[shard].lsn_durable >= target.lsn {
                continue;
            }
            let source_history = self.answers[source]
                .as_ref()
                .expect("a source answered")
                .history
                .clone();
            let other = (0..self.answers.len()).find(|&p| {
                p != peer
                    && self.answers[p].as_ref().is_some_and(|a| {
                        a.streams[shard].lsn_durable >= target.lsn
                            && a.history
                                .lsn_common(shard as u16, target.lsn, &source_history, target.lsn)
                                == target.lsn
                    })
            });
            if let Some(other) = other {
                self.targets[shard].source = Some(other);
                commands.push(self.fetch(shard, other));
            }
        }
        commands
    }

    /// The connection to `peer` is back: resend what it owes us (Fence if it has not answered, the
    /// Fetches it is the source of).
    pub fn peer_reconnected(&mut self, peer: usize, node_id: u128, addr: &str) -> Vec<PromotionCommand> {
        match self.state {
            PromotionState::Fencing if self.answers[peer].is_none() => vec![PromotionCommand::Send {
                peer,
                message: Message::Fence(Fence {
                    epoch_new: self.epoch,
                    node_id,
                    primary_new: addr.to_owned(),
                }),
            }],
            PromotionState::Fetching => (0..self.targets.len())
                .filter(|&shard| {
                    self.targets[shard].source == Some(peer) && self.local[shard].lsn_durable < self.targets[shard].lsn
                })
                .map(|shard| self.fetch(shard, peer))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Time passed. Once a majority answered, the promotion goes on after `MAJORITY_GRACE_MS` or
    /// at the deadline, whichever is first. At the deadline without a majority it fails, unless
    /// `force`. A fetch still incomplete `FETCH_EXTRA_MS_MAX` after the deadline fails.
    pub fn tick(&mut self, now_ms: u64) -> Vec<PromotionCommand> {
        match self.state {
            PromotionState::Fencing => {
                let answered = self.answers.iter().filter(|a| a.is_some()).count();
                let go = majority_goes_on(
                    answered,
                    self.answers.len(),
                    &mut self.majority_at_ms,
                    now_ms,
                    self.deadline_ms,
                );
                if go {
                    return self.plan();
                }
                if now_ms < self.deadline_ms {
                    return Vec::new();
                }
                if self.force {
                    return self.plan();
                }
                let missing: Vec<usize> = (0..self.answers.len()).filter(|&p| self.answers[p].is_none()).collect();
                self.fail(ReplicateError::PeersUnreachable {
                    epoch: self.epoch,
                    peers: missing,
                })
            }
            PromotionState::Fetching if now_ms >= self.deadline_ms.saturating_add(FETCH_EXTRA_MS_MAX) => {
                let shard = (0..self.targets.len())
                    .find(|&s| self.local[s].lsn_durable < self.targets[s].lsn)
                    .expect("an unfinished fetch has a shard behind its target");
                self.fail(ReplicateError::FetchIncomplete {
                    epoch: self.epoch,
                    shard: shard as u16,
                    lsn_have: self.local[shard].lsn_durable,
                    lsn_target: self.targets[shard].lsn,
                })
            }
            _ => Vec::new(),
        }
    }

    /// For each shard, the most advanced log among ours and the answers (the highest last epoch,
    /// then the longest), and a Fetch of what we lack from its holder. Our log must be a prefix of
    /// it: records of ours past the common prefix would have to be discarded in place, which the
    /// WAL does not do, so the promotion fails naming the peer to promote instead.
    fn plan(&mut self) -> Vec<PromotionCommand> {
        self.state = PromotionState::Fetching;
        let mut commands = Vec::new();
        for shard in 0..self.local.len() {
            let ours = self.local[shard];
            let mut target = Target {
                lsn: ours.lsn_appended,
                source: None,
            };
            let mut best = (ours.epoch_last, ours.lsn_appended);
            for (peer, answer) in self.answers.iter().enumerate() {
                let Some(answer) = answer else { continue };
                let theirs = answer.streams[shard];
                if (theirs.epoch_last, theirs.lsn_durable) > best {
                    best = (theirs.epoch_last, theirs.lsn_durable);
                    target = Target {
                        lsn: theirs.lsn_durable,
                        source: Some(peer),
                    };
                }
            }
            if let Some(peer) = target.source {
                let theirs = &self.answers[peer].as_ref().expect("answered").history;
                let common = theirs.lsn_common(shard as u16, target.lsn, &self.history, ours.lsn_appended);
                if common < ours.lsn_appended {
                    return self.fail(ReplicateError::Diverged {
                        epoch: self.epoch,
                        shard: shard as u16,
                        peer,
                        lsn_common: common,
                        lsn_have: ours.lsn_appended,
                    });
                }
                self.history = theirs.prefix(shard as u16, target.lsn);
                commands.push(PromotionCommand::FetchFrom {
                    history: theirs.clone(),
                });
            }
            self.targets.push(target);
            if let Some(peer) = target.source {
                commands.push(self.fetch(shard, peer));
            }
        }
        commands.extend(self.finish_if_complete());
        commands
    }

    fn fetch(&self, shard: usize, peer: usize) -> PromotionCommand {
        PromotionCommand::Send {
            peer,
            message: Message::Fetch(Fetch {
                shard: shard as u16,
                epoch: self.epoch,
                lsn_from: self.local[shard].lsn_appended + 1,
                lsn_to: self.targets[shard].lsn,
            }),
        }
    }

    fn finish_if_complete(&mut self) -> Vec<PromotionCommand> {
        if self.state != PromotionState::Fetching {
            return Vec::new();
        }
        let complete = self
            .targets
            .iter()
            .zip(&self.local)
            .all(|(target, local)| local.lsn_durable >= target.lsn && local.lsn_durable == local.lsn_appended);
        if !complete {
            return Vec::new();
        }
        self.state = PromotionState::Done;
        let lsn_last: Vec<u64> = self.local.iter().map(|l| l.lsn_durable).collect();
        let mut history = self.history.clone();
        history.push(self.epoch, lsn_last.iter().map(|lsn| lsn + 1).collect());
        vec![PromotionCommand::BecomePrimary {
            epoch: self.epoch,
            lsn_last,
            history,
        }]
    }

    fn fail(&mut self, error: ReplicateError) -> Vec<PromotionCommand> {
        if matches!(self.state, PromotionState::Done | PromotionState::Failed) {
            return Vec::new();
        }
        self.state = PromotionState::Failed;
        vec![PromotionCommand::Failed(error)]
    }
}

/// What a restarting primary's probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// Not enough answers yet.
    Pending,
    /// A peer names `primary` as the primary of `epoch`, at or above this node's: step down and
    /// follow it.
    StepDown { epoch: u64, primary: String },
    /// A majority answered and none knows another primary: promote this node to an epoch above
    /// `epoch_seen` (the highest any peer knows).
    Promote { epoch_seen: u64 },
    /// The deadline passed without a majority: this node takes no writes; probe again later.
    Unreachable { peers: Vec<usize> },
}

/// The first thing a node does when it restarts as primary: a restart never creates an epoch, and
/// the node may have been replaced while it was down. It sends each peer a Hello of its own epoch
/// (role primary). A peer that follows a newer primary answers `Fenced` naming it (and this node
/// steps down); a peer that still follows this node's epoch answers `HelloReply`. With a majority
/// and no other primary, the node promotes itself to a new epoch, which collects any record its
/// crash lost but a replica had, and keeps its new writes apart from records of the old epoch a
/// replica may hold past the primary's log (they become a foreign suffix the history detects).
#[derive(Debug, Clone)]
pub struct Probe {
    epoch: u64,
    addr: String,
    deadline_ms: u64,
    majority_at_ms: Option<u64>,
    /// Per peer: the epoch it answered with.
    answers: Vec<Option<u64>>,
    outcome: ProbeOutcome,
}

impl Probe {
    /// A probe by the node at `addr` whose epoch is `epoch`, of `peers` peers, until `deadline_ms`.
    pub fn new(epoch: u64, addr: &str, peers: usize, deadline_ms: u64) -> Probe {
        assert!(peers <= REPLICAS_MAX);
        let mut probe = Probe {
            epoch,
            addr: addr.to_owned(),
            deadline_ms,
            majority_at_ms: None,
            answers: vec![None; peers],
            outcome: ProbeOutcome::Pending,
        };
        if peers == 0 {
            probe.outcome = ProbeOutcome::Promote { epoch_seen: epoch };
        }
        probe
    }

    pub fn outcome(&self) -> &ProbeOutcome {
        &self.outcome
    }

    /// Peer `peer` answered the Hello with a HelloReply: it follows this node's epoch.
    pub fn hello_reply(&mut self, peer: usize, reply: &HelloReply) -> &ProbeOutcome {
        self.answer(peer, reply.epoch);
        &self.outcome
    }

    /// Peer `peer` answered `Fenced`: it knows `fenced.epoch` (≥ ours) and its primary, if any.
    pub fn fenced(&mut self, peer: usize, fenced: &Fenced) -> &ProbeOutcome {
        if self.outcome != ProbeOutcome::Pending {
            return &self.outcome;
        }
        let other = !fenced.primary.is_empty() && fenced.primary != self.addr;
        if other && fenced.epoch >= self.epoch {
            self.outcome = ProbeOutcome::StepDown {
                epoch: fenced.epoch,
                primary: fenced.primary.clone(),
            };
            return &self.outcome;
        }
        self.answer(peer, fenced.epoch);
        &self.outcome
    }

    /// Time passed (see `Promotion::tick` for the majority grace).
    pub fn tick(&mut self, now_ms: u64) -> &ProbeOutcome {
        if self.outcome != ProbeOutcome::Pending {
            return &self.outcome;
        }
        let answered = self.answers.iter().filter(|a| a.is_some()).count();
        let go = majority_goes_on(
            answered,
            self.answers.len(),
            &mut self.majority_at_ms,
            now_ms,
            self.deadline_ms,
        );
        if go {
            self.outcome = ProbeOutcome::Promote {
                epoch_seen: self.epoch_seen(),
            };
        } else if now_ms >= self.deadline_ms {
            self.outcome = ProbeOutcome::Unreachable {
                peers: (0..self.answers.len()).filter(|&p| self.answers[p].is_none()).collect(),
            };
        }
        &self.outcome
    }

    fn answer(&mut self, peer: usize, epoch: u64) {
        if self.outcome != ProbeOutcome::Pending || self.answers[peer].is_some() {
            return;
        }
        self.answers[peer] = Some(epoch);
        if self.answers.iter().all(Option::is_some) {
            self.outcome = ProbeOutcome::Promote {
                epoch_seen: self.epoch_seen(),
            };
        }
    }

    fn epoch_seen(&self) -> u64 {
        self.answers
            .iter()
            .flatten()
            .copied()
            .max()
            .unwrap_or(0)
            .max(self.epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PromotionCommand::*;

    fn pos(epoch_last: u64, lsn: u64) -> StreamPosition {
        StreamPosition {
            epoch_last,
            lsn_durable: lsn,
            lsn_appended: lsn,
        }
    }

    fn history() -> EpochHistory {
        let mut h = EpochHistory::new();
        h.push(1, vec![1, 1]);
        h
    }

    fn replica(lsns: [u64; 2]) -> Replica {
        Replica::new(7, 1, history(), lsns.iter().map(|&lsn| pos(1, lsn)).collect())
    }

    fn fence(epoch: u64) -> Message {
        Message::Fence(Fence {
            epoch_new: epoch,
            node_id: 7,
            primary_new: "b:7000".into(),
        })
    }

    fn reply(epoch: u64, lsns: [u64; 2]) -> FenceReply {
        FenceReply {
            node_id: 8,
            epoch,
            streams: lsns.iter().map(|&lsn| pos(1, lsn)).collect(),
            history: history(),
        }
    }

    fn fetch(shard: u16, epoch: u64, lsn_from: u64, lsn_to: u64) -> Message {
        Message::Fetch(Fetch {
            shard,
            epoch,
            lsn_from,
            lsn_to,
        })
    }

    fn become_primary(base: EpochHistory, epoch: u64, lsn_last: Vec<u64>) -> PromotionCommand {
        let mut h = base;
        h.push(epoch, lsn_last.iter().map(|l| l + 1).collect());
        BecomePrimary {
            epoch,
            lsn_last,
            history: h,
        }
    }

    #[test]
    fn alone_it_becomes_primary_at_once_above_every_epoch_it_proposed() {
        let mut r = replica([5, 9]);
        let (p, commands, _) = Promotion::start(&mut r, "b:7000", 3, 0, false, 1000);
        assert_eq!(
            commands,
            vec![
                PersistProposal { epoch: 4 },
                PersistEpoch { epoch: 4 },
                become_primary(history(), 4, vec![5, 9])
            ]
        );
        assert_eq!(p.state(), PromotionState::Done);
        assert_eq!(r.epoch(), 4);
    }

    #[test]
    fn the_epoch_exists_only_once_a_peer_accepted_it() {
        let mut r = replica([5, 9]);
        let (mut p, commands, _) = Promotion::start(&mut r, "b:7000", 1, 2, false, 1000);
        assert_eq!(
            commands,
            vec![
                PersistProposal { epoch: 2 },
                Send {
                    peer: 0,
                    message: fence(2)
                },
                Send {
                    peer: 1,
                    message: fence(2)
                },
            ],
            "proposed, not yet the node's epoch"
        );
        assert!(!p.accepted());
        assert_eq!(p.fence_reply(0, &reply(2, [4, 12])), vec![PersistEpoch { epoch: 2 }]);
        assert!(p.accepted());
        assert_eq!(
            p.fence_reply(1, &reply(2, [8, 10])),
            vec![
                FetchFrom { history: history() },
                Send {
                    peer: 1,
                    message: fetch(0, 2, 6, 8)
                },
                FetchFrom { history: history() },
                Send {
                    peer: 0,
                    message: fetch(1, 2, 10, 12)
                },
            ],
            "with every peer answered it fetches what the most advanced ones have"
        );
        assert_eq!(p.local_synced(0, 8), vec![]);
        assert_eq!(p.local_synced(1, 11), vec![]);
        assert_eq!(p.local_synced(1, 12), vec![become_primary(history(), 2, vec![8, 12])]);
    }

    #[test]
    fn a_majority_goes_on_after_the_grace_without_the_silent_peer() {
        let mut r = replica([5, 9]);
        let (mut p, _, _) = Promotion::start(&mut r, "b:7000", 1, 2, false, 60_000);
        p.fence_reply(0, &reply(2, [5, 9]));
        assert_eq!(p.tick(10), vec![], "the grace starts");
        assert_eq!(p.tick(10 + MAJORITY_GRACE_MS - 1), vec![]);
        assert_eq!(
            p.tick(10 + MAJORITY_GRACE_MS),
            vec![become_primary(history(), 2, vec![5, 9])]
        );
    }

    #[test]
    fn without_a_majority_it_fails_at_the_deadline_unless_forced_and_the_epoch_never_existed() {
        let mut r = replica([5, 9]);
        let (mut p, _, _) = Promotion::start(&mut r, "b:7000", 1, 2, false, 1000);
        assert_eq!(p.tick(999), vec![]);
        assert_eq!(
            p.tick(1000),
            vec![Failed(ReplicateError::PeersUnreachable {
                epoch: 2,
                peers: vec![0, 1]
            })]
        );
        assert_eq!(p.tick(2000), vec![], "fails once");
        assert!(!p.accepted(), "the runtime aborts back to the old epoch");
        r.promote_abort(p.epoch_before());
        assert_eq!(r.epoch(), 1);

        let mut r = replica([5, 9]);
        let (mut p, _, _) = Promotion::start(&mut r, "b:7000", 1, 2, true, 1000);
        assert_eq!(p.tick(1000), vec![become_primary(history(), 2, vec![5, 9])]);
    }

    #[test]
    fn an_unfinished_fetch_fails_after_its_extra_time() {
        let mut r = replica([5, 9]);
        let (mut p, _, _) = Promotion::start(&mut r, "b:7000", 1, 1, false, 1000);
        p.fence_reply(0, &reply(2, [7, 9]));
        p.local_synced(0, 6);
        assert_eq!(p.tick(1000 + FETCH_EXTRA_MS_MAX - 1), vec![]);
        assert_eq!(
            p.tick(1000 + FETCH_EXTRA_MS_MAX),
            vec![Failed(ReplicateError::FetchIncomplete {
                epoch: 2,
                shard: 0,
                lsn_have: 6,
                lsn_target: 7
            })]
        );
    }

    #[test]
    fn a_peer_that_knows_a_higher_epoch_ends_the_promotion() {
        let mut r = replica([5, 9]);
        let (mut p, _, _) = Promotion::start(&mut r, "b:7000", 1, 2, false, 1000);
        assert_eq!(
            p.fenced(
                1,
                &Fenced {
                    epoch: 2,
                    primary: "c:7000".into()
                }
            ),
            vec![Failed(ReplicateError::Superseded {
                epoch: 2,
                primary: "c:7000".into()
            })]
        );
        assert_eq!(p.fence_reply(0, &reply(2, [5, 9])), vec![]);
    }

    #[test]
    fn a_lost_source_is_replaced_by_another_peer_that_has_the_records() {
        let mut r = replica([5, 9]);
        let (mut p, _, _) = Promotion::start(&mut r, "b:7000", 1, 2, false, 1000);
        p.fence_reply(0, &reply(2, [8, 9]));
        p.fence_reply(1, &reply(2, [8, 9]));
        assert_eq!(
            p.peer_lost(0),
            vec![Send {
                peer: 1,
                message: fetch(0, 2, 6, 8)
            }]
        );
    }

    /// Epoch 2's primary inherited 1..=100 of epoch 1 on shard 0 and wrote 101..=103.
    fn promoted_log() -> FenceReply {
        let mut h = history();
        h.push(2, vec![101, 1]);
        FenceReply {
            node_id: 8,
            epoch: 3,
            streams: vec![pos(2, 103), pos(0, 0)],
            history: h,
        }
    }

    #[test]
    fn a_later_epoch_beats_a_longer_log_and_its_history_is_adopted() {
        // This node holds 1..=100 of epoch 1: a prefix of the promoted log.
        let mut r = replica([100, 0]);
        let (mut p, _, _) = Promotion::start(&mut r, "b:7000", 2, 1, false, 1000);
        let peer = promoted_log();
        assert_eq!(
            p.fence_reply(0, &peer),
            vec![
                PersistEpoch { epoch: 3 },
                FetchFrom {
                    history: peer.history.clone()
                },
                Send {
                    peer: 0,
                    message: fetch(0, 3, 101, 103)
                },
            ]
        );
        assert_eq!(
            p.local_synced(0, 103),
            vec![become_primary(peer.history, 3, vec![103, 0])]
        );
    }

    #[test]
    fn a_promoter_holding_a_demoted_primarys_suffix_names_the_peer_to_promote_instead() {
        // This node was epoch 1's primary and wrote 101..=105 that nobody else has: longer, but of
        // an older epoch than the peer's log.
        let mut r = replica([105, 0]);
        let (mut p, _, _) = Promotion::start(&mut r, "b:7000", 2, 1, false, 1000);
        assert_eq!(
            p.fence_reply(0, &promoted_log()),
            vec![
                PersistEpoch { epoch: 3 },
                Failed(ReplicateError::Diverged {
                    epoch: 3,
                    shard: 0,
                    peer: 0,
                    lsn_common: 100,
                    lsn_have: 105
                })
            ]
        );
    }

    fn hello_reply(epoch: u64) -> HelloReply {
        HelloReply {
            node_id: 8,
            epoch,
            streams: vec![pos(1, 5)],
            history: EpochHistory::new(),
        }
    }

    #[test]
    fn a_probe_steps_down_for_another_primary_of_a_newer_epoch() {
        let mut probe = Probe::new(1, "a:7000", 2, 5000);
        assert_eq!(probe.hello_reply(0, &hello_reply(1)), &ProbeOutcome::Pending);
        let other = Fenced {
            epoch: 2,
            primary: "b:7000".into(),
        };
        assert_eq!(
            probe.fenced(1, &other),
            &ProbeOutcome::StepDown {
                epoch: 2,
                primary: "b:7000".into()
            }
        );
        assert_eq!(
            probe.tick(6000),
            &ProbeOutcome::StepDown {
                epoch: 2,
                primary: "b:7000".into()
            }
        );
    }

    #[test]
    fn a_probe_promotes_above_every_epoch_seen_once_a_majority_names_no_other_primary() {
        let mut probe = Probe::new(1, "a:7000", 2, 5000);
        let me = Fenced {
            epoch: 3,
            primary: "a:7000".into(),
        };
        assert_eq!(
            probe.fenced(0, &me),
            &ProbeOutcome::Pending,
            "a fence of ours that failed"
        );
        assert_eq!(probe.tick(100), &ProbeOutcome::Pending);
        assert_eq!(
            probe.tick(100 + MAJORITY_GRACE_MS),
            &ProbeOutcome::Promote { epoch_seen: 3 }
        );
        let mut probe = Probe::new(4, "a:7000", 2, 5000);
        probe.hello_reply(0, &hello_reply(4));
        assert_eq!(
            probe.hello_reply(1, &hello_reply(4)),
            &ProbeOutcome::Promote { epoch_seen: 4 }
        );
    }

    #[test]
    fn a_probe_without_a_majority_is_unreachable_at_the_deadline() {
        let mut probe = Probe::new(1, "a:7000", 2, 5000);
        assert_eq!(probe.tick(4999), &ProbeOutcome::Pending);
        assert_eq!(probe.tick(5000), &ProbeOutcome::Unreachable { peers: vec![0, 1] });
        let mut lone = Probe::new(1, "a:7000", 1, 5000);
        assert_eq!(lone.tick(5000), &ProbeOutcome::Unreachable { peers: vec![0] });
        assert_eq!(peers_for_majority(2), 1);
        assert_eq!(peers_for_majority(1), 1);
        assert_eq!(peers_for_majority(0), 0);
    }
}
