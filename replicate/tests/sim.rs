//! Simulated replication: one primary shard shipping to two replicas over lossy in-memory links
//! driven by a seeded RNG (frames duplicated, reordered, dropped, bit-flipped; connections broken),
//! with the runtime's part (reading records, encoding frames, fsyncs, timers) played by this file.
//!
//! Checked: each replica's appended stream is exactly the primary's prefix (no gap, no duplicate,
//! same records), and `Quorum` never calls an lsn acknowledged that the replicas it needs have not
//! fsynced. Then a promotion: the primary dies, the lagging replica is promoted and must end with
//! every lsn that was quorum-acknowledged.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tally_engine::LogRecord;
use tally_replicate::*;

const NODE_PRIMARY: u128 = 1;

/// The primary's record at `lsn` (deterministic, so replicas can be checked against it).
fn record_of(lsn: u64) -> (Vec<u8>, i64) {
    (format!("c{}", lsn % 5).into_bytes(), lsn as i64 * 3 - 7)
}

/// Encodes records `lsn_first..=lsn_last` as Ship frames of `epoch`, split at batch boundaries and
/// every `frame_records` records.
fn ship_frames(
    epoch: u64,
    lsn_first: u64,
    lsn_last: u64,
    batches: &[(u64, u64)],
    frame_records: u64,
    out: &mut Vec<Vec<u8>>,
) -> u64 {
    let mut bytes = 0;
    let mut lsn = lsn_first;
    let mut enc = RecordsEncoder::new();
    while lsn <= lsn_last {
        let &(batch_last, time_ms) = batches.iter().find(|(last, _)| *last >= lsn).expect("sealed");
        let last = lsn_last.min(batch_last).min(lsn + frame_records - 1);
        for l in lsn..=last {
            let (name, delta) = record_of(l);
            enc.push(&LogRecord::Incr {
                name: &name,
                name_id: 0,
                delta,
                key: None,
            });
        }
        let mut frame = Vec::new();
        Message::Ship(Ship {
            shard: 0,
            epoch,
            lsn_first: lsn,
            lsn_last: last,
            time_ms,
            records: enc.take(),
        })
        .encode(&mut frame);
        bytes += frame.len() as u64;
        out.push(frame);
        lsn = last + 1;
    }
    bytes
}

/// A replica node with one mirror stream and its "disk".
struct Node {
    replica: Replica,
    /// The mirror WAL: (lsn, name, delta) in append order.
    log: Vec<(u64, Vec<u8>, i64)>,
    lsn_synced: u64,
    epochs_persisted: Vec<u64>,
}

impl Node {
    fn new(node_id: u128) -> Node {
        Node {
            replica: Replica::new(node_id, 1, EpochHistory::new(), vec![StreamPosition::default()]),
            log: Vec::new(),
            lsn_synced: 0,
            epochs_persisted: Vec::new(),
        }
    }

    fn lsn_appended(&self) -> u64 {
        self.log.last().map_or(0, |r| r.0)
    }

    /// Executes replica commands; returns the messages to send back.
    fn run(&mut self, commands: Vec<ReplicaCommand>, serve: &mut Vec<(u64, u64, u64)>) -> Vec<Message> {
        let mut out = Vec::new();
        for command in commands {
            match command {
                ReplicaCommand::PersistEpoch { epoch } => self.epochs_persisted.push(epoch),
                ReplicaCommand::PersistHistory { .. } => {}
                ReplicaCommand::Reply(m) | ReplicaCommand::ToPrimary(m) => out.push(m),
                ReplicaCommand::Append { lsn_from, ship, .. } => {
                    assert_eq!(lsn_from, self.lsn_appended() + 1, "appends are contiguous");
                    assert!(lsn_from >= ship.lsn_first && lsn_from <= ship.lsn_last);
                    let mut appended = Vec::new();
                    decode_records(&ship.records, ship.lsn_last - ship.lsn_first + 1, &mut |i, r| {
                        let lsn = ship.lsn_first + i;
                        if lsn >= lsn_from {
                            let LogRecord::Incr { name, delta, .. } = r else {
                                panic!("only increments are shipped here")
                            };
                            appended.push((lsn, name.to_vec(), delta));
                        }
                    })
                    .expect("an appended ship decodes");
                    self.log.extend(appended);
                }
                ReplicaCommand::ServeFetch {
                    epoch,
                    lsn_from,
                    lsn_to,
                    ..
                } => serve.push((epoch, lsn_from, lsn_to)),
                other => panic!("unexpected command {other:?}"),
            }
        }
        out
    }

