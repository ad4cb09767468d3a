//! Recovery: `Shard::replay` re-applies one logged record to a recovering shard, and the reconcile
//! (`reconcile`, or its steps `recovered_slot_parts`, `fold_recovered`, `close_recovered_splits`,
//! `clear_recovered_slot_parts`) settles split counters across the shards of a node.
//!
//! Replay reproduces exactly the state the original change left: values, kinds and bounds, the
//! arena layout (names are stored in the same order, so they get the same offsets), dedup entries
//! (keyed with the logged answer and the log's time), audit records and the lsn. It finds names by
//! their bytes and ignores `name_id`, which the WAL may hand back as its own dictionary id. It
//! never creates live split cells:
//! - a `Split` record marks the counter as split at that epoch (`recovered_open`), its entry keeping
//!   the owner's own part;
//! - a `SlotIncr` on a non-owner adds into that shard's recovered part of (name, epoch);
//! - a `Merge` adds its amount to the owner's part, closes the epoch and remembers it as the name's
//!   last merged epoch.
//!
//! Reconcile, once every shard of the node has replayed (from its snapshot and log): the recovered
//! parts of each (name, epoch), summed over shards, are folded into the owner in ascending epoch
//! order. A part of an epoch at or below the owner's last merged epoch is ignored; any other is
//! added and logged as `Merge { epoch, amount }`. Then every split epoch still open is closed with
//! `Merge { epoch, 0 }`, and the parts are dropped. No counter is split afterwards.
//!
//! Why each durable slot increment is counted exactly once. A non-owner logs `SlotIncr` only after
//! its compare-exchange on the slot succeeded, and the owner's merge swaps every slot to CLOSED, so
//! every `SlotIncr` of an epoch was in its slot when the merge swapped it out: the `Merge` amount of
//! that epoch contains all of them (and perhaps adds whose records never became durable, which
//! is allowed: they were attempted). So:
//! - if the owner's `Merge` of the epoch is durable, the increments are counted by it, and the
//!   parts of that epoch are ignored (epoch <= last merged);
//! - if it is not, no record of the owner counts them, and the fold adds exactly the durable parts,
//!   logging a `Merge` that makes the next recovery ignore them;
//! - an epoch is only ever merged once per name: epochs of a name strictly grow (a split's epoch is
//!   its lsn, and the owner refuses to split a name again until its lsn passes the name's last
//!   merged epoch, which matters after a fold of an epoch whose `Split` the owner's log had lost),
//!   and the fold runs in ascending epoch order, so "epoch <= last merged" means "merged".
//!
//! The requirements on the node: every shard replays before any reconcile step; the `Merge`
//! records the reconcile writes are durable before the node serves; and a snapshot becomes a
//! recovery base only once the other shards' logs are durable to `SnapshotDeps::durable_lsn_required`.

use std::collections::BTreeMap;

use tally_proto::limits::NAME_BYTES_MAX;
use tally_proto::{shard_of, CounterKind};

use super::{commit, within, Key, RecoveredPart, RecoveredSplit, Shard, BOUNDS_FULL};
use crate::audit::ResetRecord;
use crate::limits::{SPLIT_ELIGIBLE_ABS_MAX, SPLIT_SLOT_ABS_MAX, SPLIT_VALUE_ABS_MAX};
use crate::log::{Keyed, LogRecord, LogSink, LsnCheck, ReplayError};
use crate::table::{CounterId, Entry, FLAG_STRICT};
use crate::window::NameRef;

fn inconsistent(lsn: u64, reason: &'static str) -> ReplayError {
    ReplayError::Inconsistent { lsn, reason }
}

/// What `reconcile` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// (name, epoch) parts added to their owner (each logged as a `Merge`).
    pub folded: u64,
    /// (name, epoch) parts ignored because the owner's log had merged that epoch.
    pub ignored: u64,
    /// Split epochs closed with `Merge { amount: 0 }` because no shard held a part of them.
    pub closed: u64,
}

/// Runs the cross-shard reconcile of a node whose shards (all of them, `shards[i].id() == i`) have
/// replayed their snapshots and logs: folds every recovered slot part into its owner, closes the
/// remaining recovered split epochs, and drops the parts. `logs[i]` receives shard i's new
/// records. Afterwards every shard may serve; the new records must be durable before it does.
pub fn reconcile(shards: &mut [Shard], logs: &mut [&mut dyn LogSink]) -> Result<Reconciled, ReplayError> {
    assert_eq!(shards.len(), logs.len(), "one log per shard");
    for (index, shard) in shards.iter().enumerate() {
        assert_eq!(usize::from(shard.id()), index, "shards in id order");
        assert_eq!(
            usize::from(shard.config.shards),
            shards.len(),
            "every shard of the node"
        );
    }
    // Sum each (name, epoch) over the shards; BTreeMap order is ascending epoch within a name.
    let mut parts: BTreeMap<(Vec<u8>, u64), i64> = BTreeMap::new();
    for shard in shards.iter() {
        for (name, epoch, amount) in shard.recovered_slot_parts() {
            let sum = parts.entry((name, epoch)).or_insert(0);
            *sum = sum.checked_add(amount).ok_or(ReplayError::Inconsistent {
                lsn: shard.lsn,
                reason: "the recovered slot parts of one epoch overflow",
            })?;
        }
    }
    let mut done = Reconciled::default();
    for ((name, epoch), amount) in &parts {
        let owner = usize::from(shard_of(name, shards.len() as u16));
        if shards[owner].fold_recovered(name, *epoch, *amount, &mut *logs[owner])? {
            done.folded += 1;
        } else {
            done.ignored += 1;
        }
    }
    for (shard, log) in shards.iter_mut().zip(logs.iter_mut()) {
        done.closed += shard.close_recovered_splits(&mut **log) as u64;
    }
    let lsns: Vec<u64> = shards.iter().map(Shard::lsn).collect();
    for shard in shards.iter_mut() {
        shard.clear_recovered_slot_parts(&lsns);
    }
    Ok(done)
}

