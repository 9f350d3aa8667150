//! Rows of a write regrouped by day through files on disk: a streamed write of rows ordered by
//! entity touches every day of the history in every batch, and a Delta writer holds an open
//! Parquet file (its row group and upload buffer) per day it has seen; regrouped, it holds one
//! at a time, whatever the number of days.

use crate::offline::day_of;
use arrow::array::{Array, TimestampMicrosecondArray, UInt32Array};
use arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use arrow::record_batch::RecordBatch;
use futures::StreamExt;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::PathBuf;

type Batches = futures::stream::BoxStream<'static, Result<RecordBatch, ArrowError>>;

/// Rows handed on per day at most this many at a time (the pieces written are smaller).
const OUT_ROWS: usize = 1 << 16;
/// Write buffer of each day's file.
const FILE_BUFFER: usize = 32 << 10;

/// Deletes the bucket directory however the write ends (done, failed or dropped).
struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn io_err(what: &str, path: &std::path::Path, e: impl std::fmt::Display) -> ArrowError {
    ArrowError::IoError(
        format!("{what} {}: {e}", path.display()),
        std::io::Error::other(e.to_string()),
    )
}

/// The day files of one write while the rows arrive.
struct Buckets {
    dir: Dir,
    time: String,
    schema: Option<SchemaRef>,
    writers: BTreeMap<Option<i32>, (PathBuf, StreamWriter<BufWriter<File>>)>,
}

impl Buckets {
    fn file(&self, day: Option<i32>) -> PathBuf {
        self.dir.0.join(match day {
            Some(d) => format!("day-{d}.arrow"),
            None => "day-none.arrow".into(),
        })
    }

    /// Appends each row of `batch` to its day's file, in the batch's order.
    fn add(&mut self, batch: &RecordBatch) -> Result<(), ArrowError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let schema = self.schema.get_or_insert_with(|| batch.schema()).clone();
        if batch.schema() != schema {
            return Err(ArrowError::SchemaError(
                "a write's batches have different columns".into(),
            ));
        }
        let ts = batch.column_by_name(&self.time).ok_or_else(|| {
            ArrowError::SchemaError(format!("no time column {} to partition by", self.time))
        })?;
        let ts = arrow::compute::cast(ts, &DataType::Timestamp(TimeUnit::Microsecond, None))?;
        let ts = ts
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .ok_or_else(|| ArrowError::CastError(format!("{} is not a time", self.time)))?;
        // Row positions per day, each in the batch's order.
        let mut days: BTreeMap<Option<i32>, Vec<u32>> = BTreeMap::new();
        for i in 0..ts.len() {
            let day = ts.is_valid(i).then(|| day_of(ts.value(i)));
            days.entry(day).or_default().push(i as u32);
        }
        for (day, rows) in days {
            let piece = match rows.len() == batch.num_rows() {
                true => batch.clone(),
                false => arrow::compute::take_record_batch(batch, &UInt32Array::from(rows))?,
            };
            if !self.writers.contains_key(&day) {
                let path = self.file(day);
                let file = File::create(&path).map_err(|e| io_err("cannot create", &path, e))?;
                let w =
                    StreamWriter::try_new(BufWriter::with_capacity(FILE_BUFFER, file), &schema)?;
                self.writers.insert(day, (path, w));
            }
            if let Some((_, w)) = self.writers.get_mut(&day) {
                w.write(&piece)?;
            }
        }
        Ok(())
    }
}

