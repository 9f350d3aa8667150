//! Exact dictionary codes for values of any scalar type: distinct counts and entity keys are
//! compared on codes, never on floats, so strings, large integers and timestamps stay exact.

use crate::EngineError;
use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::DataType;
use arrow::datatypes::Int64Type;
use arrow::row::{RowConverter, SortField};
use std::collections::HashMap;

type Map<K> = HashMap<K, u32, foldhash::fast::RandomState>;

/// Values and their codes.
enum Codes {
    /// Integers of at most 64 signed bits, compared as `i64` (exact for every such type).
    Ints(Map<i64>),
    /// Any other type, compared in Arrow's row format.
    Rows(RowConverter, Map<Box<[u8]>>),
}

/// Assigns each distinct non-null value a code, in order of first appearance. Integers are
/// compared as integers; other values in Arrow's row format, which is exact for every type
/// (floats by their total order, so `-0.0` and `0.0` are distinct values).
pub(crate) struct Dictionary {
    ty: DataType,
    codes: Codes,
    /// Each code's value, kept when the distinct values are needed (entity keys).
    values: Option<Vec<ArrayRef>>,
}

/// Integer types whose every value is an `i64`.
fn fits_i64(ty: &DataType) -> bool {
    use DataType::*;
    matches!(ty, Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32)
}

impl Dictionary {
    /// A dictionary that only assigns codes.
    pub(crate) fn new(ty: &DataType) -> Result<Self, EngineError> {
        let codes = match fits_i64(ty) {
            true => Codes::Ints(Map::default()),
            false => Codes::Rows(
                RowConverter::new(vec![SortField::new(ty.clone())])?,
                Map::default(),
            ),
        };
        Ok(Dictionary {
            ty: ty.clone(),
            codes,
            values: None,
        })
    }

    /// A dictionary that also keeps its distinct values, for [`Dictionary::values`].
    pub(crate) fn keeping_values(ty: &DataType) -> Result<Self, EngineError> {
        let mut d = Dictionary::new(ty)?;
        d.values = Some(Vec::new());
        Ok(d)
    }

    /// `array` as the dictionary's type: the same values may arrive in another layout (a
    /// string column read back from Delta Lake is a `Utf8View`). A value the cast cannot carry
    /// is an error, never a null.
    fn normalized(&self, array: &ArrayRef) -> Result<ArrayRef, EngineError> {
        if array.data_type() == &self.ty {
            return Ok(array.clone());
        }
        let options = arrow::compute::CastOptions {
            safe: false,
            ..Default::default()
        };
        Ok(arrow::compute::cast_with_options(
            array, &self.ty, &options,
        )?)
    }

    /// Codes for `array`, adding values not seen before; nulls have no code.
    pub(crate) fn encode(&mut self, array: &ArrayRef) -> Result<Vec<Option<u32>>, EngineError> {
        let array = &self.normalized(array)?;
        let mut out = Vec::with_capacity(array.len());
        let mut added = Vec::new();
        let next = |n: usize| {
            u32::try_from(n)
                .map_err(|_| EngineError::Internal("more than 2^32 distinct values".into()))
        };
        match &mut self.codes {
            Codes::Ints(map) => {
                let ints = arrow::compute::cast(array, &DataType::Int64)?;
                for (i, v) in ints.as_primitive::<Int64Type>().iter().enumerate() {
                    let Some(v) = v else {
                        out.push(None);
                        continue;
                    };
                    let n = map.len();
                    let code = *map.entry(v).or_insert(next(n)?);
                    if code as usize == n {
                        added.push(i);
                    }
                    out.push(Some(code));
                }
            }
            Codes::Rows(converter, map) => {
                let rows = converter.convert_columns(std::slice::from_ref(array))?;
                for i in 0..array.len() {
                    if array.is_null(i) {
                        out.push(None);
                        continue;
                    }
                    let row = rows.row(i);
                    let code = match map.get(row.as_ref()) {
                        Some(c) => *c,
                        None => {
                            let c = next(map.len())?;
                            map.insert(row.as_ref().into(), c);
                            added.push(i);
                            c
                        }
                    };
                    out.push(Some(code));
                }
            }
        }
        if let Some(v) = &mut self.values {
            v.extend(added.into_iter().map(|i| array.slice(i, 1)));
        }
        Ok(out)
    }