impl Shard {
    /// Applies the record the original shard logged at `lsn` (which must be this shard's lsn + 1),
    /// reproducing the state that change left. `time_ms` is the record's time as the log knows it:
    /// it becomes the time of a keyed write's dedup entry and of a RESET's audit record (replay is
    /// exact when it is the apply time; otherwise the dedup window shifts by the difference).
    /// On error nothing changed; the log does not belong to this state and recovery must stop.
    pub fn replay(&mut self, lsn: u64, time_ms: u64, record: &LogRecord<'_>) -> Result<(), ReplayError> {
        assert!(
            self.owned_splits.is_empty(),
            "replay rebuilds a shard before it serves, so it has no live split counters"
        );
        let expected = self.lsn + 1;
        if lsn != expected {
            return Err(ReplayError::LsnGap { expected, found: lsn });
        }
        let name = record.name();
        if name.is_empty() || name.len() > NAME_BYTES_MAX {
            return Err(inconsistent(lsn, "the name is empty or too long"));
        }
        let key = Key::new(name);
        let is_slot = matches!(record, LogRecord::SlotIncr { .. });
        if self.owns(key) == is_slot {
            return Err(inconsistent(
                lsn,
                if is_slot {
                    "a slot increment of a name this shard owns"
                } else {
                    "a record of a name another shard owns"
                },
            ));
        }
        match *record {
            LogRecord::Incr { delta, key: keyed, .. } => self.replay_incr(lsn, time_ms, key, delta, keyed),
            LogRecord::Create {
                kind,
                initial,
                min,
                max,
                ..
            } => self.replay_create(lsn, key, kind, initial, (min, max)),
            LogRecord::Cas { new, .. } => self.replay_cas(lsn, key, new),
            LogRecord::AddBounded { delta, key: idem, .. } => self.replay_add_bounded(lsn, time_ms, key, delta, idem),
            LogRecord::Reset {
                old,
                new,
                reason,
                client,
                ..
            } => self.replay_reset(lsn, time_ms, key, (old, new), reason, client),
            LogRecord::SlotIncr { epoch, delta, .. } => self.replay_slot_incr(lsn, time_ms, key, epoch, delta),
            LogRecord::Split { epoch, .. } => self.replay_split(lsn, key, epoch),
            LogRecord::Merge { epoch, amount, .. } => self.merge_recovered(lsn, key, epoch, amount).map(|_| ()),
        }?;
        assert_eq!(self.lsn + 1, lsn, "only this function moves the lsn during replay");
        self.lsn = lsn;
        Ok(())
    }

    /// Recovery, on every shard after replay: the slot parts it holds of other shards' split
    /// counters, as (name, epoch, amount), sorted.
    pub fn recovered_slot_parts(&self) -> Vec<(Vec<u8>, u64, i64)> {
        let mut parts: Vec<(Vec<u8>, u64, i64)> = self
            .recovered_parts
            .iter()
            .map(|(&(name_id, epoch), part)| {
                let name = self.table.name_at(name_id, part.name_len).to_vec();
                (name, epoch, part.amount)
            })
            .collect();
        parts.sort_unstable();
        parts
    }

    /// Recovery, at the owner of `name`: folds `amount`, the sum over every shard of the recovered
    /// slot parts of `name`'s split `epoch`. Call it in ascending epoch order for each name, after
    /// every shard replayed. Returns false if the owner's log had merged that epoch (the parts are
    /// inside that `Merge`: see the module doc), true if it added `amount` to the counter (creating
    /// it, analytic, if the owner's log lost its creation) and logged `Merge { epoch, amount }`.
    /// An epoch the owner still has open from an older split, with no parts, is closed first with
    /// `Merge { amount: 0 }`.
    pub fn fold_recovered(
        &mut self,
        name: &[u8],
        epoch: u64,
        amount: i64,
        log: &mut dyn LogSink,
    ) -> Result<bool, ReplayError> {
        assert!(self.owned_splits.is_empty(), "reconcile runs before the shard serves");
        let key = Key::new(name);
        assert!(self.owns(key), "a slot part is folded by its counter's owner");
        let mut log = LsnCheck::new(log, self.lsn);
        let folded = self.fold_checked(key, epoch, amount, &mut log);
        assert_eq!(log.lsn, self.lsn, "every lsn assigned is recorded");
        folded
    }

    fn fold_checked(
        &mut self,
        key: Key<'_>,
        epoch: u64,
        amount: i64,
        log: &mut dyn LogSink,
    ) -> Result<bool, ReplayError> {
        if let Some(entry) = self.table.find(key.hash, key.name).copied() {
            if self.merged_epoch(entry.name_at).is_some_and(|merged| epoch <= merged) {
                return Ok(false);
            }
            if let Some(open) = self.recovered_open.get(&entry.name_at).copied() {
                if open.epoch > epoch {
                    // The owner split again after `epoch`, so it merged `epoch` before, durably
                    // (its log is a prefix): the merge would be on record.
                    return Err(inconsistent(
                        self.lsn + 1,
                        "a slot part of an epoch before the open split that the owner never merged",
                    ));
                }
                if open.epoch < epoch {
                    self.fold_commit(key, open.epoch, 0, log)?;
                }
            }
        }
        self.fold_commit(key, epoch, amount, log)?;
        Ok(true)
    }

    fn fold_commit(&mut self, key: Key<'_>, epoch: u64, amount: i64, log: &mut dyn LogSink) -> Result<(), ReplayError> {
        let id = self.merge_recovered(self.lsn + 1, key, epoch, amount)?;
        let record = LogRecord::Merge {
            name: key.name,
            name_id: id.name_at,
            epoch,
            amount,
        };
        commit(&mut self.lsn, log, &record);
        Ok(())
    }

