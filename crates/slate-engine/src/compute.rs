//! Executing the compute nodes of a plan over the frame of root rows.

use crate::EngineError;
use crate::encode::Dictionary;
use crate::exec::pit_aggregate::PitAggregation;
use crate::exec::runtime::Execution;
use crate::frame::ts_column;
use crate::plan::Node;
use crate::windows::WindowsError;
use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int64Array, RecordBatch,
    TimestampMicrosecondArray, UInt32Array,
};
use arrow::compute::{cast_with_options, concat_batches, take};
use arrow::datatypes::{DataType, Int64Type, TimeUnit};
use slate_aggregate::kernel::{Prepared, QueryOrder};
use slate_aggregate::{Agg, Events, Output, Query, Values};
use slate_stores::OfflineStore;
use slate_types::ValueType;
use std::collections::HashMap;
use std::sync::Arc;

/// The root rows and every column computed so far, by name.
pub(crate) struct Frame {
    pub columns: HashMap<String, ArrayRef>,
    pub now: Vec<i64>,
    pub rows: usize,
    /// `(table, time column)` when the frame's rows are every row of that offline table and
    /// each row's now is its time (a backfill's root rows): aggregations over the table then
    /// compute from the frame instead of reading the table back.
    pub whole_table: Option<(String, String)>,
}

impl Frame {
    pub fn new(rows: &RecordBatch, now: Vec<i64>) -> Self {
        let columns = rows
            .schema()
            .fields()
            .iter()
            .zip(rows.columns())
            .map(|(f, c)| (f.name().clone(), c.clone()))
            .collect();
        Frame {
            columns,
            now,
            rows: rows.num_rows(),
            whole_table: None,
        }
    }

    pub fn column(&self, name: &str) -> Result<&ArrayRef, EngineError> {
        self.columns
            .get(name)
            .ok_or_else(|| EngineError::Internal(format!("frame has no column {name}")))
    }
}

/// `a` as `to`; a value the cast cannot carry is an error, never a null.
pub(crate) fn strict_cast(a: &ArrayRef, to: &DataType) -> Result<ArrayRef, EngineError> {
    if a.data_type() == to {
        return Ok(a.clone());
    }
    let options = arrow::compute::CastOptions {
        safe: false,
        ..Default::default()
    };
    Ok(cast_with_options(a, to, &options)?)
}

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// How much of a table's history a read needs.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Since {
    /// Every row.
    All,
    /// The rows at or after a time.
    From(i64),
    /// The rows at or after `from` and, before it, those an unbounded `latest` or time since
    /// the latest row needs (the table's entity state, moved on to `advance_to`).
    Latest { from: i64, advance_to: i64 },
}

/// Encodes the frame's key column and reads the rows of `table` whose `table_key` is among
/// its values: `(queries, history rows)`, keys as shared dictionary codes (a null or unknown
/// key has none).
pub(crate) async fn keyed_read(
    store: &OfflineStore,
    frame: &Frame,
    key: &str,
    table: &str,
    table_key: &str,
    columns: &[&str],
    time: Option<(&str, Since)>,
) -> Result<(Vec<Option<u32>>, Option<RecordBatch>, Vec<Option<u32>>), EngineError> {
    let keys = frame.column(key)?;
    let mut dict = Dictionary::keeping_values(keys.data_type())?;
    let codes = dict.encode(keys)?;
    let (time_col, since) = time.unwrap_or((table_key, Since::All));
    let batches = match since {
        Since::Latest { from, advance_to } => {
            store
                .read_latest_for_keys(
                    table,
                    columns,
                    table_key,
                    dict.values()?,
                    time_col,
                    from,
                    advance_to,
                )
                .await?
        }
        Since::From(_) | Since::All => {
            let from = match since {
                Since::From(f) => Some(f),
                _ => None,
            };
            store
                .read_for_keys(table, columns, table_key, dict.values()?, time_col, from)
                .await?
        }
    };
    let Some(first) = batches.first() else {
        return Ok((codes, None, vec![]));
    };
    let batch = concat_batches(&first.schema(), &batches)?;
    let table_codes = dict.lookup(
        batch
            .column_by_name(table_key)
            .ok_or_else(|| EngineError::Internal(format!("{table} read lacks {table_key}")))?,
    )?;
    Ok((codes, Some(batch), table_codes))
}

