//! `SVMClassifier` and `SVMRegressor`: support vector machines (libsvm's models, as scikit-learn
//! exports them), with onnxruntime's arithmetic: kernels in f32, one-vs-one decision values
//! summed in f64, votes with ties to the lower class, Platt probabilities coupled by
//! onnxruntime's iteration (in f32, at most 100 rounds).

use super::{Kernel, float_rows, floats, int, ints, op, rows_dim, string, tensor};
use crate::tree::{PostTransform, transform_scores};
use tract_onnx::model::{OnnxOpRegister, ParsingContext};
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

pub(super) fn register(reg: &mut OnnxOpRegister) {
    reg.insert("SVMClassifier", classifier);
    reg.insert("SVMRegressor", regressor);
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum KernelType {
    Linear,
    Poly,
    Rbf,
    Sigmoid,
}

#[derive(Debug, Clone)]
struct SvmKernel {
    kind: KernelType,
    gamma: f32,
    coef0: f32,
    degree: f32,
}

impl SvmKernel {
    fn parse(node: &NodeProto) -> TractResult<SvmKernel> {
        // onnxruntime reads any other name as SIGMOID.
        let kind = match string(node, "kernel_type", "LINEAR")?.as_str() {
            "LINEAR" => KernelType::Linear,
            "POLY" => KernelType::Poly,
            "RBF" => KernelType::Rbf,
            _ => KernelType::Sigmoid,
        };
        let p = floats(node, "kernel_params")?;
        if !p.is_empty() && p.len() < 3 {
            bail!("kernel_params must hold gamma, coef0 and degree");
        }
        let at = |i: usize| p.get(i).copied().unwrap_or(0.0);
        Ok(SvmKernel {
            kind,
            gamma: at(0),
            coef0: at(1),
            degree: at(2),
        })
    }

    /// The kernel of row `x` with each of `vectors` (`f` values each), into `out`, plus `c`
    /// for the linear kernel.
    fn dot(&self, x: &[f32], vectors: &[f32], f: usize, c: f32, out: &mut [f32]) {
        for (o, v) in out.iter_mut().zip(vectors.chunks_exact(f)) {
            *o = match self.kind {
                KernelType::Rbf => {
                    let mut sum = 0f32;
                    for (a, b) in x.iter().zip(v) {
                        let d = a - b;
                        sum += d * d;
                    }
                    (-self.gamma * sum).exp()
                }
                KernelType::Linear => dot(x, v) + c,
                KernelType::Poly => {
                    let s = self.gamma * dot(x, v) + self.coef0;
                    if self.degree == 2.0 {
                        s * s
                    } else if self.degree == 3.0 {
                        s * s * s
                    } else {
                        s.powf(self.degree)
                    }
                }
                KernelType::Sigmoid => (self.gamma * dot(x, v) + self.coef0).tanh(),
            };
        }
    }
}

/// A dot product accumulated in order with fused multiply-adds, as a GEMM lane does.
fn dot(x: &[f32], v: &[f32]) -> f32 {
    x.iter()
        .zip(v)
        .fold(0f32, |acc, (a, b)| super::fma(*a, *b, acc))
}

/// One output of a one-column GEMM with a bias, as onnxruntime's computes it: the bias first,
/// then each block of 1,024 products (fused multiply-adds in order) added to it.
fn gemm_row(x: &[f32], w: &[f32], bias: f32) -> f32 {
    x.chunks(1024)
        .zip(w.chunks(1024))
        .fold(bias, |c, (x, w)| dot(x, w) + c)
}

fn post_transform(node: &NodeProto) -> TractResult<PostTransform> {
    // onnxruntime reads any other name as PROBIT.
    let name = string(node, "post_transform", "NONE")?;
    Ok(PostTransform::parse(&name).unwrap_or(PostTransform::Probit))
}

#[derive(Debug)]
struct SvmClassifier {
    kernel: SvmKernel,
    labels: Vec<i64>,
    /// Support vectors per class (SVC mode; empty in linear mode).
    per_class: Vec<usize>,
    vectors: Vec<f32>,
    coefficients: Vec<f32>,
    rho: Vec<f32>,
    prob_a: Vec<f32>,
    prob_b: Vec<f32>,
    post: PostTransform,
    features: usize,
    all_positive: bool,
}

fn classifier(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    if node
        .get_attr_opt_vec::<String>("classlabels_strings")?
        .is_some_and(|v| !v.is_empty())
    {
        bail!("SVMClassifier with string class labels is not supported; train with integer labels");
    }
    let labels = ints(node, "classlabels_ints")?;
    let c = labels.len();
    if c == 0 {
        bail!("SVMClassifier without class labels");
    }
    let mut kernel = SvmKernel::parse(node)?;
    let per_class: Vec<usize> = ints(node, "vectors_per_class")?
        .into_iter()
        .map(|v| usize::try_from(v).map_err(|_| format_err!("negative vectors_per_class")))
        .collect::<TractResult<_>>()?;
    let v: usize = per_class.iter().sum();
    let vectors = floats(node, "support_vectors")?;
    let coefficients = floats(node, "coefficients")?;
    let rho = floats(node, "rho")?;
    let prob_a = floats(node, "prob_a")?;
    let prob_b = floats(node, "prob_b")?;
    if coefficients.is_empty() || rho.is_empty() {
        bail!("SVMClassifier needs coefficients and rho");
    }
    if prob_a.len() != prob_b.len() {
        bail!("prob_a and prob_b differ in length");
    }
    let pairs = c * (c - 1) / 2;
    let features = if v > 0 {
        if per_class.len() != c {
            bail!(
                "vectors_per_class has {} entries for {c} classes",
                per_class.len()
            );
        }
        if vectors.len() % v != 0 || coefficients.len() < (c - 1) * v || rho.len() < pairs {
            bail!("support_vectors, coefficients or rho do not match vectors_per_class");
        }
        if !prob_a.is_empty() && prob_a.len() < pairs {
            bail!("prob_a has fewer entries than class pairs");
        }
        vectors.len() / v
    } else {
        kernel.kind = KernelType::Linear;
        if coefficients.len() % c != 0 {
            bail!("coefficients do not divide into {c} classes");
        }
        coefficients.len() / c
    };
    op(SvmClassifier {
        kernel,
        labels,
        per_class: if v > 0 { per_class } else { vec![] },
        vectors,
        all_positive: coefficients.iter().all(|w| *w >= 0.0),
        coefficients,
        rho,
        prob_a,
        prob_b,
        post: post_transform(node)?,
        features,
    })
}

impl SvmClassifier {
    fn n_scores(&self) -> usize {
        let c = self.labels.len();
        if self.per_class.is_empty() || !self.prob_a.is_empty() {
            c
        } else if c == 2 {
            2
        } else {
            c * (c - 1) / 2
        }
    }

    /// One row: its label and its scores (before the post transform, except the binary case
    /// without probabilities, whose second column is written here).
    fn row(&self, x: &[f32], kernels: &mut [f32], out: &mut [f32]) -> i64 {
        let c = self.labels.len();
        let f = self.features;
        if self.per_class.is_empty() {
            // Linear mode: one coefficient row per class, rho[0] added to each.
            self.kernel
                .dot(x, &self.coefficients, f, self.rho[0], &mut out[..c]);
            let mut best = 0;
            for k in 1..c {
                if out[k] > out[best] {
                    best = k;
                }
            }
            let max = out[best];
            if c == 2 && ((self.all_positive && max >= 0.5) || (max > 0.0 && !self.all_positive)) {
                return self.labels[1];
            }
            return self.labels[best];
        }
        let v = kernels.len();
        self.kernel.dot(x, &self.vectors, f, 0.0, kernels);
        let starts: Vec<usize> = self
            .per_class
            .iter()
            .scan(0, |s, n| {
                let at = *s;
                *s += n;
                Some(at)
            })
            .collect();
        let mut votes = vec![0u32; c];
        let mut decisions = Vec::with_capacity(c * (c - 1) / 2);
        let mut k = 0;
        for i in 0..c {
            for j in i + 1..c {
                let mut sum = 0f64;
                let (si, sj) = (starts[i], starts[j]);
                for m in 0..self.per_class[i] {
                    sum += f64::from(self.coefficients[v * (j - 1) + si + m] * kernels[si + m]);
                }
                for m in 0..self.per_class[j] {
                    sum += f64::from(self.coefficients[v * i + sj + m] * kernels[sj + m]);
                }
                sum += f64::from(self.rho[k]);
                k += 1;
                decisions.push(sum as f32);
                votes[if sum > 0.0 { i } else { j }] += 1;
            }
        }
        let mut best = 0;
        for k in 1..c {
            if votes[k] > votes[best] {
                best = k;
            }
        }
        if !self.prob_a.is_empty() {
            let mut pairwise = vec![0f32; c * c];
            let mut k = 0;
            for i in 0..c {
                for j in i + 1..c {
                    let p = 1.0 - logistic(decisions[k] * self.prob_a[k] + self.prob_b[k]);
                    let p = p.clamp(1.0e-7, 1.0 - 1.0e-7);
                    pairwise[i * c + j] = p;
                    pairwise[j * c + i] = 1.0 - p;
                    k += 1;
                }
            }
            couple(c, &pairwise, &mut out[..c]);
        } else if c == 2 {
            let d = decisions[0];
            (out[0], out[1]) = match self.post {
                PostTransform::None => (-d, d),
                _ => (1.0 - d, d),
            };
        } else {
            out[..decisions.len()].copy_from_slice(&decisions);
        }
        self.labels[best]
    }
}

fn logistic(v: f32) -> f32 {
    let e = 1.0 / (1.0 + (-v.abs()).exp());
    if v < 0.0 { 1.0 - e } else { e }
}

/// Pairwise probabilities `r` (`r[i*c+j]`: class i over j) coupled into class probabilities,
/// by onnxruntime's iteration (libsvm's method 2 of Wu, Lin and Weng), in f32.
fn couple(c: usize, r: &[f32], p: &mut [f32]) {
    let mut q = vec![0f32; c * c];
    let mut qp = vec![0f32; c];
    let eps = 0.005f32 / c as f32;
    for i in 0..c {
        p[i] = 1.0 / c as f32;
        for j in 0..i {
            q[i * c + i] += r[j * c + i] * r[j * c + i];
            q[i * c + j] = q[j * c + i];
        }
        for j in i + 1..c {
            q[i * c + i] += r[j * c + i] * r[j * c + i];
            q[i * c + j] = -r[j * c + i] * r[i * c + j];
        }
    }
    for _ in 0..100 {
        let mut pqp = 0f32;
        for i in 0..c {
            qp[i] = 0.0;
            for j in 0..c {
                qp[i] += q[i * c + j] * p[j];
            }
            pqp += p[i] * qp[i];
        }
        let mut max_error = 0f32;
        for &v in qp.iter() {
            let e = (v - pqp).abs();
            if e > max_error {
                max_error = e;
            }
        }
        if max_error < eps {
            break;
        }
        for i in 0..c {
            let diff = (-qp[i] + pqp) / q[i * c + i];
            p[i] += diff;
            pqp = (pqp + diff * (diff * q[i * c + i] + 2.0 * qp[i])) / (1.0 + diff) / (1.0 + diff);
            for j in 0..c {
                qp[j] = (qp[j] + diff * q[i * c + j]) / (1.0 + diff);
                p[j] /= 1.0 + diff;
            }
        }
    }
}

impl Kernel for SvmClassifier {
    fn name(&self) -> &'static str {
        "SVMClassifier"
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
        if f < self.features {
            bail!(
                "SVMClassifier needs {} features, input has {f}",
                self.features
            );
        }
        let s = self.n_scores();
        let mut labels = vec![0i64; n];
        let mut scores = vec![0f32; n * s];
        let mut kernels = vec![0f32; self.per_class.iter().sum()];
        let c = self.labels.len();
        let mut row = vec![0f32; s.max(c)];
        for i in 0..n {
            labels[i] = self.row(&x[i * f..i * f + self.features], &mut kernels, &mut row);
            let out = &mut scores[i * s..(i + 1) * s];
            out.copy_from_slice(&row[..s]);
            let binary_plain = !self.per_class.is_empty() && self.prob_a.is_empty() && c == 2;
            if !binary_plain {
                transform_scores(out, self.post);
            } else if self.post == PostTransform::Probit {
                out[0] = crate::tree::probit(out[0]);
            }
        }
        Ok(tvec!(tensor(&[n], labels)?, tensor(&[n, s], scores)?))
    }
}

