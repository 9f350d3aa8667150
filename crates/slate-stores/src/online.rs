//! The online store: the latest value of each (feature, key), for serving. [`OnlineStore`] is
//! the one interface; this file holds it and the embedded implementation (one redb table per
//! feature), `redis.rs` the Redis one. Writes are upserts: a value with an older feature time
//! never replaces a newer one, an equal one replaces it. Keys are the entity's primary key as
//! text (`42`, `u-17`), so every key type is stored exactly; values are JSON.

use crate::{StoreError, io};
use arrow::array::{Array, StringArray};
use redb::{Database, ReadableDatabase, ReadableTableMetadata, TableDefinition};
use std::path::Path;

/// Where runs leave the latest values and the online API reads them.
pub trait OnlineStore: Send + Sync + std::fmt::Debug {
    /// A writer for one run's values of several features.
    fn writer(&self) -> Result<Box<dyn OnlineWriter>, StoreError>;

    fn get(&self, feature: &str, key: &str) -> Result<Option<OnlineValue>, StoreError>;

    /// The values of several keys of one feature, in the keys' order.
    fn get_many(
        &self,
        feature: &str,
        keys: &[&str],
    ) -> Result<Vec<Option<OnlineValue>>, StoreError> {
        keys.iter().map(|k| self.get(feature, k)).collect()
    }

    /// Number of keys stored for `feature`.
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

/// Upserts of a run. What becomes visible when depends on the store: the embedded store shows
/// all of a writer's values at `commit` and none before; Redis shows each batch as it is
/// written. Both are idempotent, so a run repeated after a crash leaves the same values.
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
        self.put_ordered(feature, &keys, &times, &values, &order)
    }

    /// Upserts the rows at `order` (positions into `keys`, `times` and `values`, in the order
    /// [`key_order`] gives); returns how many were stored.
    fn put_ordered(
        &mut self,
        feature: &str,
        keys: &StringArray,
        times: &[i64],
        values: &StringArray,
        order: &[u32],
    ) -> Result<usize, StoreError>;

    fn commit(self: Box<Self>) -> Result<(), StoreError>;
}

/// The table of one feature: key to (feature time, JSON value).
fn table(feature: &str) -> TableDefinition<'_, &'static str, (i64, &'static str)> {
    TableDefinition::new(feature)
}

/// Upserts of several features in one redb transaction; nothing is visible before `commit`.
pub struct RedbWriter {
    tx: redb::WriteTransaction,
}

impl OnlineWriter for RedbWriter {
    fn put_ordered(
        &mut self,
        feature: &str,
        keys: &StringArray,
        times: &[i64],
        values: &StringArray,
        order: &[u32],
    ) -> Result<usize, StoreError> {
        self.put_rows(
            feature,
            order.iter().map(|&i| {
                let i = i as usize;
                (keys.value(i), times[i], values.value(i))
            }),
        )
    }

    fn commit(self: Box<Self>) -> Result<(), StoreError> {
        self.tx.commit().map_err(|e| io("online commit")(&e))
    }
}

impl RedbWriter {
    // Private and called through the non-generic functions above: the engine's own instance of
    // this generic function (compiled in the engine's crate) measured 2.5x slower per insert.
    fn put_rows<'a>(
        &mut self,
        feature: &str,
        rows: impl Iterator<Item = (&'a str, i64, &'a str)>,
    ) -> Result<usize, StoreError> {
        let mut t = self
            .tx
            .open_table(table(feature))
            .map_err(|e| io("online write")(&e))?;
        let mut written = 0;
        for (key, ft, json) in rows {
            // Insert first and put the old value back in the rare case it was newer: one tree
            // walk per row instead of two.
            let older = t
                .insert(key, (ft, json))
                .map_err(|e| io("online write")(&e))?
                .map(|old| (old.value().0, old.value().1.to_string()))
                .filter(|(old_ft, _)| *old_ft > ft);
            match older {
                Some((old_ft, old_json)) => {
                    t.insert(key, (old_ft, old_json.as_str()))
                        .map_err(|e| io("online write")(&e))?;
                }
                None => written += 1,
            }
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
    db: Database,
}

impl RedbOnlineStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(RedbOnlineStore {
            db: crate::open_db("online store", path)?,
        })
    }
}

impl OnlineStore for RedbOnlineStore {
    /// A write transaction for several features: readers see all of a run's values or none,
    /// and the caller builds one feature's rows at a time.
    fn writer(&self) -> Result<Box<dyn OnlineWriter>, StoreError> {
        Ok(Box::new(RedbWriter {
            tx: self.db.begin_write().map_err(|e| io("online write")(&e))?,
        }))
    }

    fn get(&self, feature: &str, key: &str) -> Result<Option<OnlineValue>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| io("online read")(&e))?;
        let t = match tx.open_table(table(feature)) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(io("online read")(&e)),
        };
        Ok(t.get(key).map_err(|e| io("online read")(&e))?.map(|v| {
            let (feature_time, json) = v.value();
            OnlineValue {
                feature_time,
                json: json.to_string(),
            }
        }))
    }

    fn count(&self, feature: &str) -> Result<usize, StoreError> {
        let tx = self.db.begin_read().map_err(|e| io("online read")(&e))?;
        let t = match tx.open_table(table(feature)) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
            Err(e) => return Err(io("online read")(&e)),
        };
        let n = t.len().map_err(|e| io("online read")(&e))?;
        usize::try_from(n).map_err(|e| io("online read")(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
