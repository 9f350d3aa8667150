//! Exact dictionary codes for values of any scalar type: distinct counts and entity keys are
//! compared on codes, never on floats, so strings, large integers and timestamps stay exact.

use crate::EngineError;
use arrow::array::{Array, ArrayRef};
use arrow::datatypes::DataType;
use arrow::row::{RowConverter, SortField};
use std::collections::HashMap;

/// Assigns each distinct non-null value a code, in order of first appearance. Values are
/// compared in Arrow's row format, which is exact for every type (floats by their total order,
/// so `-0.0` and `0.0` are distinct values).
pub(crate) struct Dictionary {
    ty: DataType,
    converter: RowConverter,
    codes: HashMap<Box<[u8]>, u32>,
    /// Each code's value, kept when the distinct values are needed (entity keys).
    values: Option<Vec<ArrayRef>>,
}

impl Dictionary {
    /// A dictionary that only assigns codes.
    pub(crate) fn new(ty: &DataType) -> Result<Self, EngineError> {
        Ok(Dictionary {
            ty: ty.clone(),
            converter: RowConverter::new(vec![SortField::new(ty.clone())])?,
            codes: HashMap::new(),
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
        let rows = self
            .converter
            .convert_columns(std::slice::from_ref(array))?;
        let mut out = Vec::with_capacity(array.len());
        for i in 0..array.len() {
            if array.is_null(i) {
                out.push(None);
                continue;
            }
            let row = rows.row(i);
            let code = match self.codes.get(row.as_ref()) {
                Some(c) => *c,
                None => {
                    let c = u32::try_from(self.codes.len()).map_err(|_| {
                        EngineError::Internal("more than 2^32 distinct values".into())
                    })?;
                    self.codes.insert(row.as_ref().into(), c);
                    if let Some(v) = &mut self.values {
                        v.push(array.slice(i, 1));
                    }
                    c
                }
            };
            out.push(Some(code));
        }
        Ok(out)
    }

    /// Codes for `array` without adding values: a value not in the dictionary has no code.
    pub(crate) fn lookup(&self, array: &ArrayRef) -> Result<Vec<Option<u32>>, EngineError> {
        let array = &self.normalized(array)?;
        let rows = self
            .converter
            .convert_columns(std::slice::from_ref(array))?;
        Ok((0..array.len())
            .map(|i| {
                if array.is_null(i) {
                    None
                } else {
                    self.codes.get(rows.row(i).as_ref()).copied()
                }
            })
            .collect())
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
    fn integers_beyond_f64_precision_stay_distinct() {
        let mut d = Dictionary::new(&DataType::Int64).unwrap();
        // 2^53 and 2^53 + 1 are the same f64.
        let a: ArrayRef = Arc::new(Int64Array::from(vec![1i64 << 53, (1i64 << 53) + 1]));
        assert_eq!(d.encode(&a).unwrap(), vec![Some(0), Some(1)]);
    }
}
