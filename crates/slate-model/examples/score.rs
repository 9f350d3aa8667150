//! Times Slate's scoring of an ONNX model over rows from a file: `score MODEL ROWS F OUT`,
//! where ROWS holds little-endian f32 values, F per row. Prints the best of three runs as JSON
//! and writes the labels (i64) then the scores (f32, one per class) to OUT, little-endian, for
//! `bench/scoring.py` to compare with onnxruntime.

use arrow_array::{ArrayRef, Float32Array};
use slate_model::OnnxModel;
use std::sync::Arc;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 5 {
        return Err("usage: score MODEL ROWS F OUT".into());
    }
    let f: usize = a[3].parse()?;
    let bytes = std::fs::read(&a[2])?;
    let values: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let rows = values.len() / f;
    let columns: Vec<ArrayRef> = (0..f)
        .map(|j| {
            Arc::new(Float32Array::from_iter_values(
                (0..rows).map(|i| values[i * f + j]),
            )) as ArrayRef
        })
        .collect();
    let model = OnnxModel::load(std::path::Path::new(&a[1]))?;
    let defaults = vec![None; f];
    let mut best = f64::INFINITY;
    let mut last = None;
    for _ in 0..3 {
        let t = Instant::now();
        let p = model.predict(&columns, &defaults)?;
        best = best.min(t.elapsed().as_secs_f64());
        last = Some(p);
    }
    let p = last.ok_or("no run")?;
    let mut out = Vec::with_capacity(rows * 8 + p.scores.len() * 4);
    p.labels.iter().for_each(|l| out.extend(l.to_le_bytes()));
    p.scores.iter().for_each(|s| out.extend(s.to_le_bytes()));
    std::fs::write(&a[4], out)?;
    println!(
        "{{\"rows\":{rows},\"seconds\":{best:.4},\"us_per_row\":{:.4}}}",
        best / rows as f64 * 1e6
    );
    Ok(())
}