/// Runs a has-one lookup node: per frame row, the looked-up class's row with that key and the
/// greatest feature time before now (its only row when it has no feature time).
pub(crate) async fn lookup(
    store: &OfflineStore,
    frame: &Frame,
    node: &Node,
) -> Result<ArrayRef, EngineError> {
    let Node::Lookup {
        key,
        table,
        class_key,
        class_time,
        field,
        ty,
        ..
    } = node
    else {
        return Err(EngineError::Internal("not a lookup".into()));
    };
    let mut columns = vec![class_key.as_str(), field.as_str()];
    columns.extend(class_time.as_deref());
    columns.dedup();
    let (codes, batch, table_codes) =
        keyed_read(store, frame, key, table, class_key, &columns, None).await?;
    let Some(batch) = batch else {
        return Ok(arrow::array::new_null_array(&ty.arrow(), frame.rows));
    };
    let times = match class_time {
        Some(t) => ts_column(&batch, t)?,
        None => vec![Some(i64::MIN); batch.num_rows()],
    };
    let pick = latest_before(
        table_codes.iter().copied().zip(times),
        codes.iter().copied().zip(frame.now.iter().copied()),
    );
    let values = batch
        .column_by_name(field)
        .ok_or_else(|| EngineError::Internal(format!("{table} read lacks {field}")))?;
    let picked = take(values, &pick, None)?;
    strict_cast(&picked, &ty.arrow())
}

/// For each query (key code, now), the index of the latest of `versions` (key code, time) of
/// its key with a time strictly before now (of equal times, the last given), or null: what a
/// has-one lookup takes. A version without a code or time, or a query without a code, matches
/// nothing.
pub(crate) fn latest_before(
    versions: impl Iterator<Item = (Option<u32>, Option<i64>)>,
    queries: impl Iterator<Item = (Option<u32>, i64)>,
) -> UInt32Array {
    // (key code, time, index), sorted: each key's versions in time order.
    let mut entries: Vec<(u32, i64, u32)> = versions
        .enumerate()
        .filter_map(|(i, (c, t))| Some((c?, t?, i as u32)))
        .collect();
    entries.sort_unstable();
    queries
        .map(|(c, now)| {
            let c = c?;
            // The last entry below (c, now).
            let end = entries.partition_point(|e| (e.0, e.1) < (c, now));
            let e = entries.get(end.checked_sub(1)?)?;
            (e.0 == c).then_some(e.2)
        })
        .collect()
}

/// How an aggregated field's values reach the kernel and its results come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Use {
    /// No values (`count`, time since latest).
    None,
    /// Exact codes for `count_distinct`.
    Distinct,
    /// Numbers for `sum` and `mean`.
    Number,
    /// Order-preserving codes for `min`, `max` and `latest`, decoded back to the field's type.
    Ordered,
}

pub(crate) fn use_of(agg: Agg) -> Use {
    match agg {
        Agg::Count | Agg::TimeSinceLatest => Use::None,
        Agg::CountDistinct => Use::Distinct,
        Agg::Sum | Agg::Mean => Use::Number,
        Agg::Min | Agg::Max | Agg::Latest => Use::Ordered,
    }
}

/// Turns kernel results of [`Use::Ordered`] codes back into the field's values.
pub(crate) enum Decode {
    Plain,
    Timestamp,
    Bool,
    /// Codes are positions in these sorted distinct values.
    Ranked(ArrayRef),
}

