//! `source_exec`: a stream of record batches produced elsewhere (a resolver's rows as the source
//! reads them) as the leaf of a physical plan, executed once.

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use futures::StreamExt;
use futures::stream::BoxStream;
use std::sync::{Arc, Mutex};

/// Batches of one partition, as they are produced.
pub type Batches = BoxStream<'static, Result<RecordBatch>>;

/// A one-partition plan over `batches` (whose schema is `schema`); executing it twice is an
/// error, not a second read.
pub fn source_exec(schema: SchemaRef, batches: Batches) -> Result<Arc<dyn ExecutionPlan>> {
    let once = Arc::new(Once {
        schema: schema.clone(),
        batches: Mutex::new(Some(batches)),
    });
    Ok(Arc::new(StreamingTableExec::try_new(
        schema,
        vec![once],
        None,
        Vec::new(),
        false,
        None,
    )?))
}

struct Once {
    schema: SchemaRef,
    batches: Mutex<Option<Batches>>,
}

impl std::fmt::Debug for Once {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.debug_struct("Once").finish_non_exhaustive()
    }
}

impl PartitionStream for Once {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _: Arc<TaskContext>) -> SendableRecordBatchStream {
        let batches = self.batches.lock().ok().and_then(|mut b| b.take());
        let stream = match batches {
            Some(b) => b,
            None => futures::stream::once(async {
                Err(DataFusionError::Internal(
                    "a source stream was read twice".into(),
                ))
            })
            .boxed(),
        };
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), stream))
    }
}
