//! Helpers shared by the example's integration tests.

use arrow::array::RecordBatch;

/// A prediction table without its `run_id` column, rows in `id` order: what two runs over the
/// same data must agree on byte for byte.
pub fn without_run_id_by_id(b: &RecordBatch) -> RecordBatch {
    let keep: Vec<usize> = (0..b.num_columns())
        .filter(|&i| b.schema().field(i).name() != "run_id")
        .collect();
    let b = b.project(&keep).expect("project");
    let order = arrow::compute::sort_to_indices(b.column_by_name("id").expect("id"), None, None)
        .expect("sort");
    RecordBatch::try_new(
        b.schema(),
        b.columns()
            .iter()
            .map(|c| arrow::compute::take(c, &order, None).expect("take"))
            .collect(),
    )
    .expect("batch")
}
