//! The online record of one entity key: the latest value of each of its class's features,
//! as the embedded store keeps it (in a block of records of consecutive keys,
//! [`encode_block`]). Features are numbered per class (the store's `names:{class}` table), and
//! entries are sorted by number, so equal contents are equal bytes. A record is the number of entries, then each entry: the feature's number, its
//! time (microseconds) as the difference from the previous entry's (the first entry's from 0;
//! the features of one row share a time, so it is one byte), and the value as JSON (length,
//! UTF-8); numbers are LEB128 varints, differences zigzag-encoded. About a quarter of the bytes
//! of the first format ([`decode_v1`]: names and full times in every record), which an older
//! store is migrated from.

use crate::StoreError;

/// One feature's value in a record of the first format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EntryV1<'a> {
    pub feature: &'a str,
    pub time: i64,
    pub json: &'a str,
}

/// Appends the first format's record of `entries` (sorted by feature name, unique) to `out`.
#[cfg(test)]
pub(crate) fn encode_v1(entries: &[EntryV1<'_>], out: &mut Vec<u8>) -> Result<(), StoreError> {
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

#[cfg(test)]
fn too_long(what: &str) -> StoreError {
    StoreError::Io {
        what: "online write",
        reason: format!("a {what} is too long for an online record"),
    }
}

/// The entries of a record of the first format, in stored (name) order.
pub(crate) fn decode_v1(bytes: &[u8]) -> Result<Vec<EntryV1<'_>>, StoreError> {
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
        entries.push(EntryV1 {
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

/// One feature's value in a record: the feature's number in its class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry<'a> {
    pub id: u32,
    pub time: i64,
    pub json: &'a str,
}

fn put_varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends the record of `entries`, which must be sorted by number and unique, to `out`.
pub(crate) fn encode(entries: &[Entry<'_>], out: &mut Vec<u8>) {
    put_varint(entries.len() as u64, out);
    let mut previous = 0i64;
    for e in entries {
        let delta = e.time.wrapping_sub(previous);
        previous = e.time;
        put_varint(u64::from(e.id), out);
        put_varint(((delta << 1) ^ (delta >> 63)) as u64, out);
        put_varint(e.json.len() as u64, out);
        out.extend_from_slice(e.json.as_bytes());
    }
}

/// The LEB128 varint at `*at`, advancing past it; none when truncated or too long.
fn get_varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*at)?;
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(v);
        }
    }
    None
}

/// The `len` bytes at `*at` (`len` read as a varint before them), advancing past them.
fn get_bytes<'a>(bytes: &'a [u8], at: &mut usize) -> Option<&'a [u8]> {
    let len = usize::try_from(get_varint(bytes, at)?).ok()?;
    let end = at.checked_add(len)?;
    let part = bytes.get(*at..end)?;
    *at = end;
    Some(part)
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Io {
        what: "online read",
        reason: format!("an online {what} is corrupt (truncated or not UTF-8)"),
    }
}

/// The entries of a record, in stored (number) order.
pub(crate) fn decode(bytes: &[u8]) -> Result<Vec<Entry<'_>>, StoreError> {
    let corrupt = || corrupt("record");
    let mut at = 0usize;
    let count = get_varint(bytes, &mut at).ok_or_else(corrupt)?;
    let mut entries = Vec::with_capacity((count as usize).min(bytes.len()));
    let mut previous = 0i64;
    for _ in 0..count {
        let id = get_varint(bytes, &mut at).ok_or_else(corrupt)?;
        let id = u32::try_from(id).map_err(|_| corrupt())?;
        let z = get_varint(bytes, &mut at).ok_or_else(corrupt)?;
        let delta = ((z >> 1) as i64) ^ -((z & 1) as i64);
        let time = previous.wrapping_add(delta);
        previous = time;
        let json = get_bytes(bytes, &mut at).ok_or_else(corrupt)?;
        let json = std::str::from_utf8(json).map_err(|_| corrupt())?;
        entries.push(Entry { id, time, json });
    }
    if at != bytes.len() {
        return Err(corrupt());
    }
    Ok(entries)
}

/// Appends the block of `records` ((key, record) in strictly increasing key order) to `out`:
/// their number, then per record its key and its bytes, each as a length and the bytes.
pub(crate) fn encode_block(records: &[(&str, &[u8])], out: &mut Vec<u8>) {
    put_varint(records.len() as u64, out);
    for (key, record) in records {
        put_varint(key.len() as u64, out);
        out.extend_from_slice(key.as_bytes());
        put_varint(record.len() as u64, out);
        out.extend_from_slice(record);
    }
}

