//! The online store: the latest value of each (feature, key), for serving. [`OnlineStore`] is
//! the one interface; this file holds it and the embedded implementation, `redis.rs` the Redis
//! one. Both keep one record per entity key and class (`record.rs`), holding every feature of
//! the class written for that key, so a run writes each output row once whatever the number of
//! its outputs. The embedded store keeps the records of consecutive keys together, in blocks
//! of a few records keyed by their first key: a backfill of millions of keys, written in key
//! order, makes a tree operation per block instead of per key. Writes are upserts per
//! feature: a value with an older feature time never replaces a newer one, an equal one
//! replaces it. Keys are the entity's primary key as text
//! (`42`, `u-17`), so every key type is stored exactly; values are JSON. A feature's class is
//! the part of its name before the first `.` (`transaction` of `transaction.user.count__1d`).

use crate::record::{self, Entry};
use crate::{StoreError, io};
use arrow::array::{Array, StringArray};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

/// Where runs leave the latest values and the online API reads them.
pub trait OnlineStore: Send + Sync + std::fmt::Debug {
    /// A writer for one run's values of several features.
    fn writer(&self) -> Result<Box<dyn OnlineWriter>, StoreError>;

    fn get(&self, feature: &str, key: &str) -> Result<Option<OnlineValue>, StoreError> {
        Ok(self.get_many(feature, &[key])?.pop().flatten())
    }

    /// The values of several keys of one feature, in the keys' order.
    fn get_many(
        &self,
        feature: &str,
        keys: &[&str],
    ) -> Result<Vec<Option<OnlineValue>>, StoreError> {
        Ok(self
            .get_features(&[feature], keys)?
            .into_iter()
            .map(|mut v| v.pop().flatten())
            .collect())
    }

    /// The values of several features of several keys: one row per key, in the keys' order,
    /// holding the features in their order. Each key's record is read once.
    fn get_features(
        &self,
        features: &[&str],
        keys: &[&str],
    ) -> Result<Vec<Vec<Option<OnlineValue>>>, StoreError>;

    /// Number of keys holding a value of `feature` (reads every record of its class).
    fn count(&self, feature: &str) -> Result<usize, StoreError>;

    /// Upserts `(key, feature_time, json)` rows of one feature with a writer of its own;
    /// returns how many were stored.
    fn put(&self, feature: &str, rows: Vec<(String, i64, String)>) -> Result<usize, StoreError> {
        let mut w = self.writer()?;
        let n = w.put(feature, rows)?;
        w.commit()?;
        Ok(n)
    }
}

/// The values of one write: per row a key and a feature time shared by every feature, and one
/// JSON value per feature, all aligned by position.
pub struct OnlineRows<'a> {
    pub keys: &'a StringArray,
    pub times: &'a [i64],
    /// Each feature's name and values; names are unique.
    pub values: Vec<(&'a str, &'a StringArray)>,
}

/// Features of one class and their values, sorted by name.
pub(crate) type ClassValues<'a> = Vec<(&'a str, &'a StringArray)>;

impl OnlineRows<'_> {
    /// The features grouped by class, each group sorted by name (the records' order).
    pub(crate) fn by_class(&self) -> Result<BTreeMap<&str, ClassValues<'_>>, StoreError> {
        let mut groups: BTreeMap<&str, ClassValues<'_>> = BTreeMap::new();
        for &(f, v) in &self.values {
            if v.len() != self.keys.len() || self.times.len() != self.keys.len() {
                return Err(StoreError::Io {
                    what: "online write",
                    reason: format!("the values of {f} are not aligned with the keys"),
                });
            }
            groups.entry(class_of(f)).or_default().push((f, v));
        }
        for g in groups.values_mut() {
            g.sort_by_key(|(f, _)| *f);
            if let Some(w) = g.windows(2).find(|w| w[0].0 == w[1].0) {
                return Err(StoreError::Io {
                    what: "online write",
                    reason: format!("feature {} given twice in one write", w[0].0),
                });
            }
        }
        Ok(groups)
    }
}

/// The positions of `features` grouped by the class whose records hold them.
pub(crate) fn slots_by_class<'a>(features: &[&'a str]) -> BTreeMap<&'a str, Vec<usize>> {
    let mut classes: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, f) in features.iter().enumerate() {
        classes.entry(class_of(f)).or_default().push(i);
    }
    classes
}

/// The class whose records hold `feature`.
pub fn class_of(feature: &str) -> &str {
    feature.split_once('.').map_or(feature, |(c, _)| c)
}

/// Upserts of a run. What becomes visible when depends on the store: the embedded store shows
/// a writer's values at `commit`, or a chunk of [`REDB_COMMIT_RECORDS`] records at a time for a
/// larger write; Redis shows each batch as it is written. Both are idempotent, so a run
/// repeated after a crash leaves the same values.
pub trait OnlineWriter: Send {
    /// Upserts `(key, feature_time, json)` rows of `feature` through [`Self::put_ordered`];
    /// returns how many were stored (not older than what was there).
    fn put(
        &mut self,
        feature: &str,
        rows: Vec<(String, i64, String)>,
    ) -> Result<usize, StoreError> {
        let keys = StringArray::from_iter_values(rows.iter().map(|r| r.0.as_str()));
        let times: Vec<i64> = rows.iter().map(|r| r.1).collect();
        let values = StringArray::from_iter_values(rows.iter().map(|r| r.2.as_str()));
        let order = key_order(&keys, &times)?;
        let rows = OnlineRows {
            keys: &keys,
            times: &times,
            values: vec![(feature, &values)],
        };
        self.put_ordered(&rows, &order)
    }

    /// Upserts the rows at `order` (positions into `rows`, in the order [`key_order`] gives);
    /// returns how many values (rows times features) were stored.
    fn put_ordered(&mut self, rows: &OnlineRows<'_>, order: &[u32]) -> Result<usize, StoreError>;

    fn commit(self: Box<Self>) -> Result<(), StoreError>;
}

/// A table of keys to bytes: a class's blocks (first key to block), or an earlier format's
/// records (key to record).
fn records(table: &str) -> TableDefinition<'_, &'static str, &'static [u8]> {
    TableDefinition::new(table)
}