    /// The runtime's fsync completes: everything appended is durable.
    fn sync(&mut self) -> Vec<Message> {
        self.lsn_synced = self.lsn_appended();
        let commands = self.replica.synced(0, self.lsn_synced);
        self.run(commands, &mut Vec::new())
    }
}

/// A lossy, reordering link in both directions between the primary and one replica.
#[derive(Default)]
struct Link {
    to_replica: Vec<Vec<u8>>,
    to_primary: Vec<Vec<u8>>,
}

struct Faults {
    drop: f64,
    duplicate: f64,
    corrupt: f64,
    disconnect: f64,
}

const CALM: Faults = Faults {
    drop: 0.0,
    duplicate: 0.0,
    corrupt: 0.0,
    disconnect: 0.0,
};

/// Takes a frame from `queue` (any one: reordering), maybe duplicated, maybe corrupted; `None` if
/// dropped or empty.
fn take(rng: &mut StdRng, queue: &mut Vec<Vec<u8>>, faults: &Faults) -> Option<Vec<u8>> {
    if queue.is_empty() {
        return None;
    }
    let i = if rng.gen_bool(0.7) {
        0
    } else {
        rng.gen_range(0..queue.len())
    };
    let mut frame = if rng.gen_bool(faults.duplicate) {
        queue[i].clone()
    } else {
        queue.remove(i)
    };
    if rng.gen_bool(faults.drop) {
        return None;
    }
    if rng.gen_bool(faults.corrupt) {
        let at = rng.gen_range(0..frame.len());
        frame[at] ^= 1 << rng.gen_range(0..8);
    }
    Some(frame)
}

struct Cluster {
    rng: StdRng,
    lsn_sealed: u64,
    lsn_durable: u64,
    /// (last lsn, time_ms) of each sealed batch.
    batches: Vec<(u64, u64)>,
    shippers: Vec<Shipper>,
    quorum: Quorum,
    history: EpochHistory,
    nodes: Vec<Node>,
    links: Vec<Link>,
    lsn_quorum_max: u64,
}

impl Cluster {
    fn new(seed: u64, replicas: usize) -> Cluster {
        let mut history = EpochHistory::new();
        history.push(1, vec![1]);
        Cluster {
            rng: StdRng::seed_from_u64(seed),
            lsn_sealed: 0,
            lsn_durable: 0,
            batches: Vec::new(),
            shippers: (0..replicas).map(|_| Shipper::new(0, 1, 0, 1)).collect(),
            quorum: Quorum::new(replicas, 0),
            history,
            nodes: (0..replicas).map(|i| Node::new(10 + i as u128)).collect(),
            links: (0..replicas).map(|_| Link::default()).collect(),
            lsn_quorum_max: 0,
        }
    }

    /// Connection setup (reliable, as TCP's handshake plus Hello/HelloReply would be).
    fn connect(&mut self, i: usize) {
        self.links[i] = Link::default();
        self.shippers[i].connected();
        let hello = Message::Hello(Hello {
            version: PROTOCOL_VERSION,
            node_id: NODE_PRIMARY,
            epoch: 1,
            role: Role::Primary,
            shards: 1,
            addr: "a:7000".into(),
            history: self.history.clone(),
        });
        let commands = self.nodes[i].replica.on_message(hello).expect("hello accepted");
        for reply in self.nodes[i].run(commands, &mut Vec::new()) {
            let Message::HelloReply(reply) = reply else {
                panic!("hello answered with {reply:?}")
            };
            let commands = self.shippers[i]
                .hello_reply(reply.epoch, reply.streams[0], &reply.history, &self.history)
                .expect("a consistent replica");
            self.run_shipper(i, commands);
        }
    }

