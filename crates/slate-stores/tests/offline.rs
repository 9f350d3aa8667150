//! The offline store's day-partitioned layout and entity state against brute force on seeded
//! random rows: replacements across midnight, one file per day, replaced files deleted, the
//! unpartitioned layout migrated, and the rows an unbounded `latest` needs before a read's start.

use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow_array::{
    Array, ArrayRef, Float64Array, Int64Array, RecordBatch, TimestampMicrosecondArray,
};
use slate_stores::{OfflineStore, ReplaceRange, WriteRows};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

const DAY: i64 = 86_400_000_000;
const HOUR: i64 = 3_600_000_000;

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> i64 {
        (self.next() % n) as i64
    }
}

type Row = (i64, i64, Option<f64>);

/// Rows over `days` days: keys 0..keys, whole-minute times (so equal times occur), a value
/// that is null one time in four.
fn rows(seed: u64, n: usize, keys: i64, days: i64) -> Vec<Row> {
    let mut r = Rng(seed.max(1));
    (0..n)
        .map(|_| {
            let k = r.below(keys as u64);
            let ts = r.below((days * DAY / 60_000_000) as u64) * 60_000_000;
            let v = (r.below(4) != 0).then(|| r.below(1000) as f64 / 8.0);
            (k, ts, v)
        })
        .collect()
}

fn batch(rows: &[Row]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, true),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
        Field::new("v", DataType::Float64, true),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.1))
                    .with_timezone("UTC"),
            ),
            Arc::new(Float64Array::from(
                rows.iter().map(|r| r.2).collect::<Vec<_>>(),
            )),
        ],
    )
    .expect("batch")
}

fn read_rows(batches: &[RecordBatch]) -> Vec<(i64, i64, Option<u64>)> {
    let mut out = Vec::new();
    for b in batches {
        let k = b.column_by_name("k").expect("k");
        let k = k.as_any().downcast_ref::<Int64Array>().expect("k i64");
        let ts = b.column_by_name("ts").expect("ts");
        let ts = ts
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .expect("ts");
        let v = b.column_by_name("v").expect("v");
        let v = v.as_any().downcast_ref::<Float64Array>().expect("v f64");
        for i in 0..b.num_rows() {
            out.push((
                k.value(i),
                ts.value(i),
                (!v.is_null(i)).then(|| v.value(i).to_bits()),
            ));
        }
    }
    out.sort();
    out
}

fn expected(rows: &[Row]) -> Vec<(i64, i64, Option<u64>)> {
    let mut out: Vec<_> = rows
        .iter()
        .map(|r| (r.0, r.1, r.2.map(f64::to_bits)))
        .collect();
    out.sort();
    out
}

/// Parquet data files under a table's directory (replaced ones included until deleted).
fn parquet_files(dir: &Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).expect("dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            if !p.ends_with("_delta_log") {
                n += parquet_files(&p);
            }
        } else if p.extension().is_some_and(|x| x == "parquet") {
            n += 1;
        }
    }
    n
}