pub(crate) fn kernel_values(col: &ArrayRef, how: Use) -> Result<(Values, Decode), EngineError> {
    let ints = |a: &ArrayRef| -> Result<Values, EngineError> {
        let a = strict_cast(a, &DataType::Int64)?;
        Ok(Values::Int(a.as_primitive::<Int64Type>().iter().collect()))
    };
    let floats = |a: &ArrayRef| -> Result<Values, EngineError> {
        let a = strict_cast(a, &DataType::Float64)?;
        Ok(Values::Float(
            a.as_primitive::<arrow::datatypes::Float64Type>()
                .iter()
                .collect(),
        ))
    };
    let ty = col.data_type();
    Ok(match how {
        Use::None => (Values::absent(), Decode::Plain),
        Use::Distinct => {
            let mut d = Dictionary::new(ty)?;
            let codes = d.encode(col)?;
            (
                Values::Int(codes.into_iter().map(|c| c.map(i64::from)).collect()),
                Decode::Plain,
            )
        }
        Use::Number if ty.is_integer() => (ints(col)?, Decode::Plain),
        Use::Number => (floats(col)?, Decode::Plain),
        Use::Ordered if ty.is_integer() => (ints(col)?, Decode::Plain),
        Use::Ordered if ty.is_floating() => (floats(col)?, Decode::Plain),
        Use::Ordered if matches!(ty, DataType::Timestamp(..)) => {
            let t = strict_cast(col, &ts_type())?;
            let t = strict_cast(&t, &DataType::Int64)?;
            (ints(&t)?, Decode::Timestamp)
        }
        Use::Ordered if ty == &DataType::Boolean => {
            let b = col.as_boolean();
            (
                Values::Int(b.iter().map(|v| v.map(i64::from)).collect()),
                Decode::Bool,
            )
        }
        Use::Ordered => {
            // Any other type: ranks in the sorted distinct values.
            let mut d = Dictionary::keeping_values(ty)?;
            let codes = d.encode(col)?;
            let distinct = d.values()?;
            let order = arrow::compute::sort_to_indices(&distinct, None, None)?;
            let mut rank = vec![0i64; distinct.len()];
            for (r, code) in order.values().iter().enumerate() {
                rank[*code as usize] = r as i64;
            }
            let sorted = take(&distinct, &order, None)?;
            (
                Values::Int(
                    codes
                        .into_iter()
                        .map(|c| c.map(|c| rank[c as usize]))
                        .collect(),
                ),
                Decode::Ranked(sorted),
            )
        }
    })
}

pub(crate) fn decode(out: Output, how: &Decode) -> Result<ArrayRef, EngineError> {
    Ok(match (out, how) {
        (Output::Float(v), _) => Arc::new(Float64Array::from(v)),
        (Output::Int(v), Decode::Plain) => Arc::new(Int64Array::from(v)),
        (Output::Int(v), Decode::Timestamp) => {
            Arc::new(TimestampMicrosecondArray::from(v).with_timezone("UTC"))
        }
        (Output::Int(v), Decode::Bool) => Arc::new(BooleanArray::from_iter(
            v.into_iter().map(|x| x.map(|x| x != 0)),
        )),
        (Output::Int(v), Decode::Ranked(sorted)) => {
            let idx = UInt32Array::from_iter(v.into_iter().map(|x| x.map(|x| x as u32)));
            take(sorted, &idx, None)?
        }
    })
}

/// The fields an aggregate group reads (beside its table's key and time) and how far back its
/// history goes, for queries whose nows lie between `first` and `last`.
pub(crate) fn history<'a>(
    nodes: &[&'a Node],
    first: Option<&i64>,
    last: Option<&i64>,
) -> (Vec<&'a str>, Since) {
    let Some(Node::Aggregate {
        table_key,
        table_time,
        ..
    }) = nodes.first()
    else {
        return (vec![], Since::All);
    };
    let mut fields: Vec<&str> = Vec::new();
    let mut widest = Some(0i64);
    // Unbounded aggregations that only need each entity's latest rows (kept in the table's
    // entity state) do not widen the read.
    let mut latest_only = true;
    let mut finite = 0i64;
    for n in nodes {
        if let Node::Aggregate {
            field, window, agg, ..
        } = n
        {
            if let Some(f) = field
                && !fields.contains(&f.as_str())
                && f != table_key
                && f != table_time
            {
                fields.push(f);
            }
            widest = match (widest, window) {
                (Some(a), Some(w)) => Some(a.max(*w)),
                _ => None,
            };
            match window {
                Some(w) => finite = finite.max(*w),
                None => latest_only &= matches!(agg, Agg::Latest | Agg::TimeSinceLatest),
            }
        }
    }
    let since = match (widest, first, last) {
        (Some(w), Some(m), _) => Since::From(m.saturating_sub(w)),
        (None, Some(m), Some(l)) if latest_only => Since::Latest {
            from: m.saturating_sub(finite),
            // A day before the last row's widest window: below any later run's window and,
            // for daily runs, below the next lookback.
            advance_to: l.saturating_sub(finite).saturating_sub(86_400_000_000),
        },
        _ => Since::All,
    };
    (fields, since)
}

