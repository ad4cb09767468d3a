//! Promotion of a replica to primary, pure: fence the peers, collect their positions, fetch what
//! this node lacks, then become primary.
//!
//! Why collect: with quorum = primary + one of two replicas, an acknowledged write may be only on the
//! *other* replica. Why fence first: once a peer has adopted the new epoch it refuses the old primary,
//! so the position it reports can no longer grow behind our back (the old primary cannot get another
//! quorum ack from it), and it reports only after everything it appended is fsynced.

use crate::error::ReplicateError;
use crate::history::EpochHistory;
use crate::limits::REPLICAS_MAX;
use crate::message::{Fence, FenceReply, Fenced, Fetch, Message, StreamPosition};
use crate::replica::{Replica, ReplicaCommand};

/// What the runtime must do for a promotion. Executed in order, like `ReplicaCommand`s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PromotionCommand {
    /// Persist the new epoch (write + fsync) before sending anything.
    PersistEpoch { epoch: u64 },
    /// Send `message` (a Fence or a Fetch) to peer `peer` (an index into the peer list), connecting
    /// first if needed. Its answers come back as `fence_reply`, `fenced`, and Ship frames for the
    /// node's `Replica`.
    Send { peer: usize, message: Message },
    /// Every shard holds every record any reachable peer had: persist `history`, open the mirror
    /// streams as this node's primary shards (each log continues after `lsn_last[shard]`), and start
    /// serving writes and shipping (Hello with `epoch` and `history`) to the peers.
    BecomePrimary {
        epoch: u64,
        lsn_last: Vec<u64>,
        history: EpochHistory,
    },
    /// The promotion failed; this node stays a replica at the new epoch (which is harmless: the next
    /// attempt uses a higher one).
    Failed(ReplicateError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromotionState {
    /// Fence sent, waiting for every peer's FenceReply.
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

/// A promotion in progress.
#[derive(Debug, Clone)]
pub struct Promotion {
    epoch: u64,
    force: bool,
    deadline_ms: u64,
    history: EpochHistory,
    /// This node's own streams (durable advances with `local_synced`).
    local: Vec<StreamPosition>,
    answers: Vec<Option<Vec<StreamPosition>>>,
    targets: Vec<Target>,
    state: PromotionState,
}

impl Promotion {
    /// Starts promoting the node whose replica state is `replica` to epoch `max(replica's epoch,
    /// epoch_seen) + 1`, with `peers` other replicas (at most `REPLICAS_MAX`). `force`: at the
    /// deadline, go on without the peers that did not answer — writes acknowledged only on them are
    /// lost. `addr` is this node's replication address.
    pub fn start(
        replica: &mut Replica,
        addr: &str,
        epoch_seen: u64,
        peers: usize,
        force: bool,
        deadline_ms: u64,
    ) -> (Promotion, Vec<PromotionCommand>, Vec<ReplicaCommand>) {
        assert!(peers <= REPLICAS_MAX);
        let epoch = replica.epoch().max(epoch_seen) + 1;
        let replica_commands = replica.promote_begin(epoch, addr);
        let mut promotion = Promotion {
            epoch,
            force,
            deadline_ms,
            history: replica.history().clone(),
            local: replica.positions(),
            answers: vec![None; peers],
            targets: Vec::new(),
            state: PromotionState::Fencing,
        };
        let mut commands = vec![PromotionCommand::PersistEpoch { epoch }];
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
        commands.extend(promotion.plan_if_answered());
        (promotion, commands, replica_commands)
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
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
        self.answers[peer] = Some(reply.streams.clone());
        self.plan_if_answered()
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
    /// records, if any; otherwise the promotion waits for the deadline (or for `peer_reconnected`).
    pub fn peer_lost(&mut self, peer: usize) -> Vec<PromotionCommand> {
        if self.state != PromotionState::Fetching {
            return Vec::new();
        }
        let mut commands = Vec::new();
        for shard in 0..self.targets.len() {
            let target = self.targets[shard];
            if target.source != Some(peer) || self.local[shard].lsn_durable >= target.lsn {
                continue;
            }
            let other = (0..self.answers.len()).find(|&p| {
                p != peer
                    && self.answers[p]
                        .as_ref()
                        .is_some_and(|s| s[shard].lsn_durable >= target.lsn)
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

    /// Time passed. At the deadline an unfinished promotion fails — unless it is still fencing and
    /// `force` is set, in which case it goes on with the peers that answered.
    pub fn tick(&mut self, now_ms: u64) -> Vec<PromotionCommand> {
        if now_ms < self.deadline_ms {
            return Vec::new();
        }
        match self.state {
            PromotionState::Fencing => {
                let missing: Vec<usize> = (0..self.answers.len()).filter(|&p| self.answers[p].is_none()).collect();
                if self.force {
                    self.plan()
                } else {
                    self.fail(ReplicateError::PeersUnreachable {
                        epoch: self.epoch,
                        peers: missing,
                    })
                }
            }
            PromotionState::Fetching => {
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
            PromotionState::Done | PromotionState::Failed => Vec::new(),
        }
    }

    fn plan_if_answered(&mut self) -> Vec<PromotionCommand> {
        if self.answers.iter().all(Option::is_some) {
            self.plan()
        } else {
            Vec::new()
        }
    }

    /// For each shard, the most advanced log among ours and the answers (latest epoch first, then
    /// longest), and a Fetch of what we lack from its holder.
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
                let Some(streams) = answer else { continue };
                let theirs = streams[shard];
                if (theirs.epoch_last, theirs.lsn_durable) > best && theirs.lsn_durable > ours.lsn_appended {
                    best = (theirs.epoch_last, theirs.lsn_durable);
                    target = Target {
                        lsn: theirs.lsn_durable,
                        source: Some(peer),
                    };
                }
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
        }
    }

    fn become_primary(epoch: u64, lsn_last: Vec<u64>) -> PromotionCommand {
        let mut h = history();
        h.push(epoch, lsn_last.iter().map(|l| l + 1).collect());
        BecomePrimary {
            epoch,
            lsn_last,
            history: h,
        }
    }

    #[test]
    fn alone_it_becomes_primary_at_once_with_a_higher_epoch() {
        let mut r = replica([5, 9]);
        let (p, commands, _) = Promotion::start(&mut r, "b:7000", 3, 0, false, 1000);
        assert_eq!(commands, vec![PersistEpoch { epoch: 4 }, become_primary(4, vec![5, 9])]);
        assert_eq!(p.state(), PromotionState::Done);
        assert_eq!(r.epoch(), 4);
    }

    #[test]
    fn it_fences_every_peer_then_fetches_what_the_most_advanced_one_has() {
        let mut r = replica([5, 9]);
        let (mut p, commands, _) = Promotion::start(&mut r, "b:7000", 1, 2, false, 1000);
        assert_eq!(
            commands,
            vec![
                PersistEpoch { epoch: 2 },
                Send {
                    peer: 0,
                    message: fence(2)
                },
                Send {
                    peer: 1,
                    message: fence(2)
                },
            ]
        );
        assert_eq!(p.fence_reply(0, &reply(2, [4, 12])), vec![], "waits for every peer");
        assert_eq!(
            p.fence_reply(1, &reply(2, [8, 10])),
            vec![
                Send {
                    peer: 1,
                    message: Message::Fetch(Fetch {
                        shard: 0,
                        epoch: 2,
                        lsn_from: 6,
                        lsn_to: 8
                    })
                },
                Send {
                    peer: 0,
                    message: Message::Fetch(Fetch {
                        shard: 1,
                        epoch: 2,
                        lsn_from: 10,
                        lsn_to: 12
                    })
                },
            ]
        );
        assert_eq!(p.local_synced(0, 8), vec![]);
        assert_eq!(p.local_synced(1, 11), vec![]);
        assert_eq!(p.local_synced(1, 12), vec![become_primary(2, vec![8, 12])]);
    }

    #[test]
    fn a_silent_peer_fails_the_promotion_at_the_deadline_unless_forced() {
        let mut r = replica([5, 9]);
        let (mut p, _, _) = Promotion::start(&mut r, "b:7000", 1, 2, false, 1000);
        p.fence_reply(0, &reply(2, [5, 9]));
        assert_eq!(p.tick(999), vec![]);
        assert_eq!(
            p.tick(1000),
            vec![Failed(ReplicateError::PeersUnreachable {
                epoch: 2,
                peers: vec![1]
            })]
        );
        assert_eq!(p.tick(2000), vec![], "fails once");

        let mut r = replica([5, 9]);
        let (mut p, _, _) = Promotion::start(&mut r, "b:7000", 1, 2, true, 1000);
        p.fence_reply(0, &reply(2, [6, 9]));
        assert_eq!(
            p.tick(1000),
            vec![Send {
                peer: 0,
                message: Message::Fetch(Fetch {
                    shard: 0,
                    epoch: 2,
                    lsn_from: 6,
                    lsn_to: 6
                })
            }]
        );
        assert_eq!(p.local_synced(0, 6), vec![become_primary(2, vec![6, 9])]);
    }

    #[test]
    fn an_unfinished_fetch_fails_at_the_deadline() {
        let mut r = replica([5, 9]);
        let (mut p, _, _) = Promotion::start(&mut r, "b:7000", 1, 1, true, 1000);
        p.fence_reply(0, &reply(2, [7, 9]));
        p.local_synced(0, 6);
        assert_eq!(
            p.tick(1000),
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
                message: Message::Fetch(Fetch {
                    shard: 0,
                    epoch: 2,
                    lsn_from: 6,
                    lsn_to: 8
                })
            }]
        );
    }
}