    fn disconnect(&mut self, i: usize) {
        self.links[i] = Link::default();
        self.shippers[i].disconnected();
        self.update_quorum(i);
    }

    fn run_shipper(&mut self, i: usize, commands: Vec<ShipperCommand>) {
        for command in commands {
            match command {
                ShipperCommand::SendRange {
                    lsn_first, lsn_last, ..
                } => {
                    let frame_records = self.rng.gen_range(1..8);
                    let bytes = ship_frames(
                        1,
                        lsn_first,
                        lsn_last,
                        &self.batches,
                        frame_records,
                        &mut self.links[i].to_replica,
                    );
                    let more = self.shippers[i].sent(lsn_last, bytes);
                    self.run_shipper(i, more);
                }
                other => panic!("unexpected shipper command {other:?}"),
            }
        }
        self.update_quorum(i);
    }

    fn update_quorum(&mut self, i: usize) {
        self.quorum.replica_acked(i, self.shippers[i].lsn_acked());
        self.check_quorum();
    }

    /// The quorum never claims more than the replicas have fsynced.
    fn check_quorum(&mut self) {
        let synced: Vec<u64> = self.nodes.iter().map(|n| n.lsn_synced).collect();
        let best = synced.iter().copied().max().unwrap_or(0);
        let worst = synced.iter().copied().min().unwrap_or(0);
        let quorum = self.quorum.lsn_ackable(AckMode::Quorum);
        assert!(
            quorum <= best,
            "quorum-acked {quorum} but replicas synced only {synced:?}"
        );
        assert!(
            quorum <= self.lsn_durable,
            "quorum-acked {quorum} beyond the primary's fsync"
        );
        assert!(self.quorum.lsn_ackable(AckMode::All) <= worst);
        assert!(quorum >= self.lsn_quorum_max, "quorum lsn went back");
        self.lsn_quorum_max = quorum;
    }

    fn deliver_to_replica(&mut self, i: usize, faults: &Faults) {
        let Some(frame) = take(&mut self.rng, &mut self.links[i].to_replica, faults) else {
            return;
        };
        let commands = match Message::decode(&frame) {
            Ok((message, used)) => {
                assert_eq!(used, frame.len());
                self.nodes[i]
                    .replica
                    .on_message(message)
                    .expect("the primary follows the protocol")
            }
            Err(DecodeError::Corrupt { .. }) => self.nodes[i].replica.frame_corrupt(),
            // A damaged length: the stream cannot be resynchronised, so the connection is dropped.
            Err(DecodeError::Invalid { .. } | DecodeError::Incomplete) => {
                self.disconnect(i);
                return self.connect(i);
            }
        };
        let replies = self.nodes[i].run(commands, &mut Vec::new());
        self.queue_to_primary(i, replies);
    }

    fn queue_to_primary(&mut self, i: usize, messages: Vec<Message>) {
        for message in messages {
            let mut frame = Vec::new();
            message.encode(&mut frame);
            self.links[i].to_primary.push(frame);
        }
    }

    fn deliver_to_primary(&mut self, i: usize, faults: &Faults) {
        let Some(frame) = take(&mut self.rng, &mut self.links[i].to_primary, faults) else {
            return;
        };
        let result = match Message::decode(&frame) {
            Ok((Message::Ack(ack), _)) => self.shippers[i].ack(&ack),
            Ok((Message::Need(need), _)) => self.shippers[i].need(&need),
            Ok((other, _)) => panic!("unexpected message to the primary {other:?}"),
            // A corrupt ack or need is lost; the resend timer covers it.
            Err(DecodeError::Corrupt { .. }) => Ok(Vec::new()),
            Err(_) => {
                self.disconnect(i);
                return self.connect(i);
            }
        };
        match result {
            Ok(commands) => self.run_shipper(i, commands),
            Err(e) => panic!("protocol error from an honest replica: {e}"),
        }
    }