/// Runs every aggregate node of one (key column, table) group: the history of the touched
/// entities is read once, back to the widest window, and sorted once.
pub(crate) async fn aggregates(
    store: &OfflineStore,
    frame: &Frame,
    nodes: &[&Node],
    query: &str,
    exec: &Execution,
) -> Result<Vec<ArrayRef>, EngineError> {
    let Some(Node::Aggregate {
        key,
        table,
        table_key,
        table_time,
        ..
    }) = nodes.first()
    else {
        return Ok(vec![]);
    };
    let (fields, since) = history(nodes, frame.now.iter().min(), frame.now.iter().max());
    if frame.whole_table.as_ref() == Some(&(table.clone(), table_time.clone())) && key == table_key
    {
        // The entity state still moves on, as the read below would have moved it.
        if let Since::Latest { advance_to, .. } = since {
            store
                .advance_latest_state(table, table_key, table_time, advance_to)
                .await?;
        }
        return aggregates_over_frame(frame, nodes, key, table_time, query, exec).await;
    }
    let mut columns = vec![table_key.as_str(), table_time.as_str()];
    columns.extend(fields.iter().copied());
    let (codes, batch, table_codes) = keyed_read(
        store,
        frame,
        key,
        table,
        table_key,
        &columns,
        Some((table_time, since)),
    )
    .await?;
    // A null key has no code and matches no history.
    let queries: Vec<Query> = codes
        .iter()
        .zip(&frame.now)
        .map(|(c, &now)| Query {
            entity: c.map_or(-1, i64::from),
            now,
        })
        .collect();
    let order = QueryOrder::new(&queries);
    let (kept, entity, ts) = match &batch {
        Some(b) => {
            let ts = crate::frame::ts_array(b, table_time)?;
            if u32::try_from(ts.len()).is_err() {
                return Err(EngineError::Internal(format!(
                    "{} rows of {table} history in one read",
                    ts.len()
                )));
            }
            // Reserved, not touched: only the kept rows' pages are ever written.
            let mut keep: Vec<u32> = Vec::with_capacity(ts.len());
            let mut entity = Vec::with_capacity(ts.len());
            let mut times = Vec::with_capacity(ts.len());
            let micros = ts.values();
            for (i, c) in table_codes.iter().enumerate() {
                if let Some(c) = c
                    && ts.is_valid(i)
                {
                    keep.push(i as u32);
                    entity.push(i64::from(*c));
                    times.push(micros[i]);
                }
            }
            (UInt32Array::from(keep), entity, times)
        }
        None => (UInt32Array::from(Vec::<u32>::new()), vec![], vec![]),
    };
    let base = Prepared::new(&Events {
        value: Values::absent(),
        entity,
        ts,
    });
    let values = |f: &str| -> Result<Option<ArrayRef>, EngineError> {
        let Some(b) = &batch else {
            return Ok(None);
        };
        let col = b
            .column_by_name(f)
            .ok_or_else(|| EngineError::Internal(format!("{table} read lacks {f}")))?;
        Ok(Some(take(col, &kept, None)?))
    };
    let wanted = wanted(nodes, |f| f.to_string())?;
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
    crate::windows::aggregate(&base, &values, &queries, &order, &wanted, threads).map_err(|e| {
        match e {
            WindowsError::Kernel(reason) => EngineError::Plan {
                query: query.into(),
                reason,
            },
            WindowsError::Engine(e) => e,
        }
    })
}

/// The aggregations of aggregate `nodes`, their fields named by `field`.
fn wanted(
    nodes: &[&Node],
    field: impl Fn(&str) -> String,
) -> Result<Vec<PitAggregation>, EngineError> {
    nodes
        .iter()
        .map(|n| match n {
            Node::Aggregate {
                feature,
                field: f,
                agg,
                window,
                ty,
                ..
            } => Ok(PitAggregation {
                field: f.as_deref().map(&field),
                agg: *agg,
                window: *window,
                output: ty.arrow(),
                name: feature.to_string(),
            }),
            _ => Err(EngineError::Internal("not an aggregation".into())),
        })
        .collect()
}

/// Whole entities per chunk of the point-in-time operator.
const PIT_CHUNK_ROWS: usize = 1 << 18;

