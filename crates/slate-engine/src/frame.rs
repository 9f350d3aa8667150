//! Arrow helpers for the engine: shaping resolver output into a class's typed columns, and
//! reading key and time columns.

use crate::EngineError;
use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, UInt32Array};
use arrow::compute::{cast, take};
use arrow::datatypes::{Field, Schema, TimestampMicrosecondType};
use arrow::row::{RowConverter, SortField};
use slate_project::FeatureClass;
use std::sync::Arc;

/// Casts the resolver's output columns to the class's declared types and concatenates the
/// batches. Columns are matched to features by name, case-insensitively.
pub(crate) fn to_class_batch(
    resolver: &str,
    class: &FeatureClass,
    batches: Vec<RecordBatch>,
    required: &[&str],
) -> Result<RecordBatch, EngineError> {
    to_class_batch_at(resolver, class, batches, required, 0)
}

/// [`to_class_batch`] of batches whose first row is row `first_row` (0-based) of the result
/// (a stream's later batch), so that an error names the row of the whole result.
pub(crate) fn to_class_batch_at(
    resolver: &str,
    class: &FeatureClass,
    batches: Vec<RecordBatch>,
    required: &[&str],
    first_row: usize,
) -> Result<RecordBatch, EngineError> {
    let bad = |reason: String| EngineError::BadValue {
        resolver: resolver.into(),
        reason,
    };
    let Some(first) = batches.first() else {
        // No rows: every scalar feature, typed, so that later steps find their columns.
        let fields: Vec<Field> = class
            .scalar_features()
            .map(|(n, t)| Field::new(n, t.arrow(), true))
            .collect();
        return Ok(RecordBatch::new_empty(Arc::new(Schema::new(fields))));
    };
    let types: Vec<(&str, slate_types::ValueType)> = class.scalar_features().collect();
    let mut fields = Vec::new();
    for f in first.schema().fields() {
        let Some((name, ty)) = types.iter().find(|(n, _)| n.eq_ignore_ascii_case(f.name())) else {
            return Err(bad(format!(
                "output column `{}` is not a feature of `{}`",
                f.name(),
                class.name
            )));
        };
        fields.push(Field::new(*name, ty.arrow(), true));
    }
    for r in required {
        if !fields.iter().any(|f| f.name() == r) {
            return Err(bad(format!("the query returns no `{r}` column")));
        }
    }
    let schema = Arc::new(Schema::new(fields));
    // Column by column, each column's parts released once it is cast and joined: the rows are
    // held about once, not as the read, the cast and the joined copy at the same time.
    let mut parts: Vec<Vec<ArrayRef>> =
        vec![Vec::with_capacity(batches.len()); schema.fields().len()];
    for b in batches {
        for (part, c) in parts.iter_mut().zip(b.columns()) {
            part.push(c.clone());
        }
    }
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for (f, part) in schema.fields().iter().zip(parts.iter_mut()) {
        let part = std::mem::take(part);
        let mut casted = Vec::with_capacity(part.len());
        let mut offset = first_row;
        for src in part {
            let c = cast(&src, f.data_type()).map_err(|e| {
                bad(format!(
                    "column `{}` has type {} and cannot be read as {}: {e}",
                    f.name(),
                    src.data_type(),
                    f.data_type()
                ))
            })?;
            if c.null_count() > src.null_count() {
                let row = (0..src.len())
                    .find(|&k| c.is_null(k) && !src.is_null(k))
                    .unwrap_or(0);
                let value =
                    arrow::util::display::array_value_to_string(&src, row).unwrap_or_default();
                return Err(bad(format!(
                    "column `{}` holds `{value}` (row {} of the result), which is not a valid {}",
                    f.name(),
                    offset + row + 1,
                    f.data_type()
                )));
            }
            offset += src.len();
            casted.push(c);
        }
        let refs: Vec<&dyn Array> = casted.iter().map(|a| a.as_ref()).collect();
        arrays.push(match refs.len() {
            1 => casted[0].clone(),
            _ => arrow::compute::concat(&refs)?,
        });
    }
    Ok(RecordBatch::try_new(schema, arrays)?)
}

pub(crate) fn ts_column(b: &RecordBatch, name: &str) -> Result<Vec<Option<i64>>, EngineError> {
    Ok(ts_array(b, name)?.iter().collect())
}

/// Column `name` of `b` as microseconds since the epoch (UTC).
pub(crate) fn ts_array(
    b: &RecordBatch,
    name: &str,
) -> Result<arrow::array::TimestampMicrosecondArray, EngineError> {
    let c = b
        .column_by_name(name)
        .ok_or_else(|| EngineError::Internal(format!("missing column {name}")))?;
    let c = cast(
        c,
        &arrow::datatypes::DataType::Timestamp(
            arrow::datatypes::TimeUnit::Microsecond,
            Some("UTC".into()),
        ),
    )?;
    Ok(c.as_primitive::<TimestampMicrosecondType>().clone())
}

/// Keeps one row per key (the one with the latest time; the first such among equals), or with
/// `versions` one per key and time, sorted by key: the same input in any order gives the same
/// rows. Keys of any type are compared exactly, in Arrow's row format.
pub(crate) fn dedupe_sorted(
    b: &RecordBatch,
    key: &str,
    time: Option<&str>,
    versions: bool,
    resolver: &str,
) -> Result<RecordBatch, EngineError> {
    let key_col = b
        .column_by_name(key)
        .ok_or_else(|| EngineError::Internal(format!("missing column {key}")))?;
    let converter = RowConverter::new(vec![SortField::new(key_col.data_type().clone())])?;
    let keys = converter.convert_columns(std::slice::from_ref(key_col))?;
    let times = match time {
        Some(t) => ts_column(b, t)?,
        None => vec![Some(0); b.num_rows()],
    };
    for (i, t) in times.iter().enumerate() {
        if key_col.is_null(i) || t.is_none() {
            let col = if key_col.is_null(i) {
                key
            } else {
                time.unwrap_or(key)
            };
            return Err(EngineError::BadValue {
                resolver: resolver.into(),
                reason: format!(
                    "row {} has a null `{col}`; keys and feature times must be set",
                    i + 1
                ),
            });
        }
    }
    let mut order: Vec<u32> = (0..b.num_rows() as u32).collect();
    order.sort_by(|&i, &j| {
        let (i, j) = (i as usize, j as usize);
        keys.row(i)
            .cmp(&keys.row(j))
            .then(times[j].cmp(&times[i]))
            .then(i.cmp(&j))
    });
    order.dedup_by(|a, b| {
        let (a, b) = (*a as usize, *b as usize);
        keys.row(a) == keys.row(b) && (!versions || times[a] == times[b])
    });
    let idx = UInt32Array::from(order);
    let cols = b
        .columns()
        .iter()
        .map(|c| take(c, &idx, None))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new(b.schema(), cols)?)
}