    /// Recovery, on every shard after all folds: closes the split epochs still open (no shard held
    /// a part of them) with `Merge { epoch, amount: 0 }`, so the log has a merge for every split.
    /// Returns how many it closed.
    pub fn close_recovered_splits(&mut self, log: &mut dyn LogSink) -> usize {
        assert!(self.owned_splits.is_empty(), "reconcile runs before the shard serves");
        let mut open: Vec<(u32, RecoveredSplit)> = self.recovered_open.iter().map(|(&at, &s)| (at, s)).collect();
        open.sort_unstable_by_key(|&(name_at, _)| name_at);
        let mut log = LsnCheck::new(log, self.lsn);
        for &(name_at, split) in &open {
            self.recovered_open.remove(&name_at);
            let id = CounterId {
                hash: split.table_hash,
                name_at,
                name_len: split.name_len,
            };
            self.set_merged_epoch(id, split.epoch);
            let record = LogRecord::Merge {
                name: self.table.name_of(id),
                name_id: name_at,
                epoch: split.epoch,
                amount: 0,
            };
            commit(&mut self.lsn, &mut log, &record);
        }
        assert_eq!(log.lsn, self.lsn, "every lsn assigned is recorded");
        open.len()
    }

    /// Recovery, on every shard last: drops the recovered slot parts. `lsns[i]` is shard i's lsn
    /// after its folds: the `Merge` records that now account for the dropped parts are at or below
    /// it, so this shard's snapshots depend on those logs being durable to there.
    pub fn clear_recovered_slot_parts(&mut self, lsns: &[u64]) {
        assert_eq!(lsns.len(), usize::from(self.config.shards), "one lsn per shard");
        for (&(name_id, _), part) in &self.recovered_parts {
            let owner = shard_of(self.table.name_at(name_id, part.name_len), self.config.shards);
            self.split_cache.owe(owner, lsns[usize::from(owner)]);
        }
        self.recovered_parts.clear();
    }

    pub(super) fn owns(&self, key: Key<'_>) -> bool {
        key.name_hash % u64::from(self.config.shards) == u64::from(self.config.shard)
    }

    /// The counter a record names.
    fn replay_find(&self, key: Key<'_>) -> Option<Entry> {
        self.table.find(key.hash, key.name).copied()
    }

    /// Checks that a new name fits in the arena, before anything changes.
    fn replay_room(&self, lsn: u64, key: Key<'_>) -> Result<(), ReplayError> {
        match self.table.next_name_at(key.name.len()) {
            None => Err(ReplayError::TableFull { lsn }),
            Some(_) => Ok(()),
        }
    }

    fn replay_create_entry(
        &mut self,
        lsn: u64,
        key: Key<'_>,
        value: i64,
        kind: CounterKind,
        bounds: (i64, i64),
    ) -> Result<CounterId, ReplayError> {
        self.create_entry(key, value, kind, bounds)
            .map_err(|_| ReplayError::TableFull { lsn })
    }

    fn replay_incr(
        &mut self,
        lsn: u64,
        time_ms: u64,
        key: Key<'_>,
        delta: i64,
        keyed: Option<Keyed>,
    ) -> Result<(), ReplayError> {
        let existing = self.replay_find(key);
        let (value, split) = match existing {
            Some(entry) => {
                let next = entry
                    .value
                    .checked_add(delta)
                    .ok_or_else(|| inconsistent(lsn, "the increment overflows"))?;
                if entry.is(FLAG_STRICT) && !within(self.bounds_of(&entry), next) {
                    return Err(inconsistent(lsn, "the increment leaves the counter's bounds"));
                }
                let split = self.recovered_open.contains_key(&entry.name_at);
                if split && next.unsigned_abs() > SPLIT_VALUE_ABS_MAX as u64 {
                    return Err(inconsistent(lsn, "the increment leaves the split range"));
                }
                (next, split)
            }
            None => {
                let (_, bounds) = self.namespace_kind(key.name);
                if !within(bounds, delta) {
                    return Err(inconsistent(
                        lsn,
                        "the creating increment leaves its namespace's bounds",
                    ));
                }
                self.replay_room(lsn, key)?;
                (delta, false)
            }
        };
        // At the owner of a split counter the answer included the slots, which replay cannot see.
        if keyed.is_some_and(|keyed| !split && keyed.value != value) {
            return Err(inconsistent(lsn, "the logged answer differs from the replayed value"));
        }
        let id = match existing {
            Some(entry) => {
                self.table.get_mut(entry.id(key.hash)).value = value;
                entry.id(key.hash)
            }
            None => {
                let (kind, bounds) = self.namespace_kind(key.name);
                self.replay_create_entry(lsn, key, value, kind, bounds)?
            }
        };
        self.windows
            .record(NameRef::new(id.name_at, id.name_len), delta, time_ms);
        if let Some(keyed) = keyed {
            self.dedup
                .replay_record(keyed.key, key.name_hash, delta, keyed.value, lsn, time_ms);
        }
        Ok(())
    }

    fn replay_create(
        &mut self,
        lsn: u64,
        key: Key<'_>,
        kind: CounterKind,
        initial: i64,
        bounds: (i64, i64),
    ) -> Result<(), ReplayError> {
        if self.replay_find(key).is_some() {
            return Err(inconsistent(lsn, "CREATE of a counter that exists"));
        }
        let valid = match kind {
            CounterKind::Analytic => bounds == BOUNDS_FULL,
            CounterKind::Strict => bounds.0 <= bounds.1 && within(bounds, initial),
        };
        if !valid {
            return Err(inconsistent(lsn, "CREATE with invalid bounds"));
        }
        self.replay_room(lsn, key)?;
        self.replay_create_entry(lsn, key, initial, kind, bounds)?;
        Ok(())
    }

