//! The integration tests of `slate-stores`, one test program (one link of its dependencies):
//! one module per area.

mod ledger_conformance;
mod offline;
mod online_conformance;
