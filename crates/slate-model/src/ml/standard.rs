//! Standard-domain operators that Slate evaluates in place of tract's: `Sigmoid` (tract's answer
//! for NaN differs from onnxruntime's) and `ArgMax`/`ArgMin` (tract slices its input once per
//! output value, a fifth of a small network's scoring time; onnxruntime's NaN rule, too).

use super::{Kernel, float_rows, int, op, tensor};
use tract_onnx::model::{OnnxOpRegister, ParsingContext};
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

pub(super) fn register(reg: &mut OnnxOpRegister) {
    reg.insert("Sigmoid", sigmoid);
    reg.insert("ArgMax", |_, node| arg(node, Extreme::Max));
    reg.insert("ArgMin", |_, node| arg(node, Extreme::Min));
}

/// The standard `Sigmoid`, as onnxruntime computes it on a CPU (its vectorized rational
/// approximation), and NaN in, NaN out: tract's own maps NaN to a probability near 1, a
/// confident score for a row whose features overflowed.
fn sigmoid(
    _ctx: &ParsingContext,
    _node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    op(Sigmoid)
}

#[derive(Debug)]
struct Sigmoid;

impl Kernel for Sigmoid {
    fn name(&self) -> &'static str {
        "Sigmoid"
    }

    fn output_types(&self) -> Vec<Option<DatumType>> {
        vec![None]
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(inputs[0].without_value()))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = &inputs[0];
        let shape = input.shape().to_vec();
        match input.datum_type() {
            DatumType::F64 => {
                let out: Vec<f64> = input
                    .to_plain_array_view::<f64>()?
                    .iter()
                    .map(|&x| 1.0 / (1.0 + (-x).exp()))
                    .collect();
                tensor(&shape, out).map(|t| tvec!(t))
            }
            DatumType::F32 => {
                let (_, _, x) = float_rows(input)?;
                let out: Vec<f32> = x.iter().map(|&x| crate::tree::mlas_logistic(x)).collect();
                tensor(&shape, out).map(|t| tvec!(t))
            }
            // Other float types (f16): through f32, and back.
            other => {
                let (_, _, x) = float_rows(input)?;
                let out: Vec<f32> = x.iter().map(|&x| crate::tree::mlas_logistic(x)).collect();
                let out =
                    tract_ndarray::ArrayD::from_shape_vec(shape.as_slice(), out)?.into_tensor();
                Ok(tvec!(out.cast_to_dt(other)?.into_owned().into_tvalue()))
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Extreme {
    Max,
    Min,
}

/// `ArgMax` or `ArgMin` along one axis, as onnxruntime computes it: the first value along the
/// axis is the running extreme, and a later value replaces it only if it is greater (less), or
/// greater (less) or equal with `select_last_index`. So a NaN in first place wins, and a NaN
/// later never does.
#[derive(Debug)]
struct Arg {
    extreme: Extreme,
    axis: i64,
    keepdims: bool,
    last: bool,
}

fn arg(node: &NodeProto, extreme: Extreme) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    op(Arg {
        extreme,
        axis: int(node, "axis", 0)?,
        keepdims: int(node, "keepdims", 1)? != 0,
        last: int(node, "select_last_index", 0)? != 0,
    })
}

impl Arg {
    /// The axis as an index into a shape of `rank` dimensions.
    fn axis_of(&self, rank: usize) -> TractResult<usize> {
        let axis = if self.axis < 0 {
            self.axis + rank as i64
        } else {
            self.axis
        };
        usize::try_from(axis)
            .ok()
            .filter(|a| *a < rank)
            .ok_or_else(|| format_err!("{} axis {} of a rank-{rank} input", self.name(), self.axis))
    }

    fn output_shape<D: Clone + From<usize>>(&self, shape: &[D], axis: usize) -> Vec<D> {
        let mut out = shape.to_vec();
        if self.keepdims {
            out[axis] = D::from(1);
        } else {
            out.remove(axis);
        }
        out
    }

    /// The index of the extreme along the axis, for each (outer, inner) position of a
    /// contiguous `[outer, len, inner]` layout.
    fn indices<T: Copy + PartialOrd>(
        &self,
        x: &[T],
        outer: usize,
        len: usize,
        inner: usize,
    ) -> Vec<i64> {
        let better = |v: T, best: T| match (self.extreme, self.last) {
            (Extreme::Max, false) => v > best,
            (Extreme::Max, true) => v >= best,
            (Extreme::Min, false) => v < best,
            (Extreme::Min, true) => v <= best,
        };
        let mut out = vec![0i64; outer * inner];
        if len == 0 {
            return out;
        }
        for o in 0..outer {
            let block = &x[o * len * inner..(o + 1) * len * inner];
            if inner == 1 {
                // Along the last axis (a classifier's scores): each row's values in turn.
                let (mut best, mut at) = (block[0], 0);
                for (k, &v) in block.iter().enumerate().skip(1) {
                    if better(v, best) {
                        (best, at) = (v, k);
                    }
                }
                out[o] = at as i64;
            } else {
                let row = &mut out[o * inner..(o + 1) * inner];
                let mut best: Vec<T> = block[..inner].to_vec();
                for k in 1..len {
                    let values = &block[k * inner..(k + 1) * inner];
                    for ((v, b), at) in values.iter().zip(best.iter_mut()).zip(row.iter_mut()) {
                        if better(*v, *b) {
                            (*b, *at) = (*v, k as i64);
                        }
                    }
                }
            }
        }
        out
    }
}

impl Kernel for Arg {
    fn name(&self) -> &'static str {
        match self.extreme {
            Extreme::Max => "ArgMax",
            Extreme::Min => "ArgMin",
        }
    }

    fn output_types(&self) -> Vec<Option<DatumType>> {
        vec![Some(DatumType::I64)]
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let shape: Vec<TDim> = inputs[0].shape.iter().cloned().collect();
        let axis = self.axis_of(shape.len())?;
        Ok(tvec!(i64::fact(self.output_shape(&shape, axis))))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = &inputs[0];
        let shape = input.shape().to_vec();
        let axis = self.axis_of(shape.len())?;
        let outer: usize = shape[..axis].iter().product();
        let len = shape[axis];
        let inner: usize = shape[axis + 1..].iter().product();
        macro_rules! plain {
            ($t:ty) => {
                self.indices(
                    input.try_as_plain_ram()?.as_slice::<$t>()?,
                    outer,
                    len,
                    inner,
                )
            };
        }
        let out = match input.datum_type() {
            DatumType::F32 => plain!(f32),
            DatumType::F64 => plain!(f64),
            DatumType::I64 => plain!(i64),
            DatumType::I32 => plain!(i32),
            DatumType::I16 => plain!(i16),
            DatumType::I8 => plain!(i8),
            DatumType::U64 => plain!(u64),
            DatumType::U32 => plain!(u32),
            DatumType::U16 => plain!(u16),
            DatumType::U8 => plain!(u8),
            // f16 and the like: through f32, which orders them the same.
            _ => self.indices(&float_rows(input)?.2, outer, len, inner),
        };
        tensor(&self.output_shape(&shape, axis), out).map(|t| tvec!(t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A brute-force ArgMax/ArgMin over any axis of a row-major tensor, in onnxruntime's terms.
    fn reference(x: &[f32], shape: &[usize], arg: &Arg) -> Vec<i64> {
        let axis = arg.axis_of(shape.len()).unwrap();
        let strides: Vec<usize> = (0..shape.len())
            .map(|d| shape[d + 1..].iter().product())
            .collect();
        let out_shape: Vec<usize> = (0..shape.len())
            .map(|d| if d == axis { 1 } else { shape[d] })
            .collect();
        let n: usize = out_shape.iter().product();
        (0..n)
            .map(|flat| {
                // The output position's coordinates, the axis at 0.
                let mut rest = flat;
                let mut base = 0;
                for d in (0..shape.len()).rev() {
                    let c = rest % out_shape[d];
                    rest /= out_shape[d];
                    base += c * strides[d];
                }
                let values: Vec<f32> = (0..shape[axis])
                    .map(|k| x[base + k * strides[axis]])
                    .collect();
                let mut at = 0;
                for k in 1..values.len() {
                    let (v, b) = (values[k], values[at]);
                    let take = match (arg.extreme, arg.last) {
                        (Extreme::Max, false) => v > b,
                        (Extreme::Max, true) => v >= b,
                        (Extreme::Min, false) => v < b,
                        (Extreme::Min, true) => v <= b,
                    };
                    if take {
                        at = k;
                    }
                }
                at as i64
            })
            .collect()
    }

    /// `arg` over `x` of `shape`: the output's shape and indices.
    fn evaluate(arg: &Arg, shape: &[usize], x: Vec<f32>) -> (Vec<usize>, Vec<i64>) {
        let out = arg
            .eval(tvec!(tensor(shape, x).unwrap()))
            .unwrap()
            .remove(0);
        let indices = out.try_as_plain_ram().unwrap().as_slice::<i64>().unwrap();
        (out.shape().to_vec(), indices.to_vec())
    }

    #[test]
    fn arg_extremes_match_brute_force_on_every_axis() {
        // Values with many ties, NaN, infinities, signed zeros.
        let mut r = crate::Rng(0x2545_f491_4f6c_dd1d);
        let pool = [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            0.0,
            -0.0,
            1.0,
            -1.0,
            2.5,
            f32::MIN,
            f32::MAX,
        ];
        for case in 0..300 {
            let rank = 1 + r.below(3) as usize;
            let shape: Vec<usize> = (0..rank).map(|_| 1 + r.below(4) as usize).collect();
            let n: usize = shape.iter().product();
            let x: Vec<f32> = (0..n)
                .map(|_| pool[r.below(pool.len() as u64) as usize])
                .collect();
            let arg = Arg {
                extreme: if case % 2 == 0 {
                    Extreme::Max
                } else {
                    Extreme::Min
                },
                axis: r.below(2 * rank as u64) as i64 - rank as i64,
                keepdims: r.below(2) == 0,
                last: r.below(2) == 0,
            };
            let (out_shape, got) = evaluate(&arg, &shape, x.clone());
            let axis = arg.axis_of(rank).unwrap();
            let mut want_shape = shape.clone();
            if arg.keepdims {
                want_shape[axis] = 1;
            } else {
                want_shape.remove(axis);
            }
            assert_eq!(out_shape, want_shape, "case {case}: {arg:?} {shape:?}");
            assert_eq!(
                got,
                reference(&x, &shape, &arg),
                "case {case}: {arg:?} {shape:?} {x:?}"
            );
        }
    }

    #[test]
    fn arg_extremes_follow_onnxruntime_on_nan_and_ties() {
        // onnxruntime 1.32's answers for these rows, ArgMax along the last axis.
        let x = [
            [f32::NAN, 1.0, 2.0],
            [1.0, f32::NAN, 0.0],
            [f32::NEG_INFINITY; 3],
            [f32::NAN; 3],
            [3.0, 3.0, 1.0],
            [0.0, -0.0, 0.0],
            [1.0, 5.0, f32::NAN],
        ];
        let flat: Vec<f32> = x.iter().flatten().copied().collect();
        for (last, want) in [
            (false, [0, 0, 0, 0, 0, 0, 1]),
            (true, [0, 0, 2, 0, 1, 2, 1]),
        ] {
            let arg = Arg {
                extreme: Extreme::Max,
                axis: 1,
                keepdims: true,
                last,
            };
            let (shape, got) = evaluate(&arg, &[7, 3], flat.clone());
            assert_eq!(shape, [7, 1]);
            assert_eq!(got, want, "select_last_index {last}");
        }
    }
}
