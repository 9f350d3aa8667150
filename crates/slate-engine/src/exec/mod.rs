//! The run's physical operators, each a DataFusion `ExecutionPlan` with its own tests.

pub mod pit_aggregate;
pub(crate) mod runtime;