#[derive(Debug)]
struct SvmRegressor {
    kernel: SvmKernel,
    vectors: Vec<f32>,
    coefficients: Vec<f32>,
    rho: f32,
    one_class: bool,
    features: usize,
}

fn regressor(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let mut kernel = SvmKernel::parse(node)?;
    let n_supports = usize::try_from(int(node, "n_supports", 0)?)
        .map_err(|_| format_err!("negative n_supports"))?;
    let vectors = floats(node, "support_vectors")?;
    let coefficients = floats(node, "coefficients")?;
    let rho = floats(node, "rho")?;
    if coefficients.is_empty() || rho.is_empty() {
        bail!("SVMRegressor needs coefficients and rho");
    }
    let features = if n_supports > 0 {
        if vectors.len() % n_supports != 0 || coefficients.len() < n_supports {
            bail!("support_vectors or coefficients do not match n_supports");
        }
        vectors.len() / n_supports
    } else {
        kernel.kind = KernelType::Linear;
        coefficients.len()
    };
    op(SvmRegressor {
        kernel,
        vectors: if n_supports > 0 { vectors } else { vec![] },
        coefficients,
        rho: rho[0],
        one_class: int(node, "one_class", 0)? != 0,
        features,
    })
}

impl Kernel for SvmRegressor {
    fn name(&self) -> &'static str {
        "SVMRegressor"
    }

    fn output_types(&self) -> Vec<Option<DatumType>> {
        vec![Some(DatumType::F32)]
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact([rows_dim(inputs[0]), 1.to_dim()])))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (n, f, x) = float_rows(&inputs[0])?;
        if f != self.features {
            bail!(
                "SVMRegressor needs {} features, input has {f}",
                self.features
            );
        }
        let mut out = vec![0f32; n];
        let v = self.vectors.len() / self.features.max(1);
        let mut kernels = vec![0f32; v];
        for (i, y) in out.iter_mut().enumerate() {
            let row = &x[i * f..(i + 1) * f];
            *y = if self.vectors.is_empty() {
                gemm_row(row, &self.coefficients, self.rho)
            } else {
                self.kernel.dot(row, &self.vectors, f, 0.0, &mut kernels);
                gemm_row(&kernels, &self.coefficients[..v], self.rho)
            };
            if self.one_class {
                *y = if *y > 0.0 { 1.0 } else { -1.0 };
            }
        }
        tensor(&[n, 1], out).map(|t| tvec!(t))
    }
}