    /// The strict counter a CAS or bounded add changed, or `None` plus its namespace bounds if the
    /// op created it.
    fn replay_strict_target(&self, lsn: u64, key: Key<'_>) -> Result<(Option<Entry>, (i64, i64)), ReplayError> {
        match self.replay_find(key) {
            Some(entry) if !entry.is(FLAG_STRICT) => Err(inconsistent(lsn, "a strict op on an analytic counter")),
            Some(entry) => Ok((Some(entry), self.bounds_of(&entry))),
            None => match self.namespace_kind(key.name) {
                (CounterKind::Strict, bounds) => {
                    self.replay_room(lsn, key)?;
                    Ok((None, bounds))
                }
                (CounterKind::Analytic, _) => Err(inconsistent(
                    lsn,
                    "a strict op created a name outside strict namespaces",
                )),
            },
        }
    }

    fn replay_set_strict(
        &mut self,
        lsn: u64,
        key: Key<'_>,
        existing: Option<Entry>,
        value: i64,
        bounds: (i64, i64),
    ) -> Result<CounterId, ReplayError> {
        match existing {
            Some(entry) => {
                self.table.get_mut(entry.id(key.hash)).value = value;
                Ok(entry.id(key.hash))
            }
            None => self.replay_create_entry(lsn, key, value, CounterKind::Strict, bounds),
        }
    }

    fn replay_cas(&mut self, lsn: u64, key: Key<'_>, new: i64) -> Result<(), ReplayError> {
        let (existing, bounds) = self.replay_strict_target(lsn, key)?;
        if !within(bounds, new) {
            return Err(inconsistent(lsn, "CAS to a value outside the bounds"));
        }
        self.replay_set_strict(lsn, key, existing, new, bounds).map(|_| ())
    }