fn replace_from(from: i64) -> ReplaceRange {
    ReplaceRange {
        column: "ts".into(),
        from_micros: from,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daily_replacements_across_midnight_keep_one_file_per_day() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = OfflineStore::new(tmp.path()).with_retention(0);
    let all = rows(7, 3_000, 9, 30);
    // Each run at midnight reads back a 90-minute lookback into the previous day, plus rows a
    // run ahead (the next day's first hours) that the next run replaces.
    for d in 1..=30 {
        let from = d * DAY - DAY - 90 * 60_000_000;
        let to = d * DAY + 3 * HOUR;
        let part: Vec<Row> = all
            .iter()
            .filter(|r| r.1 >= from && r.1 < to)
            .copied()
            .collect();
        let replace = replace_from(from);
        store
            .write("t", vec![batch(&part)], Some(&replace), Some("ts"))
            .await
            .expect("write");
    }
    let got = read_rows(&store.read_all("t").await.expect("read"));
    assert_eq!(got, expected(&all), "same rows as written once");
    let files = store.file_count("t").await.expect("count");
    assert_eq!(files, 30, "one file per day");
    assert_eq!(
        parquet_files(&tmp.path().join("t")),
        files,
        "replaced files deleted (retention 0)"
    );
    // A replacement with no rows empties the days from its start and keeps the rest.
    store
        .write(
            "t",
            vec![batch(&[])],
            Some(&replace_from(25 * DAY + HOUR)),
            Some("ts"),
        )
        .await
        .expect("empty write");
    let got = read_rows(&store.read_all("t").await.expect("read"));
    let kept: Vec<Row> = all
        .iter()
        .filter(|r| r.1 < 25 * DAY + HOUR)
        .copied()
        .collect();
    assert_eq!(got, expected(&kept));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpartitioned_table_is_partitioned_by_its_next_write() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = OfflineStore::new(tmp.path());
    let all = rows(3, 500, 4, 6);
    let (old, new): (Vec<Row>, Vec<Row>) = all.iter().partition(|r| r.1 < 4 * DAY);
    store
        .write("t", vec![batch(&old)], None, None)
        .await
        .expect("old layout");
    let overlap: Vec<Row> = all.iter().filter(|r| r.1 >= 3 * DAY).copied().collect();
    store
        .write(
            "t",
            vec![batch(&overlap)],
            Some(&replace_from(3 * DAY)),
            Some("ts"),
        )
        .await
        .expect("partitioned write");
    assert!(!new.is_empty());
    let got = read_rows(&store.read_all("t").await.expect("read"));
    assert_eq!(got, expected(&all));
    assert_eq!(store.file_count("t").await.expect("files"), 6);
}

/// Per key: (greatest time, greatest time with a value, the values at that time) of the rows
/// before `from`.
type Latest = BTreeMap<i64, (i64, Option<i64>, Vec<u64>)>;

fn latest_before(rows: &[(i64, i64, Option<u64>)], from: i64, keys: &[i64]) -> Latest {
    let mut out: Latest = BTreeMap::new();
    for &(k, ts, v) in rows.iter().filter(|r| r.1 < from && keys.contains(&r.0)) {
        let e = out.entry(k).or_insert((i64::MIN, None, vec![]));
        e.0 = e.0.max(ts);
        if let Some(v) = v {
            match e.1 {
                Some(t) if t > ts => {}
                Some(t) if t == ts => e.2.push(v),
                _ => {
                    e.1 = Some(ts);
                    e.2 = vec![v];
                }
            }
        }
    }
    for e in out.values_mut() {
        e.2.sort();
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entity_state_keeps_what_latest_needs_before_the_read() {
    for seed in 1..=12u64 {
        let tmp = tempfile::tempdir().expect("tmp");
        let store = OfflineStore::new(tmp.path());
        let mut r = Rng(seed * 977);
        // Sparse keys: some stay dormant for weeks, so their latest rows lie far before reads.
        let all = rows(seed, 400, 40, 120);
        let mut written = 0;
        for step in 0..12 {
            let until = (step + 1) * 10 * DAY;
            let lookback = r.below(3) * DAY + r.below(24) * HOUR;
            let from = (written - lookback).max(0);
            let part: Vec<Row> = all
                .iter()
                .filter(|x| x.1 >= from && x.1 < until)
                .copied()
                .collect();
            store
                .write(
                    "t",
                    vec![batch(&part)],
                    Some(&replace_from(from)),
                    Some("ts"),
                )
                .await
                .expect("write");
            written = until;
            let keys: Vec<i64> = (0..40).filter(|_| r.below(3) != 0).collect();
            let read_from = until - r.below(40) * DAY;
            let advance_to = until - r.below(30) * DAY;
            let got = store
                .read_latest_for_keys(
                    "t",
                    &["k", "ts", "v"],
                    "k",
                    Arc::new(Int64Array::from(keys.clone())) as ArrayRef,
                    "ts",
                    read_from,
                    advance_to,
                )
                .await
                .expect("read");
            let got = read_rows(&got);
            let truth = expected(
                &all.iter()
                    .filter(|x| x.1 < until)
                    .copied()
                    .collect::<Vec<_>>(),
            );
            let recent = |rs: &[(i64, i64, Option<u64>)]| -> Vec<(i64, i64, Option<u64>)> {
                rs.iter()
                    .filter(|x| x.1 >= read_from && keys.contains(&x.0))
                    .copied()
                    .collect()
            };
            assert_eq!(
                recent(&got),
                recent(&truth),
                "seed {seed} step {step}: rows since the read's start"
            );
            assert!(
                got.iter().all(|x| keys.contains(&x.0)),
                "only the asked keys"
            );
            assert_eq!(
                latest_before(&got, read_from, &keys),
                latest_before(&truth, read_from, &keys),
                "seed {seed} step {step}: the latest rows before the read's start"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_before_the_replaced_range_is_refused_and_nothing_changes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = OfflineStore::new(tmp.path());
    let all = rows(11, 200, 5, 4);
    store
        .write("t", vec![batch(&all)], None, Some("ts"))
        .await
        .expect("first write");
    let bad = [
        (1, 2 * DAY + HOUR, Some(1.0)),
        (1, 2 * DAY + 3 * HOUR, None),
    ];
    let e = store
        .write(
            "t",
            vec![batch(&bad)],
            Some(&replace_from(2 * DAY + 2 * HOUR)),
            Some("ts"),
        )
        .await
        .expect_err("a row before the range");
    assert!(
        e.to_string()
            .contains("precedes the replaced range's start"),
        "{e}"
    );
    let got = read_rows(&store.read_all("t").await.expect("read"));
    assert_eq!(got, expected(&all), "the table is unchanged");
}

/// A write streamed in many small batches gives the rows of one collected write, and a stream
/// that fails part-way (after some of its files were written) commits nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_write_is_one_commit_and_a_failed_stream_changes_nothing() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = OfflineStore::new(tmp.path()).with_retention(0);
    let all = rows(23, 5_000, 40, 12);
    let chunks: Vec<RecordBatch> = all.chunks(97).map(batch).collect();
    let streamed = WriteRows::new(chunks.into_iter().map(Ok));
    store
        .write_rows("t", streamed, None, Some("ts"))
        .await
        .expect("streamed write");
    assert_eq!(
        read_rows(&store.read_all("t").await.expect("read")),
        expected(&all)
    );
    let version = store.file_count("t").await.expect("files");
    // The next write replaces the last 6 days, then fails after 20 of its batches.
    let from = 6 * DAY;
    let new = rows(29, 4_000, 40, 12)
        .into_iter()
        .filter(|r| r.1 >= from)
        .collect::<Vec<_>>();
    let failing: Vec<Result<RecordBatch, arrow::error::ArrowError>> = new
        .chunks(50)
        .map(|c| Ok(batch(c)))
        .take(20)
        .chain(std::iter::once(Err(
            arrow::error::ArrowError::ComputeError("the producer failed".into()),
        )))
        .collect();
    let e = store
        .write_rows(
            "t",
            WriteRows::new(failing.into_iter()),
            Some(&replace_from(from)),
            Some("ts"),
        )
        .await
        .expect_err("a failed stream");
    assert!(e.to_string().contains("the producer failed"), "{e}");
    assert_eq!(
        read_rows(&store.read_all("t").await.expect("read")),
        expected(&all),
        "the table is unchanged"
    );
    assert_eq!(store.file_count("t").await.expect("files"), version);
}

/// (key, time, label, flag).
type Labeled = (String, i64, Option<String>, Option<bool>);

/// String keys and string and boolean values (nulls included) through the state: the state's
/// rows and the table's come back in one schema (the engine concatenates them) and hold the
/// latest value of every column before the read's start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entity_state_with_string_keys_and_values() {
    use arrow_array::{BooleanArray, StringArray};
    let tmp = tempfile::tempdir().expect("tmp");
    let store = OfflineStore::new(tmp.path());
    let mut r = Rng(4242);
    let all: Vec<Labeled> = (0..600)
        .map(|_| {
            (
                format!("k{}", r.below(25)),
                r.below(90 * 24) * HOUR,
                (r.below(3) != 0).then(|| format!("s{}", r.below(6))),
                (r.below(3) != 0).then(|| r.below(2) == 0),
            )
        })
        .collect();
    let batch_of = |rows: &[&Labeled]| {
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("k", DataType::Utf8, true),
                Field::new(
                    "ts",
                    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                    true,
                ),
                Field::new("label", DataType::Utf8, true),
                Field::new("flag", DataType::Boolean, true),
            ])),
            vec![
                Arc::new(StringArray::from_iter_values(
                    rows.iter().map(|x| x.0.as_str()),
                )),
                Arc::new(
                    TimestampMicrosecondArray::from_iter_values(rows.iter().map(|x| x.1))
                        .with_timezone("UTC"),
                ),
                Arc::new(StringArray::from(
                    rows.iter().map(|x| x.2.clone()).collect::<Vec<_>>(),
                )),
                Arc::new(BooleanArray::from(
                    rows.iter().map(|x| x.3).collect::<Vec<_>>(),
                )),
            ],
        )
        .expect("batch")
    };
    let keys: Vec<String> = (0..25)
        .filter(|i| i % 3 != 0)
        .map(|i| format!("k{i}"))
        .collect();
    for step in 1..=3i64 {
        let (from, until) = ((step - 1) * 30 * DAY - HOUR, step * 30 * DAY);
        let part: Vec<_> = all
            .iter()
            .filter(|x| x.1 >= from.max(0) && x.1 < until)
            .collect();
        store
            .write(
                "t",
                vec![batch_of(&part)],
                Some(&replace_from(from.max(0))),
                Some("ts"),
            )
            .await
            .expect("write");
        let read_from = until - 20 * DAY;
        let got = store
            .read_latest_for_keys(
                "t",
                &["k", "ts", "label", "flag"],
                "k",
                Arc::new(StringArray::from(keys.clone())) as ArrayRef,
                "ts",
                read_from,
                until - 25 * DAY,
            )
            .await
            .expect("read");
        let one = arrow::compute::concat_batches(&got[0].schema(), &got).expect("one schema");
        let text = |c: &str| {
            let a = arrow::compute::cast(one.column_by_name(c).expect("col"), &DataType::Utf8)
                .expect("cast");
            let a = a
                .as_any()
                .downcast_ref::<StringArray>()
                .expect("utf8")
                .clone();
            (0..a.len())
                .map(|i| (!a.is_null(i)).then(|| a.value(i).to_string()))
                .collect::<Vec<_>>()
        };
        let ts = arrow::compute::cast(
            one.column_by_name("ts").expect("ts"),
            &DataType::Timestamp(TimeUnit::Microsecond, None),
        )
        .expect("cast");
        let ts = ts
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .expect("ts")
            .clone();
        let got_rows: Vec<Labeled> = text("k")
            .into_iter()
            .zip(text("label"))
            .zip(text("flag"))
            .enumerate()
            .map(|(i, ((k, l), f))| (k.expect("key"), ts.value(i), l, f.map(|f| f == "true")))
            .collect();
        let truth: Vec<_> = all.iter().filter(|x| x.1 < until).cloned().collect();
        // Per key: the greatest time before the read's start, and for each value column the
        // greatest time with a value and the values there.
        type Summary = (
            Option<i64>,
            Option<(i64, Vec<String>)>,
            Option<(i64, Vec<bool>)>,
        );
        let summarize = |rows: &[Labeled], k: &str| {
            let before: Vec<_> = rows
                .iter()
                .filter(|x| x.0 == k && x.1 < read_from)
                .collect();
            let last = before.iter().map(|x| x.1).max();
            let latest_of =
                |f: &dyn Fn(&Labeled) -> bool| before.iter().filter(|x| f(x)).map(|x| x.1).max();
            let lt = latest_of(&|x| x.2.is_some());
            let mut ls: Vec<String> = before
                .iter()
                .filter(|x| Some(x.1) == lt)
                .filter_map(|x| x.2.clone())
                .collect();
            ls.sort();
            let ft = latest_of(&|x| x.3.is_some());
            let mut fs: Vec<bool> = before
                .iter()
                .filter(|x| Some(x.1) == ft)
                .filter_map(|x| x.3)
                .collect();
            fs.sort();
            let s: Summary = (last, lt.map(|t| (t, ls)), ft.map(|t| (t, fs)));
            s
        };
        for k in &keys {
            assert_eq!(
                summarize(&got_rows, k),
                summarize(&truth, k),
                "step {step}, key {k}: latest rows before the read"
            );
            let recent = |rows: &[Labeled]| {
                let mut v: Vec<_> = rows
                    .iter()
                    .filter(|x| &x.0 == k && x.1 >= read_from)
                    .cloned()
                    .collect();
                v.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
                v
            };
            assert_eq!(
                recent(&got_rows),
                recent(&truth),
                "step {step}, key {k}: recent rows"
            );
        }
    }
}

