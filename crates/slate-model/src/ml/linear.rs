//! `LinearClassifier` and `LinearRegressor`: a dot product per class or target, computed as
//! onnxruntime's GEMM computes it for a batch (fused multiply-adds over the features in order,
//! then the intercept added), labels chosen on the raw scores, then the post transform.

use super::{Kernel, float_rows, floats, int, ints, op, rows_dim, string, tensor};
use crate::tree::{PostTransform, transform_scores};
use tract_onnx::model::{OnnxOpRegister, ParsingContext};
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

pub(super) fn register(reg: &mut OnnxOpRegister) {
    reg.insert("LinearClassifier", classifier);
    reg.insert("LinearRegressor", regressor);
}

/// Each row's dot products with each of the `c` coefficient rows, plus the intercepts, as a GEMM
/// with a bias computes each output: an accumulator of fused multiply-adds over the features in
/// order, then added to the bias. Rows go in blocks, so that their accumulations interleave.
fn scores(
    x: &[f32],
    n: usize,
    f: usize,
    coefficients: &[f32],
    c: usize,
    intercepts: Option<&[f32]>,
) -> Vec<f32> {
    const BLOCK: usize = 16;
    let mut out = vec![0f32; n * c];
    let mut acc = [0f32; BLOCK];
    for start in (0..n).step_by(BLOCK) {
        let m = BLOCK.min(n - start);
        for (k, w) in coefficients.chunks_exact(f).enumerate().take(c) {
            acc[..m].fill(0.0);
            for (j, wj) in w.iter().enumerate() {
                for (r, a) in acc[..m].iter_mut().enumerate() {
                    *a = super::fma(x[(start + r) * f + j], *wj, *a);
                }
            }
            for (r, a) in acc[..m].iter().enumerate() {
                out[(start + r) * c + k] = match intercepts {
                    Some(b) => a + b[k],
                    None => *a,
                };
            }
        }
    }
    out
}

fn post(node: &NodeProto) -> TractResult<PostTransform> {
    let name = string(node, "post_transform", "NONE")?;
    PostTransform::parse(&name).ok_or_else(|| format_err!("unknown post_transform `{name}`"))
}

#[derive(Debug)]
struct LinearClassifier {
    labels: Vec<i64>,
    coefficients: Vec<f32>,
    intercepts: Option<Vec<f32>>,
    /// Coefficient rows (onnxruntime: the intercept count).
    classes: usize,
    post: PostTransform,
}

fn classifier(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    if node
        .get_attr_opt_vec::<String>("classlabels_strings")?
        .is_some_and(|v| !v.is_empty())
    {
        bail!(
            "LinearClassifier with string class labels is not supported; train with integer labels"
        );
    }
    let labels = ints(node, "classlabels_ints")?;
    let coefficients = floats(node, "coefficients")?;
    let intercepts = floats(node, "intercepts")?;
    let classes = match intercepts.len() {
        0 => labels.len().max(1),
        n => n,
    };
    if coefficients.is_empty() || coefficients.len() % classes != 0 {
        bail!(
            "LinearClassifier has {} coefficients for {classes} classes",
            coefficients.len()
        );
    }
    if classes > 1 && labels.len() != classes {
        bail!(
            "LinearClassifier has {classes} coefficient rows but {} class labels",
            labels.len()
        );
    }
    op(LinearClassifier {
        labels,
        coefficients,
        intercepts: (!intercepts.is_empty()).then_some(intercepts),
        classes,
        post: post(node)?,
    })
}

impl LinearClassifier {
    fn n_scores(&self) -> usize {
        if self.classes == 1 && self.labels.len() == 2 {
            2
        } else {
            self.classes
        }
    }
}

