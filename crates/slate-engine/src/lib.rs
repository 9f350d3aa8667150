//! Plans and runs scheduled queries: ingest (incremental SQL resolvers) → compute
//! (point-in-time features) → predict (model resolvers) → write (online and offline stores) →
//! commit (run record and watermark, last).

mod backends;
mod check;
mod compute;
mod dataset;
mod encode;
mod error;
pub mod exec;
mod frame;
mod plan;
mod run;
mod schedule;
mod windows;

pub use check::source_diagnostics;
pub use compute::{Function, Functions};
pub use dataset::{Dataset, Spine, write_parquet};
pub use error::EngineError;
pub use plan::{
    Node, OutputPlan, QueryPlan, Scan, column_name, plan_diagnostics, plan_query, resolver_for,
    validate_models,
};
pub use run::{Engine, EngineConfig, OutputSummary, Progress, RunSummary, SilentProgress};
pub use schedule::{Scheduler, due, ticks_between};