    fn seal(&mut self, records: u64) {
        self.lsn_sealed += records;
        self.batches.push((self.lsn_sealed, self.batches.len() as u64 * 10));
        for i in 0..self.shippers.len() {
            let commands = self.shippers[i].sealed(self.lsn_sealed);
            self.run_shipper(i, commands);
        }
    }

    fn step(&mut self, faults: &Faults, lsn_total: u64) {
        let i = self.rng.gen_range(0..self.nodes.len());
        match self.rng.gen_range(0..100) {
            0..=9 if self.lsn_sealed < lsn_total => {
                let records = self.rng.gen_range(1..12).min(lsn_total - self.lsn_sealed);
                self.seal(records);
            }
            10..=19 => {
                self.lsn_durable = self.lsn_sealed;
                self.quorum.local_durable(self.lsn_durable);
                self.check_quorum();
            }
            20..=44 => self.deliver_to_replica(i, faults),
            45..=64 => self.deliver_to_primary(i, faults),
            65..=74 => {
                let replies = self.nodes[i].sync();
                self.queue_to_primary(i, replies);
                self.check_quorum();
            }
            75..=77 => {
                let commands = self.shippers[i].resend_timeout();
                self.run_shipper(i, commands);
            }
            78..=80 => {
                let commands = self.nodes[i].replica.need_timeout(0);
                let replies = self.nodes[i].run(commands, &mut Vec::new());
                self.queue_to_primary(i, replies);
            }
            81 if self.rng.gen_bool(faults.disconnect) => {
                self.disconnect(i);
                self.connect(i);
            }
            _ => {}
        }
    }

    /// Every replica's log is exactly the primary's records `1..=len`.
    fn check_logs(&self) {
        for node in &self.nodes {
            for (at, (lsn, name, delta)) in node.log.iter().enumerate() {
                assert_eq!(*lsn, at as u64 + 1, "no gap, no duplicate");
                assert_eq!((name.clone(), *delta), record_of(*lsn), "the primary's record at {lsn}");
            }
            assert!(node.lsn_appended() <= self.lsn_sealed);
            assert!(node.lsn_synced <= node.lsn_appended());
        }
    }
}

const FAULTY: Faults = Faults {
    drop: 0.05,
    duplicate: 0.05,
    corrupt: 0.03,
    disconnect: 0.05,
};

#[test]
fn replicas_end_with_exactly_the_primarys_log_through_a_lossy_network() {
    for seed in 0..16 {
        let lsn_total = 600;
        let mut c = Cluster::new(seed, 2);
        c.connect(0);
        c.connect(1);
        for step in 0..12_000 {
            c.step(&FAULTY, lsn_total);
            if step % 1000 == 0 {
                c.check_logs();
            }
        }
        while c.lsn_sealed < lsn_total {
            c.seal(1);
        }
        // Calm network: everything must arrive, driven only by the protocol and its timers.
        for round in 0.. {
            assert!(round < 50_000, "seed {seed}: replication did not converge");
            c.step(&CALM, lsn_total);
            if round % 500 == 0 {
                for i in 0..2 {
                    let commands = c.shippers[i].resend_timeout();
                    c.run_shipper(i, commands);
                }
            }
            let done = c.nodes.iter().all(|n| n.lsn_synced == lsn_total)
                && c.shippers.iter().all(|s| s.lsn_acked() == lsn_total);
            if done && c.lsn_durable == lsn_total {
                break;
            }
        }
        c.check_logs();
        assert_eq!(c.quorum.lsn_ackable(AckMode::All), lsn_total, "seed {seed}");
    }
}