/// The (key, record) pairs of a block, in key order.
pub(crate) fn decode_block(bytes: &[u8]) -> Result<Vec<(&str, &[u8])>, StoreError> {
    let corrupt = || corrupt("block");
    let mut at = 0usize;
    let count = get_varint(bytes, &mut at).ok_or_else(corrupt)?;
    let mut records = Vec::with_capacity((count as usize).min(bytes.len()));
    for _ in 0..count {
        let key = get_bytes(bytes, &mut at).ok_or_else(corrupt)?;
        let key = std::str::from_utf8(key).map_err(|_| corrupt())?;
        let record = get_bytes(bytes, &mut at).ok_or_else(corrupt)?;
        records.push((key, record));
    }
    if at != bytes.len() {
        return Err(corrupt());
    }
    Ok(records)
}

/// `old` updated with `new` (both sorted by number): per feature, the newer time wins and an
/// equal time replaces. Returns the merged entries and how many of `new` were taken.
pub(crate) fn merge<'a>(old: &[Entry<'a>], new: &[Entry<'a>]) -> (Vec<Entry<'a>>, usize) {
    let mut out = Vec::with_capacity(old.len() + new.len());
    let mut taken = 0;
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        let order = match (old.get(i), new.get(j)) {
            (Some(o), Some(n)) => o.id.cmp(&n.id),
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

    fn leak(s: &str) -> &'static str {
        Box::leak(s.to_string().into_boxed_str())
    }

    fn e(id: u32, time: i64, json: &str) -> Entry<'static> {
        Entry {
            id,
            time,
            json: leak(json),
        }
    }

    #[test]
    fn records_round_trip_and_refuse_truncation() {
        let long = "x".repeat(300);
        let entries = vec![
            e(0, -5, "null"),
            e(1, i64::MAX, "\"ü\""),
            e(7, i64::MIN, ""),
            e(300, 1 << 50, &long),
            e(u32::MAX, 1 << 50, "1"),
        ];
        let mut bytes = Vec::new();
        encode(&entries, &mut bytes);
        assert_eq!(decode(&bytes).expect("decode"), entries);
        let mut empty = Vec::new();
        encode(&[], &mut empty);
        assert_eq!(decode(&empty).expect("empty"), vec![]);
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer).is_err(), "trailing bytes");
    }

    /// Seeded random records: equal contents give equal bytes, and a row's shared time costs
    /// one byte per entry after the first.
    #[test]
    fn random_records_round_trip() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..2000 {
            let n = (next() % 12) as u32;
            let shared = (next() % 2) == 0;
            let t0 = next() as i64;
            let entries: Vec<Entry<'static>> = (0..n)
                .map(|i| Entry {
                    id: i * (1 + (next() % 3) as u32),
                    time: if shared { t0 } else { next() as i64 },
                    json: leak(&(next() % 100_000).to_string()),
                })
                .collect();
            let mut sorted = entries.clone();
            sorted.sort_by_key(|e| e.id);
            sorted.dedup_by_key(|e| e.id);
            let mut bytes = Vec::new();
            encode(&sorted, &mut bytes);
            assert_eq!(decode(&bytes).expect("decode"), sorted);
            if shared && sorted.len() > 1 {
                let values: usize = sorted.iter().map(|e| e.json.len() + 1).sum();
                assert!(bytes.len() <= 1 + 10 + values + 2 * sorted.len() + 5 * sorted.len());
            }
        }
    }

    #[test]
    fn blocks_round_trip_and_refuse_truncation() {
        let long = vec![9u8; 200];
        let records: Vec<(&str, &[u8])> =
            vec![("", b""), ("1", b"\x01\x00\x02\x02ab"), ("k\u{fc}", &long)];
        let mut bytes = Vec::new();
        encode_block(&records, &mut bytes);
        assert_eq!(decode_block(&bytes).expect("decode"), records);
        for cut in 0..bytes.len() {
            assert!(decode_block(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_block(&longer).is_err(), "trailing bytes");
    }

    #[test]
    fn first_format_records_decode() {
        let entries = vec![
            EntryV1 {
                feature: "a.x",
                time: -5,
                json: "null",
            },
            EntryV1 {
                feature: "a.y",
                time: 1 << 50,
                json: "\"ü\"",
            },
        ];
        let mut bytes = Vec::new();
        encode_v1(&entries, &mut bytes).expect("encode");
        assert_eq!(decode_v1(&bytes).expect("decode"), entries);
        for cut in 0..bytes.len() {
            assert!(decode_v1(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn merge_keeps_the_newest_time_per_feature() {
        let old = vec![e(1, 5, "1"), e(3, 5, "1"), e(4, 5, "1")];
        let new = vec![e(2, 1, "2"), e(3, 4, "2"), e(4, 5, "2"), e(5, 9, "2")];
        let (merged, taken) = merge(&old, &new);
        assert_eq!(
            merged,
            vec![
                e(1, 5, "1"),
                e(2, 1, "2"),
                e(3, 5, "1"),
                e(4, 5, "2"),
                e(5, 9, "2")
            ]
        );
        assert_eq!(taken, 3);
    }
}
