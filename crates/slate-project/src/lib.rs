//! Reads a Slate project from disk and resolves it into a validated [`Project`]. Loading is
//! two-step: files are read raw (YAML trees with positions, SQL headers), then resolved; every
//! problem found on the way is collected as a [`Diagnostic`] with file, line and column, so a
//! user sees them all at once.

mod diag;
mod load;
mod model;
mod resolve;
mod sql_file;
mod yaml;

pub use diag::{Diagnostic, Diagnostics, Span};
pub use load::load_project;
pub use model::*;
pub use sql_file::{bind_placeholders, bind_placeholders_as};
