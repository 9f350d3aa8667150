//! PostgreSQL's binary result format into Arrow columns: each type Slate reads, decoded from
//! its wire bytes into one builder per column.

use datafusion::arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Float64Builder, Int64Builder, StringBuilder,
    TimestampMicrosecondBuilder,
};
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use std::sync::Arc;
use tokio_postgres::types::{FromSql, Type};

/// One value's wire bytes (`None`: SQL null), whatever its type.
pub(crate) struct Raw<'a>(pub Option<&'a [u8]>);

impl<'a> FromSql<'a> for Raw<'a> {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(Some(raw)))
    }

    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(None))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// Microseconds from 1970-01-01 to PostgreSQL's epoch, 2000-01-01.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
/// Days from 1970-01-01 to 2000-01-01.
const PG_EPOCH_DAYS: i32 = 10_957;

#[derive(Clone, Copy)]
pub(crate) enum Int {
    Two,
    Four,
    Eight,
}

pub(crate) enum Column {
    Bool(BooleanBuilder),
    Int(Int, Int64Builder),
    Float4(Float64Builder),
    Float8(Float64Builder),
    /// `numeric`, as the nearest double.
    Numeric(Float64Builder),
    Text(StringBuilder),
    Uuid(StringBuilder),
    Timestamp(TimestampMicrosecondBuilder),
    Date(Date32Builder),
}

fn fixed<const N: usize>(raw: &[u8]) -> Result<[u8; N], String> {
    raw.try_into()
        .map_err(|_| format!("expected {N} bytes, got {}", raw.len()))
}

impl Column {
    /// The builder for a column of type `ty`; `None` for a type Slate cannot read.
    pub(crate) fn new(ty: &Type, capacity: usize) -> Option<Column> {
        Some(match *ty {
            Type::BOOL => Column::Bool(BooleanBuilder::with_capacity(capacity)),
            Type::INT2 => Column::Int(Int::Two, Int64Builder::with_capacity(capacity)),
            Type::INT4 => Column::Int(Int::Four, Int64Builder::with_capacity(capacity)),
            Type::INT8 => Column::Int(Int::Eight, Int64Builder::with_capacity(capacity)),
            Type::FLOAT4 => Column::Float4(Float64Builder::with_capacity(capacity)),
            Type::FLOAT8 => Column::Float8(Float64Builder::with_capacity(capacity)),
            Type::NUMERIC => Column::Numeric(Float64Builder::with_capacity(capacity)),
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => {
                Column::Text(StringBuilder::with_capacity(capacity, capacity * 8))
            }
            Type::UUID => Column::Uuid(StringBuilder::with_capacity(capacity, capacity * 36)),
            Type::TIMESTAMP | Type::TIMESTAMPTZ => Column::Timestamp(
                TimestampMicrosecondBuilder::with_capacity(capacity).with_timezone("UTC"),
            ),
            Type::DATE => Column::Date(Date32Builder::with_capacity(capacity)),
            _ => return None,
        })
    }

    pub(crate) fn data_type(&self) -> DataType {
        match self {
            Column::Bool(_) => DataType::Boolean,
            Column::Int(..) => DataType::Int64,
            Column::Float4(_) | Column::Float8(_) | Column::Numeric(_) => DataType::Float64,
            Column::Text(_) | Column::Uuid(_) => DataType::Utf8,
            Column::Timestamp(_) => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            Column::Date(_) => DataType::Date32,
        }
    }

    /// Appends one value; an error says what is wrong with it.
    pub(crate) fn push(&mut self, raw: Option<&[u8]>) -> Result<(), String> {
        let Some(raw) = raw else {
            match self {
                Column::Bool(b) => b.append_null(),
                Column::Int(_, b) => b.append_null(),
                Column::Float4(b) | Column::Float8(b) | Column::Numeric(b) => b.append_null(),
                Column::Text(b) | Column::Uuid(b) => b.append_null(),
                Column::Timestamp(b) => b.append_null(),
                Column::Date(b) => b.append_null(),
            }
            return Ok(());
        };
        match self {
            Column::Bool(b) => b.append_value(fixed::<1>(raw)?[0] != 0),
            Column::Int(w, b) => b.append_value(match w {
                Int::Two => i64::from(i16::from_be_bytes(fixed(raw)?)),
                Int::Four => i64::from(i32::from_be_bytes(fixed(raw)?)),
                Int::Eight => i64::from_be_bytes(fixed(raw)?),
            }),
            Column::Float4(b) => b.append_value(f64::from(f32::from_be_bytes(fixed(raw)?))),
            Column::Float8(b) => b.append_value(f64::from_be_bytes(fixed(raw)?)),
            Column::Numeric(b) => b.append_value(numeric(raw)?),
            Column::Text(b) => b.append_value(
                std::str::from_utf8(raw).map_err(|_| "text that is not UTF-8".to_string())?,
            ),
            Column::Uuid(b) => {
                let u = fixed::<16>(raw)?;
                let hex: String = u.iter().map(|x| format!("{x:02x}")).collect();
                b.append_value(format!(
                    "{}-{}-{}-{}-{}",
                    &hex[0..8],
                    &hex[8..12],
                    &hex[12..16],
                    &hex[16..20],
                    &hex[20..32]
                ));
            }
            Column::Timestamp(b) => {
                let t = i64::from_be_bytes(fixed(raw)?);
                if t == i64::MAX || t == i64::MIN {
                    return Err("an infinite timestamp".into());
                }
                let micros = t
                    .checked_add(PG_EPOCH_MICROS)
                    .ok_or_else(|| format!("timestamp {t} µs after 2000-01-01 is out of range"))?;
                b.append_value(micros);
            }
            Column::Date(b) => {
                let d = i32::from_be_bytes(fixed(raw)?);
                if d == i32::MAX || d == i32::MIN {
                    return Err("an infinite date".into());
                }
                let days = d
                    .checked_add(PG_EPOCH_DAYS)
                    .ok_or_else(|| format!("date {d} days after 2000-01-01 is out of range"))?;
                b.append_value(days);
            }
        }
        Ok(())
    }