/// The table name of a class's blocks; other tables are the feature numbers, the store's
/// format, or an earlier layout's (records per key, or one table per feature).
fn blocks_table(class: &str) -> String {
    format!("blocks:{class}")
}

/// Records a block holds at most, and the bytes past which a block is split: small enough
/// that a daily run's scattered keys rewrite little, large enough that a backfill makes a
/// sixteenth of the tree operations.
const BLOCK_RECORDS: usize = 16;
const BLOCK_BYTES: usize = 4096;

type BlockTable<'t> = redb::Table<'t, &'static str, &'static [u8]>;

/// A stored block: its first key and its bytes.
type Block = (String, Vec<u8>);

/// The block `key` belongs in: the last whose first key is not greater, else the first (a key
/// before every block); none in an empty table. Returns its first key and its bytes.
fn block_of(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<Block>, StoreError> {
    let fail = |e: &dyn std::fmt::Display| io("online read")(e);
    let floor = t.range::<&str>(..=key).map_err(|e| fail(&e))?.next_back();
    let found = match floor {
        Some(row) => Some(row.map_err(|e| fail(&e))?),
        None => t.first().map_err(|e| fail(&e))?,
    };
    Ok(found.map(|(k, v)| (k.value().to_string(), v.value().to_vec())))
}

/// Where a write of keys from `key` on goes: the block `key` belongs in (as [`block_of`]) and
/// the first key of the block after it, below which every key belongs in the same block.
fn locate(t: &BlockTable<'_>, key: &str) -> Result<(Option<Block>, Option<String>), StoreError> {
    let fail = |e: &dyn std::fmt::Display| io("online write")(e);
    let found = block_of(t, key)?;
    let Some((first, _)) = &found else {
        return Ok((None, None));
    };
    let mut after = t
        .range::<&str>((
            std::ops::Bound::Excluded(first.as_str()),
            std::ops::Bound::Unbounded,
        ))
        .map_err(|e| fail(&e))?;
    let upper = match after.next() {
        Some(row) => Some(row.map_err(|e| fail(&e))?.0.value().to_string()),
        None => None,
    };
    Ok((found, upper))
}

/// Replaces the block that started at `first` (none: a new one) with `records` (key order,
/// unique keys, at least one), split into blocks of near-equal counts within the limits.
fn rewrite_block(
    t: &mut BlockTable<'_>,
    first: Option<&str>,
    records: &[(&str, &[u8])],
    bytes: &mut Vec<u8>,
) -> Result<(), StoreError> {
    let fail = |e: &dyn std::fmt::Display| io("online write")(e);
    if let Some(first) = first
        && records.first().is_some_and(|(k, _)| *k != first)
    {
        t.remove(first).map_err(|e| fail(&e))?;
    }
    let size: usize = records.iter().map(|(k, r)| k.len() + r.len() + 2).sum();
    // At least one block, and no more blocks than records.
    let blocks = records
        .len()
        .div_ceil(BLOCK_RECORDS)
        .max(size.div_ceil(BLOCK_BYTES))
        .clamp(1, records.len().max(1));
    for block in records.chunks(records.len().div_ceil(blocks).max(1)) {
        bytes.clear();
        record::encode_block(block, bytes);
        t.insert(block[0].0, bytes.as_slice())
            .map_err(|e| fail(&e))?;
    }
    Ok(())
}

/// `old` and `new` records (each in key order, unique keys) in one key order, `new`'s record
/// where a key is in both.
fn merge_records<'a>(
    old: &[(&'a str, &'a [u8])],
    new: &[(&'a str, &'a [u8])],
) -> Vec<(&'a str, &'a [u8])> {
    let mut out = Vec::with_capacity(old.len() + new.len());
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        match (old.get(i), new.get(j)) {
            (Some(o), Some(n)) if o.0 < n.0 => {
                out.push(*o);
                i += 1;
            }
            (Some(o), Some(n)) if o.0 == n.0 => {
                out.push(*n);
                i += 1;
                j += 1;
            }
            (_, Some(n)) => {
                out.push(*n);
                j += 1;
            }
            (Some(o), None) => {
                out.push(*o);
                i += 1;
            }
            (None, None) => break,
        }
    }
    out
}

/// Stores `fresh` records (key order, unique keys), replacing those of equal keys.
fn store_records(t: &mut BlockTable<'_>, fresh: &[(&str, &[u8])]) -> Result<(), StoreError> {
    let mut bytes = Vec::new();
    let mut at = 0;
    while at < fresh.len() {
        let (found, upper) = locate(t, fresh[at].0)?;
        let end =
            at + fresh[at..].partition_point(|(k, _)| upper.as_deref().is_none_or(|u| *k < u));
        let old = match &found {
            Some((_, b)) => record::decode_block(b)?,
            None => vec![],
        };
        let merged = merge_records(&old, &fresh[at..end]);
        rewrite_block(
            t,
            found.as_ref().map(|(f, _)| f.as_str()),
            &merged,
            &mut bytes,
        )?;
        at = end;
    }
    Ok(())
}

/// A class's features by number, as records refer to them.
fn names(table: &str) -> TableDefinition<'_, u32, &'static str> {
    TableDefinition::new(table)
}

fn names_table(class: &str) -> String {
    format!("names:{class}")
}

/// The store's format: `records` holds the record format's version.
const META: TableDefinition<'static, &'static str, u64> = TableDefinition::new("meta");
/// Blocks of records of numbered features ([`record::encode_block`], [`record::encode`]).
/// Stores of earlier formats are migrated when they open: 2 kept a record per key in a
/// `records:{class}` table; 1 (no format written) kept records of the first format
/// ([`record::decode_v1`]) there.
const RECORD_FORMAT: u64 = 3;

/// A class's feature numbers by name.
fn read_names(
    t: &impl ReadableTable<u32, &'static str>,
) -> Result<HashMap<String, u32>, StoreError> {
    let mut out = HashMap::new();
    for row in t.iter().map_err(|e| io("online read")(&e))? {
        let (id, name) = row.map_err(|e| io("online read")(&e))?;
        out.insert(name.value().to_string(), id.value());
    }
    Ok(out)
}