/// The aggregate `nodes` when the frame's rows are the whole history of their table (each row
/// an event at `time` and a query as of the same time), through the partitioned point-in-time
/// operator: rows hash-partitioned by `key` into `partitions`, each partition sorted by
/// (key, time) with DataFusion's spilling sort and aggregated one chunk of whole entities at a
/// time. Results in frame order.
async fn aggregates_over_frame(
    frame: &Frame,
    nodes: &[&Node],
    key: &str,
    time: &str,
    query: &str,
    exec: &Execution,
) -> Result<Vec<ArrayRef>, EngineError> {
    use crate::exec::pit_aggregate::{EVENT, PitSpec, QUERY, pit_plan};
    use arrow::datatypes::{Field, Schema};
    use datafusion::datasource::memory::MemorySourceConfig;

    // Each aggregated field once, as `__field<j>`.
    let mut fields: Vec<String> = Vec::new();
    for n in nodes {
        if let Node::Aggregate {
            field: Some(f),
            agg,
            ..
        } = n
            && use_of(*agg) != Use::None
            && !fields.contains(f)
        {
            fields.push(f.clone());
        }
    }
    let aggregations = wanted(nodes, |f| {
        let j = fields.iter().position(|x| x == f).unwrap_or(0);
        format!("__field{j}")
    })?;
    let key_col = frame.column(key)?.clone();
    let time_valid = frame.column(time)?.clone();
    let mut schema_fields = vec![
        Field::new("__row", DataType::UInt32, false),
        Field::new("__key", key_col.data_type().clone(), true),
        Field::new("__time", ts_type(), false),
        Field::new("__role", DataType::UInt8, false),
    ];
    let mut field_cols = Vec::new();
    for (j, f) in fields.iter().enumerate() {
        let c = frame.column(f)?.clone();
        schema_fields.push(Field::new(
            format!("__field{j}"),
            c.data_type().clone(),
            true,
        ));
        field_cols.push(c);
    }
    let schema = Arc::new(Schema::new(schema_fields));
    let rows = u32::try_from(frame.rows).map_err(|_| {
        EngineError::Internal(format!("{} rows in one frame; at most 2^32", frame.rows))
    })?;
    let row_bytes = schema
        .fields()
        .iter()
        .map(|f| f.data_type().primitive_width().unwrap_or(24))
        .sum();
    let batch_rows = exec.batch_rows(row_bytes);
    let mut batches = Vec::new();
    for start in (0..frame.rows).step_by(batch_rows) {
        let len = batch_rows.min(frame.rows - start);
        let end = start + len;
        // A row without a time asks (as of its now) but is no event.
        let role = arrow::array::UInt8Array::from_iter_values((start..end).map(|i| {
            if time_valid.is_valid(i) {
                EVENT | QUERY
            } else {
                QUERY
            }
        }));
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(UInt32Array::from_iter_values(start as u32..end as u32)),
            key_col.slice(start, len),
            Arc::new(
                TimestampMicrosecondArray::from(frame.now[start..end].to_vec())
                    .with_timezone("UTC"),
            ),
            Arc::new(role),
        ];
        cols.extend(field_cols.iter().map(|c| c.slice(start, len)));
        batches.push(RecordBatch::try_new(schema.clone(), cols)?);
    }
    let spec = PitSpec {
        key: "__key".into(),
        time: "__time".into(),
        role: "__role".into(),
        carry: vec!["__row".into()],
        aggregations,
        chunk_rows: PIT_CHUNK_ROWS,
    };
    let failed = |e: datafusion::error::DataFusionError| EngineError::Plan {
        query: query.into(),
        reason: match e.find_root() {
            datafusion::error::DataFusionError::Execution(m) => m.clone(),
            root => root.to_string(),
        },
    };
    let plan = MemorySourceConfig::try_new_exec(&[batches], schema, None)
        .and_then(|source| pit_plan(source, spec, exec.partitions))
        .map_err(failed)?;
    let ctx = exec.session(batch_rows).map_err(failed)?;
    let out = datafusion::physical_plan::collect(plan.clone(), ctx.task_ctx())
        .await
        .map_err(failed)?;
    exec.record_spills(&plan);
    let schema = plan.schema();
    drop(plan);
    // Every frame row is a query: one output row each, in partition order; back to frame order,
    // one column at a time, each column's parts released once it is gathered (the output is
    // held once, not thrice).
    let n_cols = schema.fields().len();
    let mut parts: Vec<Vec<ArrayRef>> = (0..n_cols)
        .map(|c| out.iter().map(|b| b.column(c).clone()).collect())
        .collect();
    drop(out);
    let mut position = vec![0u32; frame.rows];
    let mut seen = 0u32;
    for part in std::mem::take(&mut parts[0]) {
        for r in part.as_primitive::<arrow::datatypes::UInt32Type>().values() {
            position[*r as usize] = seen;
            seen += 1;
        }
    }
    if seen != rows {
        return Err(EngineError::Internal(format!(
            "the point-in-time operator returned {seen} rows for {rows}"
        )));
    }
    let position = UInt32Array::from(position);
    let mut columns = Vec::with_capacity(n_cols.saturating_sub(1));
    for (part, field) in parts.iter_mut().zip(schema.fields()).skip(1) {
        let part = std::mem::take(part);
        let refs: Vec<&dyn Array> = part.iter().map(|a| a.as_ref()).collect();
        let all = match refs.is_empty() {
            true => arrow::array::new_empty_array(field.data_type()),
            false => arrow::compute::concat(&refs)?,
        };
        drop(refs);
        drop(part);
        columns.push(take(&all, &position, None)?);
    }
    Ok(columns)
}