    fn replay_add_bounded(
        &mut self,
        lsn: u64,
        time_ms: u64,
        key: Key<'_>,
        delta: i64,
        idem: Option<u128>,
    ) -> Result<(), ReplayError> {
        let (existing, bounds) = self.replay_strict_target(lsn, key)?;
        let current = existing.map_or(0, |entry| entry.value);
        let next = match current.checked_add(delta) {
            Some(next) if within(bounds, next) => next,
            _ => return Err(inconsistent(lsn, "a bounded add outside the bounds")),
        };
        let id = self.replay_set_strict(lsn, key, existing, next, bounds)?;
        self.windows
            .record(NameRef::new(id.name_at, id.name_len), delta, time_ms);
        if let Some(idem) = idem {
            self.dedup.replay_record(idem, key.name_hash, delta, next, lsn, time_ms);
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn replay_reset(
        &mut self,
        lsn: u64,
        time_ms: u64,
        key: Key<'_>,
        (old, new): (i64, i64),
        reason: &[u8],
        client: &[u8],
    ) -> Result<(), ReplayError> {
        let Some(entry) = self.replay_find(key) else {
            return Err(inconsistent(lsn, "RESET of a counter that does not exist"));
        };
        if self.recovered_open.contains_key(&entry.name_at) {
            return Err(inconsistent(lsn, "RESET of a split counter without its merge"));
        }
        if entry.value != old {
            return Err(inconsistent(lsn, "RESET's old value differs from the replayed value"));
        }
        if entry.is(FLAG_STRICT) && !within(self.bounds_of(&entry), new) {
            return Err(inconsistent(lsn, "RESET to a value outside the bounds"));
        }
        self.table.get_mut(entry.id(key.hash)).value = new;
        self.audit.push(ResetRecord {
            time_ms,
            name: key.name.to_vec(),
            old,
            new,
            reason: reason.to_vec(),
            client: client.to_vec(),
            lsn,
        });
        Ok(())
    }

    fn replay_slot_incr(
        &mut self,
        lsn: u64,
        time_ms: u64,
        key: Key<'_>,
        epoch: u64,
        delta: i64,
    ) -> Result<(), ReplayError> {
        if epoch == 0 {
            return Err(inconsistent(lsn, "epoch 0"));
        }
        let stored = self.table.foreign_find(key.hash, key.name);
        let part = match stored {
            Some(at) => self.recovered_parts.get(&(at, epoch)).map_or(0, |part| part.amount),
            None => {
                self.replay_room(lsn, key)?;
                0
            }
        };
        let part = match part.checked_add(delta) {
            Some(part) if part.unsigned_abs() <= SPLIT_SLOT_ABS_MAX as u64 => part,
            _ => return Err(inconsistent(lsn, "a slot part leaves the slot range")),
        };
        let name_id = match stored {
            Some(at) => at,
            None => self
                .table
                .foreign_insert(key.hash, key.name)
                .map_err(|_| ReplayError::TableFull { lsn })?,
        };
        let part = RecoveredPart {
            name_len: key.name.len() as u8,
            amount: part,
        };
        self.recovered_parts.insert((name_id, epoch), part);
        self.windows
            .record(NameRef::new(name_id, key.name.len() as u8), delta, time_ms);
        Ok(())
    }

    fn replay_split(&mut self, lsn: u64, key: Key<'_>, epoch: u64) -> Result<(), ReplayError> {
        if epoch != lsn {
            return Err(inconsistent(lsn, "a split's epoch is not its lsn"));
        }
        let Some(entry) = self.replay_find(key) else {
            return Err(inconsistent(lsn, "split of a counter that does not exist"));
        };
        if entry.is(FLAG_STRICT) {
            return Err(inconsistent(lsn, "split of a strict counter"));
        }
        if self.recovered_open.contains_key(&entry.name_at) {
            return Err(inconsistent(lsn, "split of a split counter"));
        }
        if self.merged_epoch(entry.name_at).is_some_and(|merged| epoch <= merged) {
            return Err(inconsistent(lsn, "split at an epoch not above the last merged one"));
        }
        if entry.value.unsigned_abs() > SPLIT_ELIGIBLE_ABS_MAX {
            return Err(inconsistent(lsn, "split of a counter beyond the split range"));
        }
        let split = RecoveredSplit {
            epoch,
            table_hash: key.hash,
            name_len: entry.name_len,
        };
        self.recovered_open.insert(entry.name_at, split);
        Ok(())
    }

    /// A `Merge` of `epoch` at `lsn`, replayed or folded: adds `amount` to the owner's part
    /// (creating the counter, analytic, if the log lost its creation), closes the epoch if open and
    /// makes it the name's last merged epoch.
    fn merge_recovered(&mut self, lsn: u64, key: Key<'_>, epoch: u64, amount: i64) -> Result<CounterId, ReplayError> {
        if epoch == 0 {
            return Err(inconsistent(lsn, "epoch 0"));
        }
        let Some(entry) = self.replay_find(key) else {
            self.replay_room(lsn, key)?;
            let id = self.replay_create_entry(lsn, key, amount, CounterKind::Analytic, BOUNDS_FULL)?;
            self.set_merged_epoch(id, epoch);
            return Ok(id);
        };
        if entry.is(FLAG_STRICT) {
            return Err(inconsistent(lsn, "merge of a strict counter"));
        }
        if self.merged_epoch(entry.name_at).is_some_and(|merged| epoch <= merged) {
            return Err(inconsistent(lsn, "merge of an epoch not above the last merged one"));
        }
        if self
            .recovered_open
            .get(&entry.name_at)
            .is_some_and(|open| open.epoch != epoch)
        {
            return Err(inconsistent(lsn, "merge of another epoch than the open split"));
        }
        let value = entry
            .value
            .checked_add(amount)
            .ok_or_else(|| inconsistent(lsn, "the merge overflows"))?;
        let id = entry.id(key.hash);
        self.table.get_mut(id).value = value;
        self.recovered_open.remove(&entry.name_at);
        self.set_merged_epoch(id, epoch);
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tally_proto::{Reply, Request};

    use super::*;
    use crate::config::{NamespaceRule, ShardConfig};
    use crate::log::owned::{Owned, Recorder};
    use crate::log::NullLog;
    use crate::shard::{Applied, Canonical, Ctx};
    use crate::split::SplitRegistry;

    fn config(shard: u16, shards: u16) -> ShardConfig {
        let mut config = ShardConfig::new(shard, shards);
        config.namespaces.push(NamespaceRule {
            prefix: b"inv:".to_vec(),
            kind: CounterKind::Strict,
            min: Some(0),
            max: Some(100),
        });
        config
    }

    fn node(shards: u16) -> Vec<Shard> {
        let registry = Arc::new(SplitRegistry::new(shards));
        (0..shards)
            .map(|id| Shard::new(config(id, shards), registry.clone()))
            .collect()
    }

    fn owned_name(prefix: &str, shard: u16, shards: u16) -> Vec<u8> {
        (0..)
            .map(|i| format!("{prefix}{i}").into_bytes())
            .find(|name| shard_of(name, shards) == shard)
            .expect("some name hashes to every shard")
    }

    fn apply(shard: &mut Shard, op: &Request<'_>, log: &mut Recorder) -> Reply {
        let ctx = Ctx {
            now_ms: log.now_ms,
            client: b"tester",
        };
        match shard.apply(op, &ctx, log) {
            Applied::Done(Ok(reply)) => reply,
            other => panic!("{op:?}: {other:?}"),
        }
    }

    fn incr<'a>(name: &'a [u8], delta: i64, key: Option<u128>) -> Request<'a> {
        Request::Incr { name, delta, key }
    }

    fn get(shard: &mut Shard, name: &[u8]) -> i64 {
        let op = Request::Get {
            name,
            fresh: true,
            token: None,
        };
        match shard.apply(&op, &Ctx { now_ms: 0, client: b"" }, &mut NullLog) {
            Applied::Done(Ok(Reply::Get { value, .. })) => value,
            other => panic!("{other:?}"),
        }
    }

    fn replay_all(shard: &mut Shard, log: &Recorder) {
        for (lsn, time_ms, record) in &log.records {
            shard.replay(*lsn, *time_ms, &record.record()).expect("a log replays");
        }
    }

    fn records(log: &Recorder) -> Vec<LogRecord<'_>> {
        log.records.iter().map(|(_, _, record)| record.record()).collect()
    }