/// Records one redb transaction holds at most: redb keeps a transaction's pages in memory until
/// it commits, so a larger write (a backfill of millions of keys) commits in chunks and its
/// memory stays bounded.
pub const REDB_COMMIT_RECORDS: usize = 1 << 20;

/// Upserts of several features in redb transactions of at most [`REDB_COMMIT_RECORDS`]
/// records; nothing is visible before the first of them commits.
pub struct RedbWriter {
    /// Always set between calls (taken only to commit it).
    tx: Option<redb::WriteTransaction>,
    /// Where the next transaction begins (none: one transaction, as a migration needs).
    db: Option<Arc<Database>>,
    /// Records written by the open transaction.
    pending: usize,
    /// Feature numbers per class, as read and assigned so far.
    names: HashMap<String, HashMap<String, u32>>,
}

impl OnlineWriter for RedbWriter {
    fn put_ordered(&mut self, rows: &OnlineRows<'_>, order: &[u32]) -> Result<usize, StoreError> {
        let mut written = 0;
        for (class, features) in rows.by_class()? {
            written += self.put_records(class, rows, &features, order)?;
        }
        self.pending += order.len();
        if let Some(db) = &self.db
            && self.pending >= REDB_COMMIT_RECORDS
        {
            // One write transaction at a time: the next begins once this one has committed.
            // A chunk's commit is not synced to disk: the writer's last commit is, and a
            // process that dies before it leaves the store as the last synced commit left it
            // (the run is then repeated whole).
            if let Some(mut tx) = self.tx.take() {
                tx.set_durability(redb::Durability::None)
                    .map_err(|e| io("online commit")(&e))?;
                tx.commit().map_err(|e| io("online commit")(&e))?;
            }
            self.tx = Some(db.begin_write().map_err(|e| io("online write")(&e))?);
            self.pending = 0;
        }
        Ok(written)
    }

    fn commit(self: Box<Self>) -> Result<(), StoreError> {
        match self.tx {
            Some(tx) => tx.commit().map_err(|e| io("online commit")(&e)),
            None => Err(io("online commit")(&"a transaction that failed to begin")),
        }
    }
}

impl RedbWriter {
    /// The open transaction.
    fn tx(&self) -> Result<&redb::WriteTransaction, StoreError> {
        self.tx
            .as_ref()
            .ok_or_else(|| io("online write")(&"a transaction that failed to begin"))
    }

    /// The numbers of `class`'s `features`, numbering the new ones.
    fn ids(&mut self, class: &str, features: &[&str]) -> Result<Vec<u32>, StoreError> {
        let fail = |e: &dyn std::fmt::Display| io("online write")(e);
        let mut known = match self.names.remove(class) {
            Some(k) => k,
            None => read_names(
                &self
                    .tx()?
                    .open_table(names(&names_table(class)))
                    .map_err(|e| fail(&e))?,
            )?,
        };
        let mut added = Vec::new();
        let mut out = Vec::with_capacity(features.len());
        for f in features {
            let id = match known.get(*f) {
                Some(&id) => id,
                None => {
                    let id = u32::try_from(known.len()).map_err(|e| fail(&e))?;
                    known.insert(f.to_string(), id);
                    added.push((id, *f));
                    id
                }
            };
            out.push(id);
        }
        if !added.is_empty() {
            let mut t = self
                .tx()?
                .open_table(names(&names_table(class)))
                .map_err(|e| fail(&e))?;
            for (id, f) in added {
                t.insert(id, f).map_err(|e| fail(&e))?;
            }
        }
        self.names.insert(class.to_string(), known);
        Ok(out)
    }

    fn put_records(
        &mut self,
        class: &str,
        rows: &OnlineRows<'_>,
        features: &[(&str, &StringArray)],
        order: &[u32],
    ) -> Result<usize, StoreError> {
        let ids = self.ids(class, &features.iter().map(|(f, _)| *f).collect::<Vec<_>>())?;
        // The features in their numbers' order, as records hold them.
        let mut by_id: Vec<(u32, &StringArray)> = ids
            .into_iter()
            .zip(features.iter().map(|(_, v)| *v))
            .collect();
        by_id.sort_unstable_by_key(|(id, _)| *id);
        let mut t = self
            .tx()?
            .open_table(records(&blocks_table(class)))
            .map_err(|e| io("online write")(&e))?;
        let mut written = 0;
        let mut new = Vec::with_capacity(features.len());
        let (mut bytes, mut block_bytes) = (Vec::new(), Vec::new());
        // The rows' records of one block at a time: each key's rows folded into the record the
        // block holds (or the key's earlier row in this write), then the block rewritten once.
        let mut at = 0;
        while at < order.len() {
            let (found, upper) = locate(&t, rows.keys.value(order[at] as usize))?;
            let old = match &found {
                Some((_, b)) => record::decode_block(b)?,
                None => vec![],
            };
            // The new records, back to back, and each one's key and end.
            let mut arena: Vec<u8> = Vec::new();
            let mut fresh: Vec<(&str, usize)> = Vec::new();
            let mut o = 0;
            while at < order.len() {
                let i = order[at] as usize;
                let (key, time) = (rows.keys.value(i), rows.times[i]);
                if upper.as_deref().is_some_and(|u| key >= u) {
                    break;
                }
                at += 1;
                new.clear();
                new.extend(by_id.iter().map(|(id, v)| Entry {
                    id: *id,
                    time,
                    json: v.value(i),
                }));
                while o < old.len() && old[o].0 < key {
                    o += 1;
                }
                let repeated = fresh.last().is_some_and(|(k, _)| *k == key);
                let start = match repeated {
                    true => fresh.len().checked_sub(2).map_or(0, |p| fresh[p].1),
                    false => arena.len(),
                };
                let previous: Option<&[u8]> = match repeated {
                    true => Some(&arena[start..]),
                    false => old.get(o).filter(|r| r.0 == key).map(|r| r.1),
                };
                bytes.clear();
                match previous {
                    None => {
                        record::encode(&new, &mut bytes);
                        written += new.len();
                    }
                    Some(p) => {
                        let (merged, taken) = record::merge(&record::decode(p)?, &new);
                        record::encode(&merged, &mut bytes);
                        written += taken;
                    }
                }
                arena.truncate(start);
                arena.extend_from_slice(&bytes);
                match repeated {
                    true => {
                        if let Some(last) = fresh.last_mut() {
                            last.1 = arena.len();
                        }
                    }
                    false => fresh.push((key, arena.len())),
                }
            }
            let mut begin = 0;
            let fresh: Vec<(&str, &[u8])> = fresh
                .iter()
                .map(|&(k, end)| {
                    let r = (k, &arena[begin..end]);
                    begin = end;
                    r
                })
                .collect();
            let merged = merge_records(&old, &fresh);
            rewrite_block(
                &mut t,
                found.as_ref().map(|(f, _)| f.as_str()),
                &merged,
                &mut block_bytes,
            )?;
        }
        Ok(written)
    }
}