/// The rows of the one state file under `dir`, and its cutoff.
fn state_file(dir: &Path) -> (i64, Vec<(i64, i64, Option<u64>)>) {
    let files: Vec<_> = std::fs::read_dir(dir)
        .expect("state dir")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(
        files.len(),
        1,
        "one state file in {}: {files:?}",
        dir.display()
    );
    let name = files[0].file_name().unwrap().to_string_lossy().to_string();
    let cutoff = name
        .strip_prefix("latest-")
        .and_then(|n| n.strip_suffix(".parquet"))
        .and_then(|n| n.parse().ok())
        .expect("a state file name");
    let reader = deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(
        std::fs::File::open(&files[0]).expect("open"),
        1024,
    )
    .expect("parquet");
    let batches: Vec<RecordBatch> = reader.map(|b| b.expect("batch")).map(int_keys).collect();
    (cutoff, read_rows(&batches))
}

/// `b` with its key column `k` as text (`"10"` sorts before `"9"`), as a string-keyed class.
fn text_keys(b: RecordBatch) -> RecordBatch {
    let mut columns = b.columns().to_vec();
    columns[0] = arrow::compute::cast(&columns[0], &DataType::Utf8).expect("to text");
    let mut fields: Vec<Field> = b
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields[0] = Field::new("k", DataType::Utf8, true);
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).expect("batch")
}