    pub(crate) fn finish(&mut self) -> ArrayRef {
        match self {
            Column::Bool(b) => Arc::new(b.finish()),
            Column::Int(_, b) => Arc::new(b.finish()),
            Column::Float4(b) | Column::Float8(b) | Column::Numeric(b) => Arc::new(b.finish()),
            Column::Text(b) | Column::Uuid(b) => Arc::new(b.finish()),
            Column::Timestamp(b) => Arc::new(b.finish()),
            Column::Date(b) => Arc::new(b.finish()),
        }
    }
}

/// A binary `numeric` as the nearest double: its base-10000 digits written out in decimal and
/// parsed, which rounds correctly.
fn numeric(raw: &[u8]) -> Result<f64, String> {
    let word = |i: usize| -> Result<u16, String> {
        raw.get(i..i + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| "a truncated numeric".to_string())
    };
    let ndigits = usize::from(word(0)?);
    let weight = i64::from(word(2)? as i16);
    let sign = word(4)?;
    match sign {
        0x0000 | 0x4000 => {}
        0xC000 => return Ok(f64::NAN),
        0xD000 => return Ok(f64::INFINITY),
        0xF000 => return Ok(f64::NEG_INFINITY),
        other => return Err(format!("a numeric with sign word {other:#x}")),
    }
    if ndigits == 0 {
        return Ok(0.0);
    }
    let mut text = String::with_capacity(ndigits * 4 + 8);
    if sign == 0x4000 {
        text.push('-');
    }
    for i in 0..ndigits {
        let d = word(8 + 2 * i)?;
        if d > 9999 {
            return Err(format!("a numeric digit {d} beyond 9999"));
        }
        text.push_str(&format!("{d:04}"));
    }
    let exponent = (weight - (ndigits as i64 - 1)) * 4;
    text.push_str(&format!("e{exponent}"));
    text.parse::<f64>()
        .map_err(|e| format!("numeric {text}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Array;

    fn numeric_bytes(weight: i16, sign: u16, digits: &[u16]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend((digits.len() as u16).to_be_bytes());
        v.extend(weight.to_be_bytes());
        v.extend(sign.to_be_bytes());
        v.extend(0u16.to_be_bytes());
        for d in digits {
            v.extend(d.to_be_bytes());
        }
        v
    }

    #[test]
    fn numerics_decode_to_the_nearest_double() {
        // 12345.678 = 1|2345|6780 with weight 1.
        assert_eq!(
            numeric(&numeric_bytes(1, 0, &[1, 2345, 6780])).unwrap(),
            12345.678
        );
        assert_eq!(numeric(&numeric_bytes(-1, 0x4000, &[5000])).unwrap(), -0.5);
        assert_eq!(numeric(&numeric_bytes(0, 0, &[])).unwrap(), 0.0);
        assert_eq!(numeric(&numeric_bytes(2, 0, &[7])).unwrap(), 7e8);
        assert!(numeric(&numeric_bytes(0, 0xC000, &[])).unwrap().is_nan());
        assert!(numeric(&[0, 1]).is_err());
        assert!(numeric(&numeric_bytes(0, 0, &[10_000])).is_err());
    }

    #[test]
    fn timestamps_and_dates_move_to_the_unix_epoch() {
        let mut c = Column::new(&Type::TIMESTAMPTZ, 2).unwrap();
        c.push(Some(&0i64.to_be_bytes())).unwrap();
        c.push(None).unwrap();
        assert!(c.push(Some(&i64::MAX.to_be_bytes())).is_err());
        assert!(c.push(Some(&[1, 2])).is_err());
        let a = c.finish();
        let a = a
            .as_any()
            .downcast_ref::<datafusion::arrow::array::TimestampMicrosecondArray>()
            .unwrap();
        assert_eq!(a.value(0), PG_EPOCH_MICROS);
        assert!(a.is_null(1));
        let mut d = Column::new(&Type::DATE, 1).unwrap();
        d.push(Some(&(-1i32).to_be_bytes())).unwrap();
        let a = d.finish();
        let a = a
            .as_any()
            .downcast_ref::<datafusion::arrow::array::Date32Array>()
            .unwrap();
        assert_eq!(a.value(0), PG_EPOCH_DAYS - 1);
        assert!(Column::new(&Type::JSONB, 1).is_none());
    }
}