/// The positions of the set keys, ordered by (key, time): the order [`OnlineWriter::put_ordered`]
/// inserts fastest in. Sorted on both cores when there are many. Positions are 32-bit: more
/// rows than that in one write is refused.
pub fn key_order(keys: &StringArray, times: &[i64]) -> Result<Vec<u32>, StoreError> {
    let n = u32::try_from(keys.len()).map_err(|_| StoreError::Io {
        what: "online write",
        reason: format!(
            "{} rows in one write; at most {} are supported",
            keys.len(),
            u32::MAX
        ),
    })?;
    let cmp = |a: &u32, b: &u32| {
        let (a, b) = (*a as usize, *b as usize);
        keys.value(a)
            .cmp(keys.value(b))
            .then(times[a].cmp(&times[b]))
    };
    let mut order: Vec<u32> = (0..n).filter(|&i| keys.is_valid(i as usize)).collect();
    if order.len() < 1 << 16 {
        order.sort_unstable_by(cmp);
        return Ok(order);
    }
    let mid = order.len() / 2;
    let (lo, hi) = order.split_at_mut(mid);
    std::thread::scope(|s| {
        s.spawn(|| lo.sort_unstable_by(cmp));
        hi.sort_unstable_by(cmp);
    });
    // Merge the two sorted halves.
    let mut merged = Vec::with_capacity(order.len());
    let (mut i, mut j) = (0, mid);
    while i < mid && j < order.len() {
        if cmp(&order[j], &order[i]).is_lt() {
            merged.push(order[j]);
            j += 1;
        } else {
            merged.push(order[i]);
            i += 1;
        }
    }
    merged.extend_from_slice(&order[i..mid]);
    merged.extend_from_slice(&order[j..]);
    Ok(merged)
}

/// A stored value: its feature time (microseconds) and the value as JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnlineValue {
    pub feature_time: i64,
    pub json: String,
}

/// The embedded online store: `online.redb` in the state directory.
#[derive(Debug)]
pub struct RedbOnlineStore {
    db: Arc<Database>,
}

/// A table of the layout before records: one per feature, key to (feature time, JSON).
type FeatureTable<'a> = TableDefinition<'a, &'static str, (i64, &'static str)>;

