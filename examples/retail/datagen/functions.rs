//! The retail project's Rust resolvers (`kind: function` files in `src/resolvers/`). Each is a
//! plain function over Arrow batches: a program registers it with its engine
//! (`Functions::new().register("basket_class", basket_class)`) and tests it like any function.

use arrow_array::{Array, Float64Array, Int64Array, RecordBatch, StringArray};
use std::sync::Arc;

/// `basket_class` (src/resolvers/basket_class.yaml): the order's price per item as `small`
/// (under 20), `medium` (under 100) or `large`; an order without an amount has none, one
/// without a quantity counts as one item.
pub fn basket_class(input: &RecordBatch) -> Result<RecordBatch, String> {
    let column = |name: &str| {
        input
            .column_by_name(name)
            .ok_or_else(|| format!("no `{name}` input"))
    };
    let amount = column("amount")?
        .as_any()
        .downcast_ref::<Float64Array>()
        .ok_or("`amount` is not a float")?;
    let quantity = column("quantity")?
        .as_any()
        .downcast_ref::<Int64Array>()
        .ok_or("`quantity` is not an int")?;
    let class: StringArray = (0..input.num_rows())
        .map(|i| {
            if amount.is_null(i) {
                return None;
            }
            let items = if quantity.is_null(i) {
                1
            } else {
                quantity.value(i).max(1)
            };
            let per_item = amount.value(i) / items as f64;
            Some(if per_item < 20.0 {
                "small"
            } else if per_item < 100.0 {
                "medium"
            } else {
                "large"
            })
        })
        .collect();
    RecordBatch::try_from_iter([("basket_class", Arc::new(class) as _)]).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_by_price_per_item() {
        let input = RecordBatch::try_from_iter([
            (
                "amount",
                Arc::new(Float64Array::from(vec![
                    Some(30.0),
                    Some(30.0),
                    None,
                    Some(500.0),
                ])) as _,
            ),
            (
                "quantity",
                Arc::new(Int64Array::from(vec![Some(3), None, Some(1), Some(2)])) as _,
            ),
        ])
        .unwrap();
        let out = basket_class(&input).unwrap();
        let got = out
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap()
            .iter()
            .collect::<Vec<_>>();
        assert_eq!(got, [Some("small"), Some("medium"), None, Some("large")]);
    }
}
