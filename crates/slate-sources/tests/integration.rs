//! The integration tests of `slate-sources`, one test program (one link of its dependencies):
//! one module per area.

mod common;
mod postgres;
mod snowflake;
mod snowflake_protocol;
