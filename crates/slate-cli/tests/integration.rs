//! The integration tests of `slate-cli`, one test program (one link of its dependencies):
//! one module per area.

mod common;
mod crash;
mod golden;
mod serve;