/// Rows a model scores in one call: its input matrix and outputs stay this size whatever the
/// frame's.
const PREDICT_CHUNK_ROWS: usize = 1 << 18;

/// A model node over the frame: its columns (label, then score when it has one), named.
pub(crate) fn model(
    frame: &Frame,
    node: &Node,
    models: &HashMap<String, slate_model::OnnxModel>,
) -> Result<Vec<(String, ArrayRef)>, EngineError> {
    let Node::Model {
        resolver,
        inputs,
        label,
        label_ty,
        score,
    } = node
    else {
        return Err(EngineError::Internal("not a model".into()));
    };
    let model = models
        .get(&resolver.name)
        .ok_or_else(|| EngineError::Internal("model not loaded".into()))?;
    let features = inputs
        .iter()
        .map(|c| frame.column(c).cloned())
        .collect::<Result<Vec<_>, _>>()?;
    let mut labels = Vec::with_capacity(frame.rows);
    let mut scores = Vec::with_capacity(frame.rows);
    let regressor = matches!(model.kind(), slate_model::ModelKind::Regressor { .. });
    for start in (0..frame.rows).step_by(PREDICT_CHUNK_ROWS) {
        let len = PREDICT_CHUNK_ROWS.min(frame.rows - start);
        let chunk: Vec<ArrayRef> = features.iter().map(|c| c.slice(start, len)).collect();
        let prediction = model.predict(&chunk, &resolver.defaults)?;
        if score.is_some() || regressor {
            scores.extend(prediction.positive_scores().into_iter().map(f64::from));
        }
        labels.extend(prediction.labels);
    }
    // A regressor's value is its output feature (a float, as `slate apply` checks).
    if regressor {
        let values = Float64Array::from(scores);
        let column = arrow::compute::cast(&values, &label_ty.arrow())?;
        return Ok(vec![(label.clone(), column)]);
    }
    let mut out = vec![(label.clone(), label_array(&labels, *label_ty))];
    if let Some(s) = score {
        out.push((s.clone(), Arc::new(Float64Array::from(scores)) as ArrayRef));
    }
    Ok(out)
}

/// The label column of a model's predicted labels, typed as the output feature.
pub(crate) fn label_array(labels: &[i64], ty: ValueType) -> ArrayRef {
    match ty {
        ValueType::Bool => Arc::new(BooleanArray::from_iter(
            labels.iter().map(|l| Some(*l != 0)),
        )),
        ValueType::Float => Arc::new(Float64Array::from_iter_values(
            labels.iter().map(|l| *l as f64),
        )),
        _ => Arc::new(Int64Array::from(labels.to_vec())),
    }
}

/// Compiles `sql` over columns of the given types, as DataFusion would evaluate it, and checks
/// that its result can be cast to `ty`; the error is DataFusion's message.
pub(crate) fn check_expression(
    sql: &str,
    fields: &[(String, DataType)],
    ty: ValueType,
) -> Result<(), String> {
    let schema = arrow::datatypes::Schema::new(
        fields
            .iter()
            .map(|(n, t)| arrow::datatypes::Field::new(n, t.clone(), true))
            .collect::<Vec<_>>(),
    );
    let (_, out) = compile(sql, &schema).map_err(|e| e.to_string())?;
    let out = seconds_type(&out);
    if matches!(out, DataType::Timestamp(..)) && ty != ValueType::Datetime {
        return Err(format!("it is a datetime, not a {}", ty.name()));
    }
    if !arrow::compute::can_cast_types(&out, &ty.arrow()) {
        return Err(format!("its {out} value cannot be a {}", ty.name()));
    }
    Ok(())
}

/// A duration becomes float seconds, as `now - latest(...)` does.
fn seconds_type(t: &DataType) -> DataType {
    match t {
        DataType::Duration(_) => DataType::Float64,
        other => other.clone(),
    }
}

type Compiled = (Arc<dyn datafusion::physical_plan::PhysicalExpr>, DataType);

