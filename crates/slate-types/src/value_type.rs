//! Scalar feature types and their Arrow representation.

use arrow_schema::{DataType, TimeUnit};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueType {
    Int,
    Float,
    Str,
    Bool,
    Datetime,
}

impl ValueType {
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "int" => ValueType::Int,
            "float" => ValueType::Float,
            "str" => ValueType::Str,
            "bool" => ValueType::Bool,
            "datetime" => ValueType::Datetime,
            _ => return None,
        })
    }

    pub const NAMES: &'static str = "int, float, str, bool, datetime";

    pub fn arrow(self) -> DataType {
        match self {
            ValueType::Int => DataType::Int64,
            ValueType::Float => DataType::Float64,
            ValueType::Str => DataType::Utf8,
            ValueType::Bool => DataType::Boolean,
            ValueType::Datetime => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ValueType::Int => "int",
            ValueType::Float => "float",
            ValueType::Str => "str",
            ValueType::Bool => "bool",
            ValueType::Datetime => "datetime",
        }
    }
}