/// Runs the promoter's side of a promotion against one peer over a reliable link.
fn promote(promoter: &mut Node, peer: &mut Node, peer_log: &[(u64, Vec<u8>, i64)]) -> Vec<u64> {
    let (mut promotion, commands, replica_commands) =
        Promotion::start(&mut promoter.replica, "b:7000", 1, 1, false, 1_000);
    assert_eq!(promoter.run(replica_commands, &mut Vec::new()), vec![]);
    let mut pending = commands;
    let mut fetched_frames: Vec<Vec<u8>> = Vec::new();
    for _ in 0..1000 {
        let mut next = Vec::new();
        for command in pending.drain(..) {
            match command {
                PromotionCommand::PersistProposal { .. } => {}
                PromotionCommand::PersistEpoch { epoch } => promoter.epochs_persisted.push(epoch),
                PromotionCommand::FetchFrom { history } => promoter.replica.fetch_from(history),
                PromotionCommand::Send { peer: 0, message } => {
                    let mut frame = Vec::new();
                    message.encode(&mut frame);
                    let (message, _) = Message::decode(&frame).unwrap();
                    let commands = peer.replica.on_message(message).expect("a valid promoter");
                    let mut serve = Vec::new();
                    let mut replies = peer.run(commands, &mut serve);
                    // The peer's pending appends become durable; then it answers the Fence.
                    replies.extend(peer.sync());
                    for reply in replies {
                        match reply {
                            Message::FenceReply(reply) => next.extend(promotion.fence_reply(0, &reply)),
                            Message::Ack(_) => {}
                            other => panic!("unexpected reply {other:?}"),
                        }
                    }
                    for (epoch, lsn_from, lsn_to) in serve {
                        let batches: Vec<(u64, u64)> = peer_log.iter().map(|r| (r.0, 0)).collect();
                        ship_frames(epoch, lsn_from, lsn_to, &batches, 5, &mut fetched_frames);
                    }
                }
                PromotionCommand::BecomePrimary { lsn_last, .. } => return lsn_last,
                other => panic!("unexpected promotion command {other:?}"),
            }
        }
        for frame in fetched_frames.drain(..) {
            let (message, _) = Message::decode(&frame).unwrap();
            let commands = promoter.replica.on_message(message).unwrap();
            let replies = promoter.run(commands, &mut Vec::new());
            assert!(replies.iter().all(|m| matches!(m, Message::Ack(_))));
        }
        promoter.sync();
        next.extend(promotion.local_synced(0, promoter.lsn_synced));
        pending = next;
    }
    panic!("the promotion did not finish");
}

#[test]
fn promoting_the_lagging_replica_keeps_every_quorum_acked_write() {
    let mut fetched = 0;
    for seed in 0..16 {
        let mut c = Cluster::new(1000 + seed, 2);
        c.connect(0);
        c.connect(1);
        // Replica 1's link is much worse, so it lags.
        let steps = 3_000 + seed * 200;
        for _ in 0..steps {
            c.step(&FAULTY, u64::MAX);
            if c.rng.gen_bool(0.3) {
                c.links[1].to_replica.clear();
            }
        }
        c.check_logs();
        let lsn_quorum = c.quorum.lsn_ackable(AckMode::Quorum);
        // The primary dies: whatever is in flight is lost. Promote whichever replica is behind.
        let (lag, ahead) = if c.nodes[0].lsn_appended() < c.nodes[1].lsn_appended() {
            (0, 1)
        } else {
            (1, 0)
        };
        let ahead_log = c.nodes[ahead].log.clone();
        let (a, b) = c.nodes.split_at_mut(1);
        let (promoter, peer) = if lag == 0 {
            (&mut a[0], &mut b[0])
        } else {
            (&mut b[0], &mut a[0])
        };
        let lsn_before = promoter.lsn_appended();
        let lsn_last = promote(promoter, peer, &ahead_log);
        if promoter.lsn_appended() > lsn_before {
            fetched += 1;
        }
        assert_eq!(lsn_last, vec![promoter.lsn_appended()]);
        assert!(
            promoter.lsn_synced >= lsn_quorum,
            "seed {seed}: promoted replica has {} but {lsn_quorum} was quorum-acked",
            promoter.lsn_synced
        );
        assert_eq!(
            promoter.lsn_appended(),
            peer.lsn_appended(),
            "it has everything its peer had"
        );
        assert_eq!(promoter.epochs_persisted.last(), Some(&2));
        assert_eq!(peer.replica.epoch(), 2);
        c.check_logs();
    }
    assert!(
        fetched >= 8,
        "the lagging replica had to fetch in most runs, not {fetched}/16"
    );
}