fn compile(
    sql: &str,
    schema: &arrow::datatypes::Schema,
) -> Result<Compiled, datafusion::error::DataFusionError> {
    let ctx = datafusion::prelude::SessionContext::new();
    let df_schema = datafusion::common::DFSchema::try_from(schema.clone())?;
    let expr = ctx.parse_sql_expr(sql, &df_schema)?;
    // Coerced and simplified first: some functions (`coalesce`) only exist in simplified form.
    let simplify = datafusion::logical_expr::simplify::SimplifyContext::builder()
        .with_schema(Arc::new(df_schema.clone()))
        .build();
    let simplifier = datafusion::optimizer::simplify_expressions::ExprSimplifier::new(simplify);
    let expr = simplifier.simplify(simplifier.coerce(expr, &df_schema)?)?;
    let physical = ctx.create_physical_expr(expr, &df_schema)?;
    let ty = physical.data_type(schema)?;
    Ok((physical, ty))
}

/// Evaluates an expression node over the frame.
pub(crate) fn expression(frame: &Frame, node: &Node) -> Result<ArrayRef, EngineError> {
    let Node::Expression {
        feature,
        sql,
        inputs,
        uses_now,
        ty,
        ..
    } = node
    else {
        return Err(EngineError::Internal("not an expression".into()));
    };
    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for c in inputs {
        let a = frame.column(c)?;
        fields.push(arrow::datatypes::Field::new(c, a.data_type().clone(), true));
        columns.push(a.clone());
    }
    if *uses_now {
        fields.push(arrow::datatypes::Field::new("__now", ts_type(), true));
        columns.push(Arc::new(
            TimestampMicrosecondArray::from(frame.now.clone()).with_timezone("UTC"),
        ));
    }
    let fail = |e: String| EngineError::BadValue {
        resolver: format!("expression of {feature}"),
        reason: e,
    };
    let schema = Arc::new(arrow::datatypes::Schema::new(fields));
    let batch = if columns.is_empty() {
        RecordBatch::try_new_with_options(
            schema.clone(),
            vec![],
            &arrow::array::RecordBatchOptions::new().with_row_count(Some(frame.rows)),
        )?
    } else {
        RecordBatch::try_new(schema.clone(), columns)?
    };
    let (physical, _) = compile(sql, &schema).map_err(|e| fail(e.to_string()))?;
    let value = physical
        .evaluate(&batch)
        .and_then(|v| v.into_array(frame.rows))
        .map_err(|e| fail(e.to_string()))?;
    let value = match value.data_type() {
        DataType::Duration(unit) => {
            let per_second = match unit {
                TimeUnit::Second => 1.0,
                TimeUnit::Millisecond => 1e3,
                TimeUnit::Microsecond => 1e6,
                TimeUnit::Nanosecond => 1e9,
            };
            let ticks = strict_cast(&value, &DataType::Int64)?;
            let secs: Float64Array = ticks
                .as_primitive::<Int64Type>()
                .iter()
                .map(|v| v.map(|v| v as f64 / per_second))
                .collect();
            Arc::new(secs) as ArrayRef
        }
        _ => value,
    };
    strict_cast(&value, &ty.arrow()).map_err(|e| fail(format!("as {}: {e}", ty.name())))
}

/// A Rust resolver: a batch with one column per declared input (named as the plan's frame
/// columns: `amount`, `user__num_transactions__1d`) in, a batch with one column per declared
/// output (named as the output feature: `basket_class`) and as many rows out.
pub type Function =
    Arc<dyn Fn(&RecordBatch) -> Result<RecordBatch, String> + Send + Sync + 'static>;

/// The Rust resolvers a program registers with its engine, by the name its project declares.
#[derive(Clone, Default)]
pub struct Functions(HashMap<String, Function>);

impl Functions {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `f` as the function resolver `name` (a `kind: function` resolver file).
    pub fn register(
        mut self,
        name: &str,
        f: impl Fn(&RecordBatch) -> Result<RecordBatch, String> + Send + Sync + 'static,
    ) -> Self {
        self.0.insert(name.to_string(), Arc::new(f));
        self
    }

    pub fn get(&self, name: &str) -> Option<&Function> {
        self.0.get(name)
    }
}

