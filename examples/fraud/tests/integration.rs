//! The integration tests of the `fraud-example` package, one test program (one link of its dependencies):
//! one module per area.

mod common;
mod dataset;
mod exported_models;
mod late_rows;
mod model_chain;
mod pipeline;
mod postgres;
mod schedule;
mod snowflake;
mod string_keys;
mod test_batch_prediction;