impl RedbOnlineStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let store = RedbOnlineStore {
            db: Arc::new(crate::open_db("online store", path)?),
        };
        // A store this release cannot read (or migrate) is named in the error.
        store.migrate().map_err(|e| match e {
            StoreError::Io { what, reason } => StoreError::Io {
                what,
                reason: format!("{}: {reason}", path.display()),
            },
            other => other,
        })?;
        Ok(store)
    }

    /// Brings a store of an earlier format to the current one, in one transaction, so that a
    /// store kept from an earlier release serves the same values: records of the first format
    /// are rewritten with numbered features, and the values of the layout before records (one
    /// table per feature) are moved into records. A new store is marked current.
    fn migrate(&self) -> Result<(), StoreError> {
        let fail = |e: &dyn std::fmt::Display| io("online store migration")(e);
        let (tables, format) = {
            let tx = self.db.begin_read().map_err(|e| fail(&e))?;
            let tables: Vec<String> = tx
                .list_tables()
                .map_err(|e| fail(&e))?
                .map(|t| t.name().to_string())
                .collect();
            let format = match tx.open_table(META) {
                Ok(t) => t.get("records").map_err(|e| fail(&e))?.map(|v| v.value()),
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(fail(&e)),
            };
            (tables, format)
        };
        // The classes whose records are kept per key, and whether of the first format.
        let (per_key, first_format): (Vec<&str>, bool) = match format {
            Some(RECORD_FORMAT) => (vec![], false),
            Some(2) => (
                tables
                    .iter()
                    .filter_map(|t| t.strip_prefix("records:"))
                    .collect(),
                false,
            ),
            Some(v) if v > RECORD_FORMAT => {
                return Err(fail(&format!(
                    "records of format {v}, newer than this release's ({RECORD_FORMAT})"
                )));
            }
            Some(v) => return Err(fail(&format!("records of an unknown format {v}"))),
            None => (
                tables
                    .iter()
                    .filter_map(|t| t.strip_prefix("records:"))
                    .collect(),
                true,
            ),
        };
        let old: Vec<&String> = tables
            .iter()
            .filter(|n| {
                !n.starts_with("records:")
                    && !n.starts_with("blocks:")
                    && !n.starts_with("names:")
                    && n.as_str() != "meta"
            })
            .collect();
        if format == Some(RECORD_FORMAT) && old.is_empty() {
            return Ok(());
        }
        let tx = self.db.begin_write().map_err(|e| fail(&e))?;
        let mut w = RedbWriter {
            tx: Some(tx),
            db: None,
            pending: 0,
            names: HashMap::new(),
        };
        for class in per_key {
            // A chunk of records at a time, in key order, into blocks.
            let mut after: Option<String> = None;
            loop {
                let chunk: Vec<(String, Vec<u8>)> = {
                    let t = w
                        .tx()?
                        .open_table(records(&format!("records:{class}")))
                        .map_err(|e| fail(&e))?;
                    let range = match &after {
                        Some(k) => t.range::<&str>((
                            std::ops::Bound::Excluded(k.as_str()),
                            std::ops::Bound::Unbounded,
                        )),
                        None => t.range::<&str>(..),
                    }
                    .map_err(|e| fail(&e))?;
                    let mut chunk = Vec::new();
                    for row in range.take(1 << 16) {
                        let (k, v) = row.map_err(|e| fail(&e))?;
                        chunk.push((k.value().to_string(), v.value().to_vec()));
                    }
                    chunk
                };
                let Some((last, _)) = chunk.last() else {
                    break;
                };
                after = Some(last.clone());
                let mut bytes = Vec::new();
                let mut converted = Vec::with_capacity(chunk.len());
                for (key, old_bytes) in &chunk {
                    if !first_format {
                        record::decode(old_bytes)?;
                        converted.push((key.as_str(), old_bytes.clone()));
                        continue;
                    }
                    let old = record::decode_v1(old_bytes)?;
                    let ids = w.ids(class, &old.iter().map(|e| e.feature).collect::<Vec<_>>())?;
                    let mut entries: Vec<Entry> = old
                        .iter()
                        .zip(ids)
                        .map(|(e, id)| Entry {
                            id,
                            time: e.time,
                            json: e.json,
                        })
                        .collect();
                    entries.sort_unstable_by_key(|e| e.id);
                    bytes.clear();
                    record::encode(&entries, &mut bytes);
                    converted.push((key.as_str(), bytes.clone()));
                }
                let converted: Vec<(&str, &[u8])> =
                    converted.iter().map(|(k, b)| (*k, b.as_slice())).collect();
                let mut t = w
                    .tx()?
                    .open_table(records(&blocks_table(class)))
                    .map_err(|e| fail(&e))?;
                store_records(&mut t, &converted)?;
            }
            w.tx()?
                .delete_table(records(&format!("records:{class}")))
                .map_err(|e| fail(&e))?;
        }
        w.tx()?
            .open_table(META)
            .map_err(|e| fail(&e))?
            .insert("records", RECORD_FORMAT)
            .map_err(|e| fail(&e))?;
        for feature in old {
            let (keys, times, values) = {
                let t = w
                    .tx()?
                    .open_table(FeatureTable::new(feature))
                    .map_err(|e| fail(&e))?;
                let mut keys = Vec::new();
                let mut times = Vec::new();
                let mut values = Vec::new();
                for row in t.iter().map_err(|e| fail(&e))? {
                    let (k, v) = row.map_err(|e| fail(&e))?;
                    let (time, json) = v.value();
                    keys.push(k.value().to_string());
                    times.push(time);
                    values.push(json.to_string());
                }
                (StringArray::from(keys), times, StringArray::from(values))
            };
            let order: Vec<u32> = (0..keys.len() as u32).collect();
            let rows = OnlineRows {
                keys: &keys,
                times: &times,
                values: vec![(feature.as_str(), &values)],
            };
            w.put_ordered(&rows, &order)?;
            w.tx()?
                .delete_table(FeatureTable::new(feature))
                .map_err(|e| fail(&e))?;
        }
        Box::new(w).commit()
    }
}

impl OnlineStore for RedbOnlineStore {
    /// Transactions of at most [`REDB_COMMIT_RECORDS`] records (one for a daily run's writes):
    /// readers see a run's values a chunk at a time, each chunk whole.
    fn writer(&self) -> Result<Box<dyn OnlineWriter>, StoreError> {
        Ok(Box::new(RedbWriter {
            tx: Some(self.db.begin_write().map_err(|e| io("online write")(&e))?),
            db: Some(self.db.clone()),
            pending: 0,
            names: HashMap::new(),
        }))
    }