    #[test]
    fn every_op_record_replays_to_the_state_the_op_left() {
        let mut shard = Shard::new(config(0, 1), Arc::new(SplitRegistry::new(1)));
        let mut log = Recorder::default();
        let ops = [
            incr(b"a", 5, None),
            incr(b"a", -2, None),
            incr(b"a", 4, Some(7)),
            Request::Create {
                name: b"s",
                kind: CounterKind::Strict,
                initial: 3,
                min: Some(0),
                max: Some(10),
            },
            Request::Create {
                name: b"b",
                kind: CounterKind::Analytic,
                initial: -9,
                min: None,
                max: None,
            },
            Request::Cas {
                name: b"s",
                expected: 3,
                new: 8,
            },
            Request::Cas {
                name: b"inv:x",
                expected: 0,
                new: 50,
            },
            Request::AddBounded {
                name: b"s",
                delta: -6,
                min: 0,
                max: 10,
                key: Some(8),
            },
            Request::AddBounded {
                name: b"inv:y",
                delta: 30,
                min: 0,
                max: 40,
                key: None,
            },
            incr(b"inv:z", 99, Some(9)),
            Request::Reset {
                name: b"s",
                value: 1,
                reason: b"audit me",
            },
            incr(b"a", 1, Some(7 + (1 << 100))),
        ];
        let mut states: Vec<Canonical> = vec![shard.canonical()];
        for (step, op) in ops.iter().enumerate() {
            log.now_ms = 1_000 + step as u64 * 10;
            apply(&mut shard, op, &mut log);
            states.push(shard.canonical());
        }
        assert_eq!(log.records.len(), ops.len(), "one record per op");
        let mut replayed = Shard::new(config(0, 1), Arc::new(SplitRegistry::new(1)));
        for ((lsn, time_ms, record), state) in log.records.iter().zip(&states[1..]) {
            replayed.replay(*lsn, *time_ms, &record.record()).unwrap();
            assert_eq!(&replayed.canonical(), state, "after lsn {lsn}: {record:?}");
        }
        // The WAL may hand records back with its own ids: replay finds names by their bytes.
        let mut zeroed = Shard::new(config(0, 1), Arc::new(SplitRegistry::new(1)));
        for (lsn, time_ms, record) in &log.records {
            let record = match record.record() {
                LogRecord::Incr { name, delta, key, .. } => LogRecord::Incr {
                    name,
                    name_id: 0,
                    delta,
                    key,
                },
                other => other,
            };
            zeroed.replay(*lsn, *time_ms, &record).unwrap();
        }
        assert_eq!(zeroed.canonical(), replayed.canonical());
        let kinds: Vec<&str> = records(&log)
            .iter()
            .map(|r| match r {
                LogRecord::Incr { key: Some(_), .. } => "keyed incr",
                LogRecord::Incr { .. } => "incr",
                LogRecord::Create { .. } => "create",
                LogRecord::Cas { .. } => "cas",
                LogRecord::AddBounded { .. } => "add",
                LogRecord::Reset { .. } => "reset",
                _ => "other",
            })
            .collect();
        for kind in ["keyed incr", "incr", "create", "cas", "add", "reset"] {
            assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
        }
        // Keyed writes still dedup on the replayed shard, with the first answer.
        let mut sink = Recorder {
            now_ms: 2_000,
            ..Recorder::default()
        };
        assert!(matches!(
            apply(&mut replayed, &incr(b"a", 4, Some(7)), &mut sink),
            Reply::Incr { value: 7, token, .. } if token.lsn == 3
        ));
        assert!(sink.records.is_empty());
        assert_eq!(
            replayed.audit().next().map(|r| (r.time_ms, r.client.as_slice())),
            Some((1_100, &b"tester"[..]))
        );
    }

    #[test]
    fn split_slot_and_merge_records_carry_epochs() {
        let mut shards = node(2);
        let name = owned_name("hot", 0, 2);
        let (mut log0, mut log1) = (Recorder::default(), Recorder::default());
        apply(&mut shards[0], &incr(&name, 10, None), &mut log0);
        assert!(shards[0].split_now(&name, &mut log0));
        apply(&mut shards[1], &incr(&name, 3, None), &mut log1);
        apply(&mut shards[1], &incr(&name, 4, None), &mut log1);
        apply(&mut shards[0], &incr(&name, 1, Some(5)), &mut log0);
        assert!(shards[0].merge_now(&name, &mut log0));
        // After the merge the slot is closed: the non-owner forwards and logs nothing.
        let ctx = Ctx { now_ms: 0, client: b"" };
        assert_eq!(
            shards[1].apply(&incr(&name, 1, None), &ctx, &mut log1),
            Applied::Forward(0)
        );
        let id0 = 0;
        let id1 = 0; // the first name stored in shard 1's arena
        assert_eq!(
            records(&log0),
            vec![
                LogRecord::Incr {
                    name: &name,
                    name_id: id0,
                    delta: 10,
                    key: None
                },
                LogRecord::Split {
                    name: &name,
                    name_id: id0,
                    epoch: 2
                },
                LogRecord::Incr {
                    name: &name,
                    name_id: id0,
                    delta: 1,
                    key: Some(Keyed { key: 5, value: 18 })
                },
                LogRecord::Merge {
                    name: &name,
                    name_id: id0,
                    epoch: 2,
                    amount: 7
                },
            ]
        );
        assert_eq!(
            records(&log1),
            vec![
                LogRecord::SlotIncr {
                    name: &name,
                    name_id: id1,
                    epoch: 2,
                    delta: 3
                },
                LogRecord::SlotIncr {
                    name: &name,
                    name_id: id1,
                    epoch: 2,
                    delta: 4
                },
            ]
        );
        // Replay: the owner keeps its part while the split is open, and merges the logged amount.
        let mut replayed = node(2);
        for (lsn, time_ms, record) in &log0.records {
            replayed[0].replay(*lsn, *time_ms, &record.record()).unwrap();
            if *lsn == 2 {
                assert_eq!(replayed[0].canonical().open, vec![(id0, 2)]);
            }
        }
        assert_eq!(replayed[0].canonical().merged, vec![(id0, 2)]);
        assert!(replayed[0].canonical().open.is_empty());
        replay_all(&mut replayed[1], &log1);
        assert_eq!(replayed[1].recovered_slot_parts(), vec![(name.clone(), 2, 7)]);
        assert_eq!(replayed[1].lsn(), 2);
        let (mut r0, mut r1) = (Recorder::default(), Recorder::default());
        let done = reconcile(&mut replayed, &mut [&mut r0, &mut r1]).unwrap();
        assert_eq!(
            done,
            Reconciled {
                folded: 0,
                ignored: 1,
                closed: 0
            }
        );
        assert!(r0.records.is_empty() && r1.records.is_empty());
        assert_eq!(get(&mut replayed[0], &name), 18);
        assert_eq!(get(&mut shards[0], &name), 18);
    }