impl Kernel for LinearClassifier {
    fn name(&self) -> &'static str {
        "LinearClassifier"
    }

    fn n_outputs(&self) -> usize {
        2
    }

    fn output_types(&self) -> Vec<Option<DatumType>> {
        vec![Some(DatumType::I64), Some(DatumType::F32)]
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let n = rows_dim(inputs[0]);
        Ok(tvec!(
            i64::fact([n.clone()]),
            f32::fact([n, self.n_scores().to_dim()])
        ))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (n, f, x) = float_rows(&inputs[0])?;
        let c = self.classes;
        if self.coefficients.len() != c * f {
            bail!(
                "LinearClassifier has {} coefficients per class, input has {f} features",
                self.coefficients.len() / c
            );
        }
        let s = self.n_scores();
        let raw = scores(&x, n, f, &self.coefficients, c, self.intercepts.as_deref());
        let mut labels = vec![0i64; n];
        let mut out = vec![0f32; n * s];
        for i in 0..n {
            let raw = &raw[i * c..(i + 1) * c];
            let row = &mut out[i * s..(i + 1) * s];
            if c == 1 {
                let v = raw[0];
                let (negative, positive) = match self.labels.as_slice() {
                    [a, b] => (*a, *b),
                    _ => (0, 1),
                };
                labels[i] = if v > 0.0 { positive } else { negative };
                if s == 2 {
                    // The raw score and its complement; no transform but PROBIT.
                    (row[0], row[1]) = (1.0 - v, v);
                } else {
                    row[0] = match self.post {
                        PostTransform::Probit => crate::tree::probit(v),
                        _ => v,
                    };
                }
            } else {
                let mut best = 0;
                for k in 1..c {
                    if raw[k] > raw[best] {
                        best = k;
                    }
                }
                labels[i] = self.labels[best];
                row.copy_from_slice(raw);
            }
        }
        if c > 1 {
            match self.post {
                // Elementwise: over every score at once.
                PostTransform::None | PostTransform::Logistic | PostTransform::Probit => {
                    transform_scores(&mut out, self.post)
                }
                _ => out
                    .chunks_mut(s)
                    .for_each(|row| transform_scores(row, self.post)),
            }
        }
        Ok(tvec!(tensor(&[n], labels)?, tensor(&[n, s], out)?))
    }
}

#[derive(Debug)]
struct LinearRegressor {
    coefficients: Vec<f32>,
    intercepts: Option<Vec<f32>>,
    targets: usize,
    post: PostTransform,
}

fn regressor(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let targets = usize::try_from(int(node, "targets", 1)?)
        .ok()
        .filter(|t| *t > 0)
        .ok_or_else(|| format_err!("LinearRegressor needs targets >= 1"))?;
    let coefficients = floats(node, "coefficients")?;
    if coefficients.is_empty() || coefficients.len() % targets != 0 {
        bail!(
            "LinearRegressor has {} coefficients for {targets} targets",
            coefficients.len()
        );
    }
    let intercepts = floats(node, "intercepts")?;
    op(LinearRegressor {
        coefficients,
        // onnxruntime uses the intercepts only when there is one per target.
        intercepts: (intercepts.len() == targets).then_some(intercepts),
        targets,
        post: post(node)?,
    })
}

impl Kernel for LinearRegressor {
    fn name(&self) -> &'static str {
        "LinearRegressor"
    }

    fn output_types(&self) -> Vec<Option<DatumType>> {
        vec![Some(DatumType::F32)]
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact([
            rows_dim(inputs[0]),
            self.targets.to_dim()
        ])))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (n, f, x) = float_rows(&inputs[0])?;
        let t = self.targets;
        if self.coefficients.len() != t * f {
            bail!(
                "LinearRegressor has {} coefficients per target, input has {f} features",
                self.coefficients.len() / t
            );
        }
        let mut out = scores(&x, n, f, &self.coefficients, t, self.intercepts.as_deref());
        if t > 1 {
            out.chunks_mut(t)
                .for_each(|row| transform_scores(row, self.post));
        } else if self.post == PostTransform::Probit {
            out.iter_mut().for_each(|v| *v = crate::tree::probit(*v));
        }
        tensor(&[n, t], out).map(|t| tvec!(t))
    }
}