    fn get_features(
        &self,
        features: &[&str],
        keys: &[&str],
    ) -> Result<Vec<Vec<Option<OnlineValue>>>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| io("online read")(&e))?;
        let mut classes = Vec::new();
        for (class, slots) in slots_by_class(features) {
            let table = match tx.open_table(records(&blocks_table(class))) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => continue,
                Err(e) => return Err(io("online read")(&e)),
            };
            let known = match tx.open_table(names(&names_table(class))) {
                Ok(t) => read_names(&t)?,
                Err(redb::TableError::TableDoesNotExist(_)) => continue,
                Err(e) => return Err(io("online read")(&e)),
            };
            // Each asked feature's slot and number (none: never written).
            let slots: Vec<(usize, u32)> = slots
                .into_iter()
                .filter_map(|i| known.get(features[i]).map(|&id| (i, id)))
                .collect();
            classes.push((table, slots));
        }
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let mut row = vec![None; features.len()];
            for (table, slots) in &classes {
                let Some((_, block)) = block_of(table, key)? else {
                    continue;
                };
                let block = record::decode_block(&block)?;
                let Ok(at) = block.binary_search_by(|(k, _)| (*k).cmp(key)) else {
                    continue;
                };
                let entries = record::decode(block[at].1)?;
                for &(i, id) in slots {
                    row[i] = entries.iter().find(|e| e.id == id).map(|e| OnlineValue {
                        feature_time: e.time,
                        json: e.json.to_string(),
                    });
                }
            }
            out.push(row);
        }
        Ok(out)
    }

    fn count(&self, feature: &str) -> Result<usize, StoreError> {
        let tx = self.db.begin_read().map_err(|e| io("online read")(&e))?;
        let t = match tx.open_table(records(&blocks_table(class_of(feature)))) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
            Err(e) => return Err(io("online read")(&e)),
        };
        let id = match tx.open_table(names(&names_table(class_of(feature)))) {
            Ok(t) => read_names(&t)?.get(feature).copied(),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(io("online read")(&e)),
        };
        let Some(id) = id else {
            return Ok(0);
        };
        let mut n = 0;
        for row in t.iter().map_err(|e| io("online read")(&e))? {
            let (_, v) = row.map_err(|e| io("online read")(&e))?;
            for (_, r) in record::decode_block(v.value())? {
                if record::decode(r)?.iter().any(|e| e.id == id) {
                    n += 1;
                }
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store of an earlier layout at `path`: `records:transaction` holding the record
    /// `record` encodes for each of `keys` keys (`000000`, `000001`, ...), and whatever `more`
    /// writes in the same transaction.
    fn per_key_store(
        path: &Path,
        keys: usize,
        record: impl Fn(usize, &mut Vec<u8>),
        more: impl FnOnce(&redb::WriteTransaction),
    ) {
        let db = redb::Database::create(path).expect("create");
        let tx = db.begin_write().expect("write");
        {
            let mut t = tx
                .open_table(records("records:transaction"))
                .expect("table");
            let mut bytes = Vec::new();
            for k in 0..keys {
                bytes.clear();
                record(k, &mut bytes);
                t.insert(format!("{k:06}").as_str(), bytes.as_slice())
                    .expect("insert");
            }
        }
        more(&tx);
        tx.commit().expect("commit");
    }

    /// A stored value as `get_features` returns it.
    fn v(feature_time: i64, json: &str) -> Option<OnlineValue> {
        Some(OnlineValue {
            feature_time,
            json: json.into(),
        })
    }

    /// Both the one-core and the two-core paths give the order of a plain sort by (key, time),
    /// null keys left out; keys repeat with different times, as versions of an entity do.
    #[test]
    fn key_order_equals_a_plain_sort() {
        for n in [1_000usize, 200_003] {
            let mut state = 0x2545_f491_4f6c_dd1du64 ^ n as u64;
            let mut next = move || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state
            };
            let keys: StringArray = (0..n)
                .map(|_| match next() % 10 {
                    0 => None,
                    r => Some(format!("k{}", next() % (n as u64 / 3 + r))),
                })
                .collect();
            let times: Vec<i64> = (0..n).map(|_| (next() % 50) as i64 - 25).collect();
            let mut want: Vec<u32> = (0..n as u32)
                .filter(|&i| keys.is_valid(i as usize))
                .collect();
            want.sort_by(|&a, &b| {
                let (a, b) = (a as usize, b as usize);
                (keys.value(a), times[a]).cmp(&(keys.value(b), times[b]))
            });
            let got = key_order(&keys, &times).expect("order");
            let pairs = |o: &[u32]| -> Vec<(String, i64)> {
                o.iter()
                    .map(|&i| (keys.value(i as usize).to_string(), times[i as usize]))
                    .collect()
            };
            assert_eq!(pairs(&got), pairs(&want), "{n} rows");
            let mut seen = got.clone();
            seen.sort_unstable();
            seen.dedup();
            assert_eq!(seen.len(), want.len(), "every set key once, {n} rows");
        }
    }

    #[test]
    fn newest_feature_time_wins() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = RedbOnlineStore::open(&dir.path().join("online.redb")).expect("open");
        s.put(
            "transaction.is_fraud",
            vec![("1".to_string(), 10, "true".to_string())],
        )
        .expect("put");
        s.put(
            "transaction.is_fraud",
            vec![("1".to_string(), 5, "false".to_string())],
        )
        .expect("put");
        assert_eq!(
            s.get("transaction.is_fraud", "1").expect("get"),
            Some(OnlineValue {
                feature_time: 10,
                json: "true".into()
            })
        );
        s.put(
            "transaction.is_fraud",
            vec![
                ("1".to_string(), 10, "false".to_string()),
                ("2".to_string(), 1, "true".to_string()),
            ],
        )
        .expect("put");
        assert_eq!(
            s.get("transaction.is_fraud", "1")
                .expect("get")
                .map(|v| v.json),
            Some("false".into())
        );
        assert_eq!(s.count("transaction.is_fraud").expect("count"), 2);
        assert_eq!(s.get("transaction.is_fraud", "3").expect("get"), None);
    }

    /// A process that dies in a large write, after its first chunk committed (unsynced) and
    /// before its last commit, leaves the store as it was before the write: the test runs
    /// itself as a child that writes and aborts, then opens the store the child left.
    #[test]
    fn a_write_killed_after_a_chunk_commit_leaves_the_store_as_before() {
        const CHILD: &str = "SLATE_ONLINE_KILLED_WRITE_DIR";
        let feature = "transaction.fraud_score";
        let rows = |start: usize, end: usize| {
            let keys = StringArray::from_iter_values((start..end).map(|i| format!("{i:08}")));
            let values = StringArray::from_iter_values((start..end).map(|i| i.to_string()));
            (
                keys,
                (start..end).map(|i| i as i64).collect::<Vec<i64>>(),
                values,
            )
        };
        if let Ok(dir) = std::env::var(CHILD) {
            let s = RedbOnlineStore::open(&Path::new(&dir).join("online.redb")).expect("open");
            let mut w = s.writer().expect("writer");
            let (keys, times, values) = rows(0, REDB_COMMIT_RECORDS + 10);
            let r = OnlineRows {
                keys: &keys,
                times: &times,
                values: vec![(feature, &values)],
            };
            let order: Vec<u32> = (0..keys.len() as u32).collect();
            w.put_ordered(&r, &order).expect("put");
            // The write passed a chunk's size, so it is committed (visible, not synced),
            // beside the value written before.
            assert_eq!(s.count(feature).expect("count"), REDB_COMMIT_RECORDS + 11);
            // Dies before the writer's last commit, as a killed run does.
            std::process::abort();
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("online.redb");
        {
            let s = RedbOnlineStore::open(&path).expect("open");
            s.put(feature, vec![("before".into(), 1, "1".into())])
                .expect("put");
        }
        let status = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "online::tests::a_write_killed_after_a_chunk_commit_leaves_the_store_as_before",
                "--nocapture",
            ])
            .env(CHILD, dir.path())
            .status()
            .expect("child");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            status.signal(),
            Some(6),
            "the child dies by SIGABRT after its checks: {status}"
        );
        let s = RedbOnlineStore::open(&path).expect("reopen");
        assert_eq!(s.count(feature).expect("count"), 1, "only the synced value");
        assert_eq!(s.get(feature, "00000000").expect("get"), None);
        assert_eq!(
            s.get(feature, "before").expect("get"),
            Some(OnlineValue {
                feature_time: 1,
                json: "1".into()
            })
        );
    }

    /// A write of more than [`REDB_COMMIT_RECORDS`] records commits in chunks: the first chunk
    /// is visible before the writer commits, and after it every record is there once.
    #[test]
    fn a_large_write_commits_in_chunks_and_keeps_every_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = RedbOnlineStore::open(&dir.path().join("online.redb")).expect("open");
        let total = REDB_COMMIT_RECORDS + REDB_COMMIT_RECORDS / 4;
        let mut w = s.writer().expect("writer");
        let batch = 1 << 17;
        for start in (0..total).step_by(batch) {
            let end = (start + batch).min(total);
            let keys = StringArray::from_iter_values((start..end).map(|i| format!("{i:08}")));
            let times: Vec<i64> = (start..end).map(|i| i as i64).collect();
            let values = StringArray::from_iter_values((start..end).map(|i| i.to_string()));
            let rows = OnlineRows {
                keys: &keys,
                times: &times,
                values: vec![("transaction.fraud_score", &values)],
            };
            let order: Vec<u32> = (0..keys.len() as u32).collect();
            w.put_ordered(&rows, &order).expect("put");
        }
        assert_eq!(
            s.count("transaction.fraud_score").expect("count"),
            REDB_COMMIT_RECORDS,
            "the first chunk is committed, the rest is not yet"
        );
        w.commit().expect("commit");
        assert_eq!(s.count("transaction.fraud_score").expect("count"), total);
        for i in [0, REDB_COMMIT_RECORDS - 1, REDB_COMMIT_RECORDS, total - 1] {
            assert_eq!(
                s.get("transaction.fraud_score", &format!("{i:08}"))
                    .expect("get"),
                Some(OnlineValue {
                    feature_time: i as i64,
                    json: i.to_string()
                })
            );
        }
    }

    /// A store of first-format records (feature names and full times in each) opens with the
    /// same values, rewritten with numbered features, and takes new values after.
    #[test]
    fn a_store_of_a_newer_format_is_refused_naming_its_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("online.redb");
        drop(RedbOnlineStore::open(&path).expect("a new store"));
        {
            let db = redb::Database::open(&path).expect("open");
            let tx = db.begin_write().expect("write");
            tx.open_table(META)
                .expect("meta")
                .insert("records", RECORD_FORMAT + 1)
                .expect("insert");
            tx.commit().expect("commit");
        }
        let err = match RedbOnlineStore::open(&path) {
            Ok(_) => panic!("a newer format is refused"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains(&path.display().to_string())
                && err.contains(&format!("format {}", RECORD_FORMAT + 1)),
            "{err}"
        );
    }

    #[test]
    fn a_store_of_first_format_records_is_migrated() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("online.redb");
        let keys = 70_000usize;
        per_key_store(
            &path,
            keys,
            |k, bytes| {
                let time = k as i64 * 7;
                let amount = format!("{k}.5");
                let mut entries = vec![record::EntryV1 {
                    feature: "transaction.amount",
                    time,
                    json: &amount,
                }];
                if k % 3 == 0 {
                    entries.push(record::EntryV1 {
                        feature: "transaction.is_fraud",
                        time: time - 1,
                        json: "true",
                    });
                }
                record::encode_v1(&entries, bytes).expect("encode");
            },
            |_| {},
        );
        let s = RedbOnlineStore::open(&path).expect("open");
        for k in [0usize, 1, 65_536, keys - 1] {
            assert_eq!(
                s.get_features(
                    &["transaction.is_fraud", "transaction.amount"],
                    &[&format!("{k:06}")]
                )
                .expect("get"),
                vec![vec![
                    if k % 3 == 0 {
                        v(k as i64 * 7 - 1, "true")
                    } else {
                        None
                    },
                    v(k as i64 * 7, &format!("{k}.5"))
                ]],
                "key {k}"
            );
        }
        assert_eq!(
            s.count("transaction.is_fraud").expect("count"),
            keys.div_ceil(3)
        );
        assert_eq!(s.count("transaction.amount").expect("count"), keys);
        s.put(
            "transaction.is_fraud",
            vec![("000001".to_string(), 100, "false".to_string())],
        )
        .expect("put");
        assert_eq!(
            s.get_features(&["transaction.amount", "transaction.is_fraud"], &["000001"])
                .expect("get"),
            vec![vec![v(7, "1.5"), v(100, "false")]]
        );
        drop(s);
        // Opened again: nothing left to migrate, the values stay.
        let s = RedbOnlineStore::open(&path).expect("reopen");
        assert_eq!(
            s.count("transaction.is_fraud").expect("count"),
            keys.div_ceil(3) + 1
        );
    }

    /// A store written with one table per feature opens with the same values, in records.
    #[test]
    fn a_store_of_feature_tables_is_migrated_to_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("online.redb");
        {
            let db = redb::Database::create(&path).expect("create");
            let tx = db.begin_write().expect("write");
            for (feature, rows) in [
                (
                    "transaction.is_fraud",
                    vec![("1", 10, "true"), ("2", 3, "false")],
                ),
                ("transaction.amount", vec![("1", 10, "4.5")]),
                ("user.name", vec![("1", 7, "\"ann\"")]),
            ] {
                let mut t = tx.open_table(FeatureTable::new(feature)).expect("table");
                for (k, time, json) in rows {
                    t.insert(k, (time, json)).expect("insert");
                }
            }
            tx.commit().expect("commit");
        }
        let s = RedbOnlineStore::open(&path).expect("open");
        assert_eq!(
            s.get_features(
                &["transaction.amount", "transaction.is_fraud", "user.name"],
                &["1", "2"]
            )
            .expect("get"),
            vec![
                vec![v(10, "4.5"), v(10, "true"), v(7, "\"ann\"")],
                vec![None, v(3, "false"), None],
            ]
        );
        assert_eq!(s.count("transaction.is_fraud").expect("count"), 2);
        drop(s);
        let db = redb::Database::open(&path).expect("reopen");
        let tx = db.begin_read().expect("read");
        let names: Vec<String> = tx
            .list_tables()
            .expect("tables")
            .map(|t| t.name().to_string())
            .collect();
        assert_eq!(
            names,
            vec![
                "blocks:transaction",
                "blocks:user",
                "meta",
                "names:transaction",
                "names:user",
            ]
        );
    }

    /// Seeded random writes of two classes (keys new and repeated, in one write and across
    /// writes, older and newer times) give what a map of (feature, key) to the newest value
    /// gives, read back and counted; blocks stay in key order within their limits.
    #[test]
    fn random_upserts_equal_a_map_of_newest_values() {
        use std::collections::BTreeMap;
        let dir = tempfile::tempdir().expect("tempdir");
        let s = RedbOnlineStore::open(&dir.path().join("online.redb")).expect("open");
        let mut state = 0x853c_49e6_748f_ea9bu64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let features = ["t.a", "t.b", "u.c"];
        // (feature, key) -> (time, json)
        let mut want: BTreeMap<(&str, String), (i64, String)> = BTreeMap::new();
        for write in 0..40 {
            let n = 1 + (next() % if write % 5 == 0 { 6_000 } else { 700 }) as usize;
            let pool = 1 + next() % 9_000;
            let keys = StringArray::from_iter_values((0..n).map(|_| {
                let k = next() % pool;
                if k % 3 == 0 {
                    format!("{k}")
                } else {
                    format!("k{k:x}")
                }
            }));
            let times: Vec<i64> = (0..n).map(|_| (next() % 60) as i64 - 10).collect();
            let chosen: Vec<&str> = features
                .iter()
                .copied()
                .filter(|_| next() % 3 != 0)
                .collect();
            let chosen = if chosen.is_empty() {
                vec!["t.a"]
            } else {
                chosen
            };
            let values: Vec<StringArray> = chosen
                .iter()
                .map(|_| {
                    StringArray::from_iter_values(
                        (0..n).map(|_| "x".repeat((next() % 4) as usize) + &next().to_string()),
                    )
                })
                .collect();
            let order = key_order(&keys, &times).expect("order");
            let mut expected = 0;
            for &i in &order {
                let i = i as usize;
                for (f, v) in chosen.iter().zip(&values) {
                    let slot = want.entry((f, keys.value(i).to_string()));
                    match slot {
                        std::collections::btree_map::Entry::Occupied(mut o) => {
                            if times[i] >= o.get().0 {
                                o.insert((times[i], v.value(i).to_string()));
                                expected += 1;
                            }
                        }
                        std::collections::btree_map::Entry::Vacant(e) => {
                            e.insert((times[i], v.value(i).to_string()));
                            expected += 1;
                        }
                    }
                }
            }
            let rows = OnlineRows {
                keys: &keys,
                times: &times,
                values: chosen.iter().copied().zip(values.iter()).collect(),
            };
            let mut w = s.writer().expect("writer");
            assert_eq!(
                w.put_ordered(&rows, &order).expect("put"),
                expected,
                "write {write}"
            );
            w.commit().expect("commit");
        }
        let all_keys: Vec<String> = {
            let mut k: Vec<String> = want.keys().map(|(_, k)| k.clone()).collect();
            k.extend(["", "k", "zzz", "0", "k0"].map(String::from));
            k.sort();
            k.dedup();
            k
        };
        let key_refs: Vec<&str> = all_keys.iter().map(String::as_str).collect();
        let got = s.get_features(&features, &key_refs).expect("get");
        for (key, row) in all_keys.iter().zip(got) {
            for (f, value) in features.iter().zip(row) {
                let expected = want.get(&(*f, key.clone())).map(|(t, j)| OnlineValue {
                    feature_time: *t,
                    json: j.clone(),
                });
                assert_eq!(value, expected, "{f} of {key:?}");
            }
        }
        for f in features {
            assert_eq!(
                s.count(f).expect("count"),
                want.keys().filter(|(g, _)| *g == f).count(),
                "{f}"
            );
        }
        // The blocks: keyed by their first key, keys increasing across them, within limits.
        let tx = s.db.begin_read().expect("read");
        for class in ["t", "u"] {
            let t = tx
                .open_table(records(&blocks_table(class)))
                .expect("blocks");
            let mut last: Option<String> = None;
            let mut blocks = 0;
            for row in t.iter().expect("iter") {
                let (k, v) = row.expect("row");
                let block = record::decode_block(v.value()).expect("block");
                assert_eq!(block[0].0, k.value(), "a block is keyed by its first key");
                assert!(block.len() <= BLOCK_RECORDS, "{} records", block.len());
                for (key, _) in block {
                    assert!(
                        last.as_deref().is_none_or(|l| l < key),
                        "{key} after {last:?}"
                    );
                    last = Some(key.to_string());
                }
                blocks += 1;
            }
            assert!(blocks > 100, "{blocks} blocks of {class}");
        }
    }

    /// A store of per-key records (format 2) opens with the same values, in blocks.
    #[test]
    fn a_store_of_records_per_key_is_migrated_to_blocks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("online.redb");
        let keys = 70_000usize;
        per_key_store(
            &path,
            keys,
            |k, bytes| {
                let json = k.to_string();
                let entry = Entry {
                    id: 0,
                    time: k as i64,
                    json: &json,
                };
                record::encode(&[entry], bytes);
            },
            |tx| {
                let mut n = tx.open_table(names("names:transaction")).expect("names");
                n.insert(0, "transaction.score").expect("name");
                tx.open_table(META)
                    .expect("meta")
                    .insert("records", 2)
                    .expect("format");
            },
        );
        let s = RedbOnlineStore::open(&path).expect("open");
        assert_eq!(s.count("transaction.score").expect("count"), keys);
        for k in [0usize, 1, 65_535, 65_536, keys - 1] {
            assert_eq!(
                s.get("transaction.score", &format!("{k:06}")).expect("get"),
                v(k as i64, &k.to_string()),
                "key {k}"
            );
        }
        let tx = s.db.begin_read().expect("read");
        let tables: Vec<String> = tx
            .list_tables()
            .expect("tables")
            .map(|t| t.name().to_string())
            .collect();
        assert_eq!(
            tables,
            vec!["blocks:transaction", "meta", "names:transaction"]
        );
    }
}