    /// Codes for `array` without adding values: a value not in the dictionary has no code.
    pub(crate) fn lookup(&self, array: &ArrayRef) -> Result<Vec<Option<u32>>, EngineError> {
        let array = &self.normalized(array)?;
        Ok(match &self.codes {
            Codes::Ints(map) => {
                let ints = arrow::compute::cast(array, &DataType::Int64)?;
                ints.as_primitive::<Int64Type>()
                    .iter()
                    .map(|v| map.get(&v?).copied())
                    .collect()
            }
            Codes::Rows(converter, map) => {
                let rows = converter.convert_columns(std::slice::from_ref(array))?;
                (0..array.len())
                    .map(|i| match array.is_null(i) {
                        true => None,
                        false => map.get(rows.row(i).as_ref()).copied(),
                    })
                    .collect()
            }
        })
    }

    /// The distinct values in code order, as one array of the dictionary's type (empty unless
    /// the dictionary was made [`Dictionary::keeping_values`]).
    pub(crate) fn values(&self) -> Result<ArrayRef, EngineError> {
        let parts: Vec<&dyn Array> = self.values.iter().flatten().map(|a| a.as_ref()).collect();
        if parts.is_empty() {
            return Ok(arrow::array::new_empty_array(&self.ty));
        }
        Ok(arrow::compute::concat(&parts)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use std::sync::Arc;

    #[test]
    fn strings_get_exact_codes_and_nulls_none() {
        let mut d = Dictionary::keeping_values(&DataType::Utf8).unwrap();
        let a: ArrayRef = Arc::new(StringArray::from(vec![
            Some("m-1"),
            None,
            Some("m-2"),
            Some("m-1"),
        ]));
        assert_eq!(d.encode(&a).unwrap(), vec![Some(0), None, Some(1), Some(0)]);
        // The same values in another string layout get the same codes.
        let b: ArrayRef = Arc::new(arrow::array::StringViewArray::from(vec![
            Some("m-2"),
            Some("m-3"),
        ]));
        assert_eq!(d.lookup(&b).unwrap(), vec![Some(1), None]);
        assert_eq!(d.values().unwrap().len(), 2);
    }

    #[test]
    fn narrow_integers_share_codes_with_their_i64_values_and_keep_their_type() {
        let mut d = Dictionary::keeping_values(&DataType::Int32).unwrap();
        let a: ArrayRef = Arc::new(arrow::array::Int32Array::from(vec![
            Some(-7),
            None,
            Some(i32::MAX),
            Some(-7),
        ]));
        assert_eq!(d.encode(&a).unwrap(), vec![Some(0), None, Some(1), Some(0)]);
        // Another integer layout of the same values finds the same codes; a value beyond
        // the dictionary's type is an error, never a wrapped code.
        let b: ArrayRef = Arc::new(Int64Array::from(vec![Some(i64::from(i32::MAX)), Some(5)]));
        assert_eq!(d.lookup(&b).unwrap(), vec![Some(1), None]);
        let wide: ArrayRef = Arc::new(Int64Array::from(vec![1i64 << 40]));
        assert!(d.lookup(&wide).is_err());
        let values = d.values().unwrap();
        assert_eq!(values.data_type(), &DataType::Int32);
        assert_eq!(values.len(), 2);
    }

    #[test]
    fn integers_beyond_f64_precision_stay_distinct() {
        let mut d = Dictionary::new(&DataType::Int64).unwrap();
        // 2^53 and 2^53 + 1 are the same f64.
        let a: ArrayRef = Arc::new(Int64Array::from(vec![1i64 << 53, (1i64 << 53) + 1]));
        assert_eq!(d.encode(&a).unwrap(), vec![Some(0), Some(1)]);
    }
}
