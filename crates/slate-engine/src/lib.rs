//! Plans and runs scheduled queries: ingest (incremental SQL resolvers) → compute
//! (point-in-time features) → predict (model resolvers) → write (online and offline stores) →
//! commit (run record and watermark, last).

mod encode;
mod error;
mod frame;
mod plan;
mod run;

pub use error::EngineError;
pub use plan::{InputPlan, QueryPlan, plan_query, validate_models};
pub use run::{Engine, EngineConfig, OutputSummary, Progress, RunSummary, SilentProgress};
