//! The online record of one entity key: the latest value of each of its class's features,
//! as the embedded store keeps it (one redb value per key). Entries are sorted by feature name,
//! so equal contents are equal bytes. A record is the number of entries (u32), then each entry:
//! the feature name (u16 length, UTF-8), the feature time (i64, microseconds) and the value as
//! JSON (u32 length, UTF-8), all little-endian.

use crate::StoreError;

/// One feature's value in a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry<'a> {
    pub feature: &'a str,
    pub time: i64,
    pub json: &'a str,
}

/// Appends the record of `entries`, which must be sorted by feature name and unique, to `out`.
pub(crate) fn encode(entries: &[Entry<'_>], out: &mut Vec<u8>) -> Result<(), StoreError> {
    let count = u32::try_from(entries.len()).map_err(|_| too_long("record"))?;
    out.extend_from_slice(&count.to_le_bytes());
    for e in entries {
        let name = u16::try_from(e.feature.len()).map_err(|_| too_long("feature name"))?;
        let json = u32::try_from(e.json.len()).map_err(|_| too_long("value"))?;
        out.extend_from_slice(&name.to_le_bytes());
        out.extend_from_slice(e.feature.as_bytes());
        out.extend_from_slice(&e.time.to_le_bytes());
        out.extend_from_slice(&json.to_le_bytes());
        out.extend_from_slice(e.json.as_bytes());
    }
    Ok(())
}

fn too_long(what: &str) -> StoreError {
    StoreError::Io {
        what: "online write",
        reason: format!("a {what} is too long for an online record"),
    }
}

/// The entries of a record, in stored (name) order.
pub(crate) fn decode(bytes: &[u8]) -> Result<Vec<Entry<'_>>, StoreError> {
    let corrupt = || StoreError::Io {
        what: "online read",
        reason: "an online record is corrupt (truncated or not UTF-8)".into(),
    };
    let mut at = 0;
    let mut take = |n: usize| -> Result<&[u8], StoreError> {
        let part = bytes.get(at..at + n).ok_or_else(corrupt)?;
        at += n;
        Ok(part)
    };
    let count = u32::from_le_bytes(take(4)?.try_into().map_err(|_| corrupt())?);
    let mut entries = Vec::with_capacity(count as usize);
    let mut left = bytes.len() - 4;
    for _ in 0..count {
        let len = u16::from_le_bytes(take(2)?.try_into().map_err(|_| corrupt())?) as usize;
        let feature = std::str::from_utf8(take(len)?).map_err(|_| corrupt())?;
        let time = i64::from_le_bytes(take(8)?.try_into().map_err(|_| corrupt())?);
        let len32 = u32::from_le_bytes(take(4)?.try_into().map_err(|_| corrupt())?) as usize;
        let json = std::str::from_utf8(take(len32)?).map_err(|_| corrupt())?;
        left -= 2 + len + 8 + 4 + len32;
        entries.push(Entry {
            feature,
            time,
            json,
        });
    }
    if left != 0 {
        return Err(corrupt());
    }
    Ok(entries)
}

/// The value of `feature` in a record.
pub(crate) fn find<'a>(bytes: &'a [u8], feature: &str) -> Result<Option<Entry<'a>>, StoreError> {
    Ok(decode(bytes)?.into_iter().find(|e| e.feature == feature))
}

/// `old` updated with `new` (both sorted by name): per feature, the newer time wins and an
/// equal time replaces. Returns the merged entries and how many of `new` were taken.
pub(crate) fn merge<'a>(old: &[Entry<'a>], new: &[Entry<'a>]) -> (Vec<Entry<'a>>, usize) {
    let mut out = Vec::with_capacity(old.len() + new.len());
    let mut taken = 0;
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        let order = match (old.get(i), new.get(j)) {
            (Some(o), Some(n)) => o.feature.cmp(n.feature),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match order {
            std::cmp::Ordering::Less => {
                out.push(old[i]);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(new[j]);
                taken += 1;
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                if new[j].time >= old[i].time {
                    out.push(new[j]);
                    taken += 1;
                } else {
                    out.push(old[i]);
                }
                i += 1;
                j += 1;
            }
        }
    }
    (out, taken)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(feature: &str, time: i64, json: &str) -> Entry<'static> {
        Entry {
            feature: Box::leak(feature.to_string().into_boxed_str()),
            time,
            json: Box::leak(json.to_string().into_boxed_str()),
        }
    }

    #[test]
    fn records_round_trip_and_refuse_truncation() {
        let entries = vec![
            e("a.x", -5, "null"),
            e("a.y", 1 << 50, "\"ü\""),
            e("a.z", 0, ""),
        ];
        let mut bytes = Vec::new();
        encode(&entries, &mut bytes).expect("encode");
        assert_eq!(decode(&bytes).expect("decode"), entries);
        let mut empty = Vec::new();
        encode(&[], &mut empty).expect("encode");
        assert_eq!(decode(&empty).expect("empty"), vec![]);
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer).is_err(), "trailing bytes");
        assert_eq!(find(&bytes, "a.y").expect("find"), Some(entries[1]));
        assert_eq!(find(&bytes, "a.w").expect("find"), None);
    }

    #[test]
    fn merge_keeps_the_newest_time_per_feature() {
        let old = vec![e("a", 5, "1"), e("c", 5, "1"), e("d", 5, "1")];
        let new = vec![
            e("b", 1, "2"),
            e("c", 4, "2"),
            e("d", 5, "2"),
            e("e", 9, "2"),
        ];
        let (merged, taken) = merge(&old, &new);
        assert_eq!(
            merged,
            vec![
                e("a", 5, "1"),
                e("b", 1, "2"),
                e("c", 5, "1"),
                e("d", 5, "2"),
                e("e", 9, "2")
            ]
        );
        assert_eq!(taken, 3);
    }
}