/// `batches` regrouped by the UTC day of their `time` column: every batch is written as it
/// arrives to one Arrow IPC file per day under `dir` (created; the caller's own), and once the
/// input ends the days are handed on in order, each day's rows in their arrival order, in
/// batches of up to 65,536 rows. A day's file is deleted once read, and `dir` when the stream
/// ends or is dropped. An error of the input is handed on at once.
pub(crate) fn by_day(batches: Batches, time: &str, dir: PathBuf) -> Batches {
    let buckets = Buckets {
        dir: Dir(dir),
        time: time.to_string(),
        schema: None,
        writers: BTreeMap::new(),
    };
    enum State {
        Filling(Batches, Buckets),
        Reading(
            std::vec::IntoIter<PathBuf>,
            Option<StreamReader<BufReader<File>>>,
            Dir,
        ),
    }
    let start = async move {
        std::fs::create_dir_all(&buckets.dir.0)
            .map_err(|e| io_err("cannot create", &buckets.dir.0, e))?;
        Ok::<_, ArrowError>(State::Filling(batches, buckets))
    };
    futures::stream::once(start)
        .flat_map(|state| {
            futures::stream::unfold(Some(state), |state| async move {
                let mut state = match state? {
                    Ok(s) => s,
                    Err(e) => return Some((Err(e), None)),
                };
                loop {
                    state = match state {
                        State::Filling(mut input, mut buckets) => match input.next().await {
                            Some(Ok(b)) => match buckets.add(&b) {
                                Ok(()) => State::Filling(input, buckets),
                                Err(e) => return Some((Err(e), None)),
                            },
                            Some(Err(e)) => return Some((Err(e), None)),
                            None => {
                                let mut files = Vec::new();
                                for (_, (path, mut w)) in std::mem::take(&mut buckets.writers) {
                                    if let Err(e) = w.finish() {
                                        return Some((Err(e), None));
                                    }
                                    files.push(path);
                                }
                                State::Reading(files.into_iter(), None, buckets.dir)
                            }
                        },
                        State::Reading(mut files, reader, dir) => {
                            let mut reader = match reader {
                                Some(r) => r,
                                None => {
                                    let path = files.next()?;
                                    let opened = File::open(&path)
                                        .map_err(|e| io_err("cannot open", &path, e))
                                        .and_then(|f| {
                                            StreamReader::try_new(BufReader::new(f), None)
                                        });
                                    // Read from the open handle; the name goes now.
                                    let _ = std::fs::remove_file(&path);
                                    match opened {
                                        Ok(r) => r,
                                        Err(e) => return Some((Err(e), None)),
                                    }
                                }
                            };
                            let mut pieces = Vec::new();
                            let mut rows = 0;
                            let mut ended = false;
                            while rows < OUT_ROWS {
                                match reader.next() {
                                    Some(Ok(b)) => {
                                        rows += b.num_rows();
                                        pieces.push(b);
                                    }
                                    Some(Err(e)) => return Some((Err(e), None)),
                                    None => {
                                        ended = true;
                                        break;
                                    }
                                }
                            }
                            let schema = reader.schema();
                            let next = State::Reading(files, (!ended).then_some(reader), dir);
                            if pieces.is_empty() {
                                next
                            } else {
                                let out = arrow::compute::concat_batches(&schema, &pieces);
                                return Some((out, Some(Ok(next))));
                            }
                        }
                    };
                }
            })
        })
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use arrow::datatypes::{Field, Schema};
    use std::sync::Arc;

    fn batch(times: &[Option<i64>], ids: &[i64]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(ids.to_vec())),
                Arc::new(TimestampMicrosecondArray::from(times.to_vec()).with_timezone("UTC")),
            ],
        )
        .unwrap()
    }

    #[tokio::test]
    async fn rows_come_back_grouped_by_day_in_arrival_order_and_the_files_go() {
        let day = 86_400_000_000i64;
        let dir = tempfile::tempdir().unwrap();
        let buckets = dir.path().join("b");
        // Seeded pseudo-random days (some null) over 40 batches.
        let mut seed = 7u64;
        let mut input = Vec::new();
        let mut expected: BTreeMap<Option<i32>, Vec<i64>> = BTreeMap::new();
        let mut id = 0;
        for _ in 0..40 {
            let mut times = Vec::new();
            let mut ids = Vec::new();
            for _ in 0..500 {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let d = (seed >> 33) % 13;
                let t = (d != 12).then(|| (d as i64 - 3) * day + (seed >> 40) as i64 % day);
                times.push(t);
                ids.push(id);
                expected.entry(t.map(day_of)).or_default().push(id);
                id += 1;
            }
            input.push(Ok(batch(&times, &ids)));
        }
        let out: Vec<RecordBatch> =
            by_day(futures::stream::iter(input).boxed(), "ts", buckets.clone())
                .map(|b| b.unwrap())
                .collect()
                .await;
        let mut got: Vec<(Option<i32>, i64)> = Vec::new();
        for b in &out {
            let ids = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
            let ts = b
                .column(1)
                .as_any()
                .downcast_ref::<TimestampMicrosecondArray>()
                .unwrap();
            assert_eq!(
                b.schema().field(1).data_type(),
                &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
            );
            for i in 0..b.num_rows() {
                got.push((ts.is_valid(i).then(|| day_of(ts.value(i))), ids.value(i)));
            }
        }
        let want: Vec<(Option<i32>, i64)> = expected
            .into_iter()
            .flat_map(|(d, ids)| ids.into_iter().map(move |i| (d, i)))
            .collect();
        assert_eq!(got, want);
        assert!(!buckets.exists(), "the bucket directory is removed");
    }

    #[tokio::test]
    async fn an_input_error_is_handed_on_and_the_files_go() {
        let dir = tempfile::tempdir().unwrap();
        let buckets = dir.path().join("b");
        let input = vec![
            Ok(batch(&[Some(0), Some(86_400_000_000)], &[1, 2])),
            Err(ArrowError::ComputeError("the run failed".into())),
        ];
        let out: Vec<_> = by_day(futures::stream::iter(input).boxed(), "ts", buckets.clone())
            .collect()
            .await;
        assert_eq!(out.len(), 1);
        assert!(
            out[0]
                .as_ref()
                .is_err_and(|e| e.to_string().contains("the run failed"))
        );
        assert!(!buckets.exists());
    }
}