impl std::fmt::Debug for Functions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// Calls a function node over the frame; checks what it returns against its declaration.
pub(crate) fn function(
    frame: &Frame,
    node: &Node,
    functions: &Functions,
) -> Result<Vec<ArrayRef>, EngineError> {
    let Node::Function {
        resolver,
        inputs,
        outputs,
    } = node
    else {
        return Err(EngineError::Internal("not a function".into()));
    };
    let fail = |reason: String| EngineError::Function {
        name: resolver.name.clone(),
        reason,
    };
    let f = functions.get(&resolver.name).ok_or_else(|| {
        fail("not registered with this engine; register it with `Engine::with_functions`".into())
    })?;
    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for c in inputs {
        let a = frame.column(c)?;
        fields.push(arrow::datatypes::Field::new(c, a.data_type().clone(), true));
        columns.push(a.clone());
    }
    let batch = RecordBatch::try_new(Arc::new(arrow::datatypes::Schema::new(fields)), columns)?;
    let out = f(&batch).map_err(fail)?;
    if out.num_rows() != frame.rows {
        return Err(fail(format!(
            "returned {} rows for {} input rows",
            out.num_rows(),
            frame.rows
        )));
    }
    let mut arrays = Vec::new();
    for (o, (_, ty)) in resolver.outputs.iter().zip(outputs) {
        let col = out
            .schema()
            .fields()
            .iter()
            .position(|f| f.name().eq_ignore_ascii_case(&o.feature))
            .map(|i| out.column(i).clone())
            .ok_or_else(|| fail(format!("returned no `{}` column", o.feature)))?;
        arrays.push(
            strict_cast(&col, &ty.arrow())
                .map_err(|e| fail(format!("`{}` is not a valid {}: {e}", o.feature, ty.name())))?,
        );
    }
    Ok(arrays)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::StringArray;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    /// `min`, `max`, `latest` and `count_distinct` over strings, through the engine's encoding
    /// (sorted ranks, dictionary codes) and back, against a brute force over the strings.
    fn check(
        rows: &[(i64, i64, Option<String>)],
        queries: &[(i64, i64)],
        window: Option<i64>,
    ) -> Result<(), TestCaseError> {
        let col: ArrayRef = Arc::new(StringArray::from(
            rows.iter().map(|r| r.2.clone()).collect::<Vec<_>>(),
        ));
        let qs: Vec<Query> = queries
            .iter()
            .map(|&(entity, now)| Query { entity, now })
            .collect();
        for agg in [Agg::Min, Agg::Max, Agg::Latest, Agg::CountDistinct] {
            let (values, decoder) = kernel_values(&col, use_of(agg)).expect("encode");
            let events = Events {
                entity: rows.iter().map(|r| r.0).collect(),
                ts: rows.iter().map(|r| r.1).collect(),
                value: values,
            };
            let out = Prepared::new(&events)
                .aggregate(&qs, agg, window)
                .expect("aggregate");
            let got = decode(out, &decoder).expect("decode");
            for (i, q) in qs.iter().enumerate() {
                let lower = window.map_or(i64::MIN, |w| q.now - w);
                let inside: Vec<(i64, &String)> = rows
                    .iter()
                    .filter(|r| r.0 == q.entity && r.1 >= lower && r.1 < q.now)
                    .filter_map(|r| r.2.as_ref().map(|v| (r.1, v)))
                    .collect();
                if agg == Agg::CountDistinct {
                    let want = inside.iter().map(|p| p.1).collect::<BTreeSet<_>>().len();
                    let got = got.as_primitive::<Int64Type>().value(i);
                    prop_assert_eq!(got, want as i64, "distinct, query {:?}", q);
                    continue;
                }
                let want = match agg {
                    Agg::Min => inside.iter().map(|p| p.1).min(),
                    Agg::Max => inside.iter().map(|p| p.1).max(),
                    _ => inside.iter().max().map(|p| p.1),
                };
                let s = got.as_string::<i32>();
                let got = (!s.is_null(i)).then(|| s.value(i).to_string());
                prop_assert_eq!(got, want.cloned(), "{:?}, query {:?}", agg, q);
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, rng_seed: proptest::test_runner::RngSeed::Fixed(3), ..ProptestConfig::default() })]

        #[test]
        fn string_aggregations_equal_the_brute_force(
            rows in prop::collection::vec(
                (0i64..5, 0i64..30, prop::option::weighted(0.85, "[a-c]{0,3}|é|Z|aa")),
                0..80,
            ),
            queries in prop::collection::vec((0i64..6, 0i64..35), 0..40),
            w in prop::option::of(1i64..15),
        ) {
            check(&rows, &queries, w)?;
        }
    }
}
