//! The embedded online store: one redb table per feature, mapping a key to the value with the
//! newest feature time. Writes are upserts; an older feature time never replaces a newer one.
//! Keys are the entity's primary key as text (`42`, `u-17`), so every key type is stored
//! exactly.

use crate::{StoreError, io};
use arrow::array::{Array, StringArray};
use redb::{Database, ReadableDatabase, ReadableTableMetadata, TableDefinition};
use std::path::Path;

/// The table of one feature: key to (feature time, JSON value).
fn table(feature: &str) -> TableDefinition<'_, &'static str, (i64, &'static str)> {
    TableDefinition::new(feature)
}

/// Upserts of several features in one transaction; nothing is visible before `commit`.
pub struct OnlineWriter {
    tx: redb::WriteTransaction,
}

impl OnlineWriter {
    /// Upserts `(key, feature_time, json)` rows of `feature`, in key order (which keeps the
    /// B-tree walks short); returns how many rows were newer than what was stored.
    pub fn put(
        &mut self,
        feature: &str,
        mut rows: Vec<(String, i64, String)>,
    ) -> Result<usize, StoreError> {
        rows.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
        self.put_rows(
            feature,
            rows.iter().map(|(k, t, j)| (k.as_str(), *t, j.as_str())),
        )
    }

    /// Upserts the rows at `order` (positions into `keys`, `times` and `values`, in the order
    /// [`key_order`] gives, which keeps the B-tree walks short); returns how many rows were
    /// newer than what was stored.
    pub fn put_ordered(
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

    pub fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().map_err(|e| io("online commit")(&e))
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

#[derive(Debug)]
pub struct OnlineStore {
    db: Database,
}

impl OnlineStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(OnlineStore {
            db: crate::open_db("online store", path)?,
        })
    }

    /// Upserts `(key, feature_time, json)` rows for `feature` in one transaction.
    pub fn put(
        &self,
        feature: &str,
        rows: impl IntoIterator<Item = (String, i64, String)>,
    ) -> Result<usize, StoreError> {
        let mut w = self.writer()?;
        let n = w.put(feature, rows.into_iter().collect())?;
        w.commit()?;
        Ok(n)
    }

    /// A write transaction for several features: readers see all of a run's values or none,
    /// and the caller builds one feature's rows at a time.
    pub fn writer(&self) -> Result<OnlineWriter, StoreError> {
        Ok(OnlineWriter {
            tx: self.db.begin_write().map_err(|e| io("online write")(&e))?,
        })
    }

    pub fn get(&self, feature: &str, key: &str) -> Result<Option<OnlineValue>, StoreError> {
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

    /// Number of keys stored for `feature`.
    pub fn count(&self, feature: &str) -> Result<usize, StoreError> {
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
        let s = OnlineStore::open(&dir.path().join("online.redb")).expect("open");
        s.put(
            "transaction.is_fraud",
            [("1".to_string(), 10, "true".to_string())],
        )
        .expect("put");
        s.put(
            "transaction.is_fraud",
            [("1".to_string(), 5, "false".to_string())],
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
            [
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