/// `b` with a text key column `k` read back as integers (unchanged when it is one).
fn int_keys(b: RecordBatch) -> RecordBatch {
    let i = b.schema().index_of("k").expect("k");
    if b.column(i).data_type() == &DataType::Int64 {
        return b;
    }
    let mut columns = b.columns().to_vec();
    columns[i] = arrow::compute::cast(&columns[i], &DataType::Int64).expect("to int");
    let mut fields: Vec<Field> = b
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields[i] = Field::new("k", DataType::Int64, true);
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).expect("batch")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_built_from_the_streamed_rows_equals_the_one_read_back_from_the_table() {
    for seed in 1..=10u64 {
        // Even seeds key by text, ordered as text.
        let text = seed % 2 == 0;
        let shaped = |rows: &[Row]| match text {
            true => text_keys(batch(rows)),
            false => batch(rows),
        };
        let tmp = tempfile::tempdir().expect("tmp");
        let store = OfflineStore::new(tmp.path());
        let mut r = Rng(seed * 31);
        let all = rows(seed, 3000, 1 + r.below(80), 30);
        store
            .write("t", vec![shaped(&all)], None, Some("ts"))
            .await
            .expect("write");
        let advance_to = r.below(32) * DAY + r.below(DAY as u64);
        store
            .advance_latest_state("t", "k", "ts", advance_to)
            .await
            .expect("state by a read");
        let dir = tmp.path().join(".state").join("t").join("k@ts");
        let by_read = state_file(&dir);
        std::fs::remove_dir_all(&dir).expect("rm");

        // The same rows as a backfill streams them: by key, then time; in batches of any size.
        let mut sorted = all.clone();
        match text {
            true => sorted.sort_by_key(|x| (x.0.to_string(), x.1)),
            false => sorted.sort_by_key(|x| (x.0, x.1)),
        }
        let mut b = store.latest_state_builder("t", "k", "ts", advance_to);
        let mut at = 0;
        while at < sorted.len() {
            let n = (1 + r.below(700) as usize).min(sorted.len() - at);
            b.push(&shaped(&sorted[at..at + n])).expect("push");
            at += n;
        }
        b.finish().expect("finish");
        let built = state_file(&dir);
        assert_eq!(built.0, by_read.0, "seed {seed}: the cutoff");
        assert_eq!(built.1, by_read.1, "seed {seed}: the state's rows");
        assert!(
            !by_read.1.is_empty() || advance_to < DAY,
            "seed {seed}: a state with rows"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_builder_refuses_rows_out_of_key_order() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = OfflineStore::new(tmp.path());
    let mut b = store.latest_state_builder("t", "k", "ts", 10 * DAY);
    b.push(&batch(&[(2, DAY, None), (3, DAY, None)]))
        .expect("in order");
    let e = b
        .push(&batch(&[(1, DAY, None)]))
        .expect_err("a smaller key after");
    assert!(e.to_string().contains("not ordered by key"), "{e}");
}

/// Reads for a few keys (joined with the table) and for many (each batch filtered) give the
/// rows of exactly those keys from the start time on, for integer and text keys, with null
/// and unknown keys among those asked; against brute force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_for_few_and_many_keys_keep_exactly_their_rows() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = OfflineStore::new(tmp.path());
    let all = rows(11, 60_000, 20_000, 10);
    store
        .write("ints", vec![batch(&all)], None, Some("ts"))
        .await
        .expect("write ints");
    store
        .write("texts", vec![text_keys(batch(&all))], None, Some("ts"))
        .await
        .expect("write texts");
    let mut r = Rng(5);
    for asked in [3usize, 100, 4_096, 4_097, 12_000] {
        // Keys beyond the table's (20,000 and up) match nothing.
        let keys: Vec<Option<i64>> = (0..asked)
            .map(|i| (i % 97 != 0).then(|| r.below(24_000)))
            .collect();
        let from = r.below(5) * DAY + 7 * HOUR;
        let set: std::collections::HashSet<i64> = keys.iter().flatten().copied().collect();
        let want = expected(
            &all.iter()
                .filter(|x| set.contains(&x.0) && x.1 >= from)
                .copied()
                .collect::<Vec<_>>(),
        );
        let ints: ArrayRef = Arc::new(Int64Array::from(keys.clone()));
        let got = store
            .read_for_keys(
                "ints",
                &["k", "ts", "v"],
                "k",
                ints.clone(),
                "ts",
                Some(from),
            )
            .await
            .expect("read ints");
        assert_eq!(read_rows(&got), want, "{asked} integer keys");
        let texts = arrow::compute::cast(&ints, &DataType::Utf8).expect("text keys");
        let got = store
            .read_for_keys("texts", &["k", "ts", "v"], "k", texts, "ts", Some(from))
            .await
            .expect("read texts");
        let got: Vec<RecordBatch> = got.into_iter().map(int_keys).collect();
        assert_eq!(read_rows(&got), want, "{asked} text keys");
    }
}