    #[test]
    fn replay_refuses_what_does_not_fit_and_changes_nothing() {
        let mut shards = node(2);
        let mine = owned_name("m", 0, 2);
        let theirs = owned_name("t", 1, 2);
        let (q, fresh) = (owned_name("inv:q", 0, 2), owned_name("inv:new", 0, 2));
        let mut log = Recorder::default();
        apply(&mut shards[0], &incr(&mine, 5, None), &mut log);
        apply(
            &mut shards[0],
            &Request::Create {
                name: &q,
                kind: CounterKind::Strict,
                initial: 5,
                min: Some(0),
                max: Some(10),
            },
            &mut log,
        );
        let mut replayed = node(2);
        replay_all(&mut replayed[0], &log);
        let before = replayed[0].canonical();
        let bad: Vec<(u64, LogRecord<'_>)> = vec![
            (
                4,
                LogRecord::Incr {
                    name: &mine,
                    name_id: 0,
                    delta: 1,
                    key: None,
                },
            ),
            (
                2,
                LogRecord::Incr {
                    name: &mine,
                    name_id: 0,
                    delta: 1,
                    key: None,
                },
            ),
            (
                3,
                LogRecord::Incr {
                    name: &theirs,
                    name_id: 6,
                    delta: 1,
                    key: None,
                },
            ),
            (
                3,
                LogRecord::SlotIncr {
                    name: &mine,
                    name_id: 0,
                    epoch: 1,
                    delta: 1,
                },
            ),
            (
                3,
                LogRecord::Incr {
                    name: &mine,
                    name_id: 0,
                    delta: i64::MAX,
                    key: None,
                },
            ),
            (
                3,
                LogRecord::Incr {
                    name: &mine,
                    name_id: 0,
                    delta: 1,
                    key: Some(Keyed { key: 1, value: 99 }),
                },
            ),
            (
                3,
                LogRecord::Incr {
                    name: &q,
                    name_id: mine.len() as u32,
                    delta: 6,
                    key: None,
                },
            ),
            (
                3,
                LogRecord::Cas {
                    name: &fresh,
                    name_id: 0,
                    new: 101,
                },
            ),
            (
                3,
                LogRecord::Reset {
                    name: &mine,
                    name_id: 0,
                    old: 4,
                    new: 0,
                    reason: b"",
                    client: b"",
                },
            ),
            (
                3,
                LogRecord::Split {
                    name: &mine,
                    name_id: 0,
                    epoch: 2,
                },
            ),
            (
                3,
                LogRecord::Merge {
                    name: &mine,
                    name_id: 0,
                    epoch: 0,
                    amount: 1,
                },
            ),
            (
                3,
                LogRecord::Cas {
                    name: &mine,
                    name_id: 0,
                    new: 1,
                },
            ),
            (
                3,
                LogRecord::Create {
                    name: &mine,
                    name_id: 0,
                    kind: CounterKind::Analytic,
                    initial: 0,
                    min: i64::MIN,
                    max: i64::MAX,
                },
            ),
            (
                3,
                LogRecord::Incr {
                    name: b"",
                    name_id: 0,
                    delta: 1,
                    key: None,
                },
            ),
        ];
        for (lsn, record) in &bad {
            let error = replayed[0].replay(*lsn, 0, record).expect_err("must be refused");
            match (lsn, error) {
                (3, ReplayError::Inconsistent { lsn: 3, .. }) => {}
                (_, ReplayError::LsnGap { expected: 3, found }) => assert_eq!(found, *lsn),
                (_, other) => panic!("{record:?}: {other:?}"),
            }
            assert_eq!(replayed[0].canonical(), before, "{record:?} changed the state");
        }
        // A merge of an epoch at or below the last merged one is refused too.
        let good = LogRecord::Merge {
            name: &mine,
            name_id: 0,
            epoch: 9,
            amount: 1,
        };
        replayed[0].replay(3, 0, &good).unwrap();
        let again = LogRecord::Merge {
            name: &mine,
            name_id: 0,
            epoch: 9,
            amount: 1,
        };
        assert!(matches!(
            replayed[0].replay(4, 0, &again),
            Err(ReplayError::Inconsistent { .. })
        ));
        let split = LogRecord::Split {
            name: &mine,
            name_id: 0,
            epoch: 4,
        };
        assert!(matches!(
            replayed[0].replay(4, 0, &split),
            Err(ReplayError::Inconsistent { .. })
        ));
    }

    /// The owner's log lost the split and everything after the counter's first increment; the
    /// other shard's slot increments of that epoch are durable.
    fn lost_split() -> (Vec<Shard>, Vec<u8>, Recorder, Recorder) {
        let mut shards = node(2);
        let name = owned_name("hot", 0, 2);
        let (mut log0, mut log1) = (Recorder::default(), Recorder::default());
        apply(&mut shards[0], &incr(&name, 1, None), &mut log0);
        for i in 0..4 {
            apply(
                &mut shards[0],
                &incr(&owned_name(&format!("pad{i}-"), 0, 2), 1, None),
                &mut log0,
            );
        }
        assert!(shards[0].split_now(&name, &mut log0));
        assert_eq!(shards[0].lsn(), 6);
        apply(&mut shards[1], &incr(&name, 3, None), &mut log1);
        apply(&mut shards[1], &incr(&name, 4, None), &mut log1);
        log0.records.truncate(1);
        let mut recovered = node(2);
        replay_all(&mut recovered[0], &log0);
        replay_all(&mut recovered[1], &log1);
        (recovered, name, log0, log1)
    }

