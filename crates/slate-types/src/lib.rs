//! Slate's shared vocabulary: feature references, durations and windows, sizes, value types,
//! error kinds and the clock. Every other crate speaks in these terms.

mod clock;
mod duration;
mod error;
mod feature_ref;
mod size;
mod time;
mod value_type;

pub use clock::{Clock, FixedClock, SystemClock};
pub use duration::{DurationError, Window, parse_duration_secs};
pub use error::ErrorKind;
pub use feature_ref::{FeatureRef, FeatureRefError};
pub use size::{SizeError, parse_size_bytes};
pub use time::{format_rfc3339, parse_rfc3339_micros};
pub use value_type::ValueType;
