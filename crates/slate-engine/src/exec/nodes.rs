//! `NodesExec`: the plan's row-local nodes (expressions, Rust functions, models) over each
//! batch of its input, each node's columns appended in plan order. A row's values depend on
//! that row only, so partitions and batches are processed independently and the input's order
//! is kept.

use super::{Busy, FirstError, busy_stream};
use crate::EngineError;
use crate::compute::{self, Frame, Functions};
use crate::frame::ts_column;
use crate::plan::Node;
use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PlanProperties,
};
use futures::StreamExt;
use slate_model::OnnxModel;
use slate_types::ValueType;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// Row-local nodes and what they need to run.
pub(crate) struct RowNodes {
    pub nodes: Vec<Node>,
    pub models: Arc<HashMap<String, OnnxModel>>,
    pub functions: Functions,
    /// The input column holding each row's now (a microsecond timestamp).
    pub now: String,
    /// Time in expressions and functions.
    pub compute: Busy,
    /// Time in models.
    pub predict: Busy,
    pub errors: FirstError,
}

/// The column type a model's label has (see [`compute::label_array`]).
fn label_type(ty: ValueType) -> DataType {
    match ty {
        ValueType::Bool => DataType::Boolean,
        ValueType::Float => DataType::Float64,
        _ => DataType::Int64,
    }
}

impl RowNodes {
    /// The columns `node` appends, with their types; `None` for a node that is not row-local.
    fn fields(node: &Node) -> Option<Vec<Field>> {
        Some(match node {
            Node::Column { .. } => vec![],
            Node::Expression { column, ty, .. } => vec![Field::new(column, ty.arrow(), true)],
            Node::Function { outputs, .. } => outputs
                .iter()
                .map(|(c, ty)| Field::new(c, ty.arrow(), true))
                .collect(),
            Node::Model {
                label,
                label_ty,
                score,
                ..
            } => {
                let mut v = vec![Field::new(label, label_type(*label_ty), true)];
                v.extend(score.iter().map(|s| Field::new(s, DataType::Float64, true)));
                v
            }
            Node::Lookup { .. } | Node::Aggregate { .. } => return None,
        })
    }

    /// Whether `node` computes from its own row only.
    pub fn is_row_local(node: &Node) -> bool {
        Self::fields(node).is_some()
    }

    /// The output schema over `input`: its columns, then each node's.
    pub fn schema(&self, input: &Schema) -> Result<SchemaRef, EngineError> {
        let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
        for n in &self.nodes {
            fields.extend(
                Self::fields(n)
                    .ok_or_else(|| EngineError::Internal("a node that is not row-local".into()))?,
            );
        }
        Ok(Arc::new(Schema::new(fields)))
    }

    /// The nodes' columns over `batch`, appended to it (as `schema`).
    pub fn apply(
        &self,
        batch: &RecordBatch,
        schema: &SchemaRef,
    ) -> Result<RecordBatch, EngineError> {
        let now: Vec<i64> = ts_column(batch, &self.now)?
            .into_iter()
            .map(|v| v.unwrap_or_default())
            .collect();
        let mut frame = Frame::new(batch, now);
        let mut added: Vec<ArrayRef> = Vec::new();
        for node in &self.nodes {
            match node {
                Node::Column { .. } => {}
                Node::Expression { column, .. } => {
                    let a = self.compute.time(|| compute::expression(&frame, node))?;
                    added.push(a.clone());
                    frame.columns.insert(column.clone(), a);
                }
                Node::Function { .. } => {
                    let arrays = self
                        .compute
                        .time(|| compute::function(&frame, node, &self.functions))?;
                    for (c, a) in node.columns().into_iter().zip(arrays) {
                        added.push(a.clone());
                        frame.columns.insert(c.to_string(), a);
                    }
                }
                Node::Model { .. } => {
                    for (c, a) in self
                        .predict
                        .time(|| compute::model(&frame, node, &self.models))?
                    {
                        added.push(a.clone());
                        frame.columns.insert(c, a);
                    }
                }
                Node::Lookup { .. } | Node::Aggregate { .. } => {
                    return Err(EngineError::Internal("a node that is not row-local".into()));
                }
            }
        }
        let mut columns = batch.columns().to_vec();
        columns.extend(added);
        Ok(RecordBatch::try_new(schema.clone(), columns)?)
    }
}

pub(crate) struct NodesExec {
    input: Arc<dyn ExecutionPlan>,
    nodes: Arc<RowNodes>,
    /// Where the time of polling the input (the operators before, in this task) is counted.
    input_busy: Busy,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
}

impl fmt::Debug for NodesExec {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.debug_struct("NodesExec").finish_non_exhaustive()
    }
}

impl NodesExec {
    pub fn try_new(
        input: Arc<dyn ExecutionPlan>,
        nodes: Arc<RowNodes>,
        input_busy: Busy,
    ) -> Result<Self, EngineError> {
        let schema = nodes.schema(&input.schema())?;
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(input.output_partitioning().partition_count()),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(NodesExec {
            input,
            nodes,
            input_busy,
            schema,
            properties: Arc::new(properties),
        })
    }
}

impl DisplayAs for NodesExec {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let names: Vec<String> = self
            .nodes
            .nodes
            .iter()
            .flat_map(|n| match n {
                Node::Model { resolver, .. } => vec![format!("model {}", resolver.name)],
                Node::Function { resolver, .. } => vec![format!("function {}", resolver.name)],
                n => n.columns().into_iter().map(str::to_string).collect(),
            })
            .collect();
        match names.is_empty() {
            // Only timing the operators before it (a streamed run's stages).
            true => write!(f, "NodesExec: none"),
            false => write!(f, "NodesExec: [{}]", names.join(", ")),
        }
    }
}

impl ExecutionPlan for NodesExec {
    fn name(&self) -> &'static str {
        "NodesExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return Err(DataFusionError::Internal(
                "NodesExec takes one input".into(),
            ));
        }
        Ok(Arc::new(
            NodesExec::try_new(
                children.swap_remove(0),
                self.nodes.clone(),
                self.input_busy.clone(),
            )
            .map_err(|e| DataFusionError::External(Box::new(e)))?,
        ))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = busy_stream(
            self.input.execute(partition, context)?,
            self.input_busy.clone(),
        );
        let (nodes, schema) = (self.nodes.clone(), self.schema.clone());
        let stream = input.map(move |batch| {
            nodes
                .apply(&batch?, &schema)
                .map_err(|e| nodes.errors.keep(e))
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            stream,
        )))
    }
}