    #[test]
    fn fold_adds_parts_of_a_lost_merge_and_later_splits_wait_for_the_epoch() {
        let (mut shards, name, log0, log1) = lost_split();
        assert_eq!(shards[1].recovered_slot_parts(), vec![(name.clone(), 6, 7)]);
        let (mut r0, mut r1) = (Recorder::default(), Recorder::default());
        let done = reconcile(&mut shards, &mut [&mut r0, &mut r1]).unwrap();
        assert_eq!(done.folded, 1);
        assert_eq!(
            records(&r0),
            vec![LogRecord::Merge {
                name: &name,
                name_id: 0,
                epoch: 6,
                amount: 7
            }]
        );
        assert_eq!(shards[0].lsn(), 2);
        assert_eq!(get(&mut shards[0], &name), 8);
        assert!(shards[1].recovered_slot_parts().is_empty());
        // Epoch 6 was merged: splits at lsns 3..=6 would reuse it, so they wait.
        for lsn in 3..=6 {
            assert!(!shards[0].split_now(&name, &mut r0), "a split at lsn {lsn}");
            apply(&mut shards[0], &incr(&owned_name("other", 0, 2), 1, None), &mut r0);
        }
        assert!(shards[0].split_now(&name, &mut r0));
        assert!(matches!(records(&r0).last(), Some(LogRecord::Split { epoch: 7, .. })));
        // A second recovery of the same logs plus the reconcile's records counts the parts once.
        let full0 = Recorder {
            records: log0.records.iter().chain(&r0.records).cloned().collect(),
            ..Recorder::default()
        };
        let mut again = node(2);
        replay_all(&mut again[0], &full0);
        replay_all(&mut again[1], &log1);
        let done = reconcile(&mut again, &mut [&mut Recorder::default(), &mut Recorder::default()]).unwrap();
        assert_eq!(done.ignored, 1);
        assert_eq!(done.closed, 1, "the new split at epoch 7 had no slot increments");
        assert_eq!(get(&mut again[0], &name), 8);
    }

    #[test]
    fn fold_creates_a_counter_the_owner_lost_entirely() {
        let (_, name, mut log0, log1) = lost_split();
        log0.records.clear();
        let mut shards = node(2);
        replay_all(&mut shards[1], &log1);
        let mut r0 = Recorder::default();
        assert_eq!(shards[0].fold_recovered(&name, 6, 7, &mut r0), Ok(true));
        assert_eq!(shards[0].fold_recovered(&name, 6, 7, &mut r0), Ok(false));
        assert_eq!(shards[0].fold_recovered(&name, 2, 7, &mut r0), Ok(false));
        assert_eq!(r0.records.len(), 1);
        shards[1].clear_recovered_slot_parts(&[1, 2]);
        assert_eq!(get(&mut shards[0], &name), 7);
        // The Merge record alone recreates the counter on replay.
        let mut again = node(2);
        replay_all(&mut again[0], &r0);
        assert_eq!(again[0].canonical().counters, shards[0].canonical().counters);
        assert_eq!(again[0].canonical().merged, vec![(0, 6)]);
        // The dropped parts make shard 1's next snapshots depend on shard 0's fold.
        let deps = shards[1].snapshot(&mut Vec::new());
        assert_eq!(deps.durable_lsn_required, vec![(0, 1)]);
    }

    #[test]
    fn fold_closes_an_older_open_epoch_and_refuses_an_unmerged_one_below_it() {
        let mut shards = node(2);
        let name = owned_name("hot", 0, 2);
        let mut log0 = Recorder::default();
        apply(&mut shards[0], &incr(&name, 1, None), &mut log0);
        assert!(shards[0].split_now(&name, &mut log0));
        let mut recovered = node(2);
        replay_all(&mut recovered[0], &log0);
        let mut r0 = Recorder::default();
        assert!(matches!(
            recovered[0].fold_recovered(&name, 1, 5, &mut r0),
            Err(ReplayError::Inconsistent { .. })
        ));
        assert_eq!(recovered[0].fold_recovered(&name, 9, 5, &mut r0), Ok(true));
        assert_eq!(
            records(&r0),
            vec![
                LogRecord::Merge {
                    name: &name,
                    name_id: 0,
                    epoch: 2,
                    amount: 0
                },
                LogRecord::Merge {
                    name: &name,
                    name_id: 0,
                    epoch: 9,
                    amount: 5
                },
            ]
        );
        assert_eq!(recovered[0].close_recovered_splits(&mut r0), 0);
        assert_eq!(get(&mut recovered[0], &name), 6);
    }

    #[test]
    fn open_epochs_without_parts_are_closed_with_zero() {
        let mut shards = node(2);
        let name = owned_name("hot", 0, 2);
        let mut log0 = Recorder::default();
        apply(&mut shards[0], &incr(&name, 1, None), &mut log0);
        assert!(shards[0].split_now(&name, &mut log0));
        let mut recovered = node(2);
        replay_all(&mut recovered[0], &log0);
        let mut r0 = Recorder::default();
        assert_eq!(recovered[0].close_recovered_splits(&mut r0), 1);
        assert_eq!(
            records(&r0),
            vec![LogRecord::Merge {
                name: &name,
                name_id: 0,
                epoch: 2,
                amount: 0
            }]
        );
        assert_eq!(recovered[0].lsn(), 3);
        assert_eq!(get(&mut recovered[0], &name), 1);
    }

    #[test]
    #[should_panic(expected = "reconcile before serving")]
    fn a_recovering_shard_does_not_serve() {
        let (mut shards, name, _, _) = lost_split();
        shards[1].apply(&incr(&name, 1, None), &Ctx { now_ms: 0, client: b"" }, &mut NullLog);
    }

    #[test]
    fn shards_can_be_recovered_on_one_thread_and_moved_to_their_own() {
        fn check<T: Send>() {}
        check::<Shard>();
        let (mut shards, name, _, _) = lost_split();
        reconcile(&mut shards, &mut [&mut NullLog, &mut NullLog]).unwrap();
        let owner = shards.swap_remove(0);
        let value = std::thread::spawn(move || {
            let mut owner = owner;
            get(&mut owner, &name)
        });
        assert_eq!(value.join().unwrap(), 8);
    }

    #[test]
    fn owned_copies_replay() {
        // The recorder's copies are faithful enough to replay from (guards the test helper).
        let record = LogRecord::Incr {
            name: b"x",
            name_id: 0,
            delta: 2,
            key: None,
        };
        let mut shard = Shard::new(config(0, 1), Arc::new(SplitRegistry::new(1)));
        shard.replay(1, 0, &Owned::of(&record).record()).unwrap();
        assert_eq!(get(&mut shard, b"x"), 2);
    }
}
