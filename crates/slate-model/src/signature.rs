//! A model's declared inputs and outputs, read from the ONNX graph, and the operators it uses.

use tract_onnx::pb;

/// The element type of a model input or output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elem {
    Float,
    Double,
    Int64,
    Int32,
    String,
    Bool,
    /// Any other ONNX element type (its `TensorProto.DataType` number).
    Other(i32),
}

impl Elem {
    fn from_onnx(code: i32) -> Elem {
        match code {
            1 => Elem::Float,
            11 => Elem::Double,
            7 => Elem::Int64,
            6 => Elem::Int32,
            8 => Elem::String,
            9 => Elem::Bool,
            c => Elem::Other(c),
        }
    }

    pub fn name(&self) -> String {
        match self {
            Elem::Float => "float".into(),
            Elem::Double => "double".into(),
            Elem::Int64 => "int64".into(),
            Elem::Int32 => "int32".into(),
            Elem::String => "string".into(),
            Elem::Bool => "bool".into(),
            Elem::Other(c) => format!("ONNX type {c}"),
        }
    }

    /// Numeric elements (features of any number type feed them).
    pub fn is_numeric(&self) -> bool {
        matches!(self, Elem::Float | Elem::Double | Elem::Int64 | Elem::Int32)
    }
}

/// One declared tensor: its name, element type and dimensions (`None`: symbolic or absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub elem: Elem,
    /// `None` when the graph declares no shape at all.
    pub dims: Option<Vec<Option<usize>>>,
}

impl TensorSpec {
    fn from_value_info(v: &pb::ValueInfoProto) -> Option<TensorSpec> {
        let pb::type_proto::Value::TensorType(t) = v.r#type.as_ref()?.value.as_ref()?;
        let dims = t.shape.as_ref().map(|s| {
            s.dim
                .iter()
                .map(|d| match d.value {
                    Some(pb::tensor_shape_proto::dimension::Value::DimValue(n)) => {
                        usize::try_from(n).ok()
                    }
                    _ => None,
                })
                .collect()
        });
        Some(TensorSpec {
            name: v.name.clone(),
            elem: Elem::from_onnx(t.elem_type),
            dims,
        })
    }

    /// Features per row this input takes: the product of its dimensions after the first (1 for
    /// a `[N]` input), or `None` when one of them is not fixed.
    pub fn width(&self) -> Option<usize> {
        match self.dims.as_deref() {
            None | Some([]) => None,
            Some([_]) => Some(1),
            Some([_, rest @ ..]) => rest.iter().try_fold(1usize, |w, d| Some(w * (*d)?)),
        }
    }

    /// `float[N,8]`, as messages show it.
    pub fn describe(&self) -> String {
        let dims = match &self.dims {
            None => "?".to_string(),
            Some(d) => d
                .iter()
                .enumerate()
                .map(|(i, d)| match (i, d) {
                    (_, Some(n)) => n.to_string(),
                    (0, None) => "N".into(),
                    (_, None) => "?".into(),
                })
                .collect::<Vec<_>>()
                .join(","),
        };
        format!("{}[{dims}]", self.elem.name())
    }
}

/// What a model declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    /// Every operator the graph uses: (domain, op type, the domain's opset version).
    pub operators: Vec<(String, String, i64)>,
}

impl Signature {
    pub(crate) fn of(proto: &pb::ModelProto) -> Signature {
        let empty = pb::GraphProto::default();
        let graph = proto.graph.as_ref().unwrap_or(&empty);
        let initialized: std::collections::HashSet<&str> =
            graph.initializer.iter().map(|t| t.name.as_str()).collect();
        let inputs = graph
            .input
            .iter()
            .filter(|i| !initialized.contains(i.name.as_str()))
            .filter_map(TensorSpec::from_value_info)
            .collect();
        let outputs = graph
            .output
            .iter()
            .filter_map(TensorSpec::from_value_info)
            .collect();
        let version = |domain: &str| {
            proto
                .opset_import
                .iter()
                .find(|o| o.domain == domain || (domain == "ai.onnx" && o.domain.is_empty()))
                .map_or(0, |o| o.version)
        };
        let mut operators: Vec<(String, String, i64)> = graph
            .node
            .iter()
            .map(|n| {
                let domain = match n.domain.as_str() {
                    "" => "ai.onnx",
                    d => d,
                };
                (domain.to_string(), n.op_type.clone(), version(domain))
            })
            .collect();
        operators.sort();
        operators.dedup();
        Signature {
            inputs,
            outputs,
            operators,
        }
    }

    /// Features per row over every input, when each input's width is fixed.
    pub fn width(&self) -> Option<usize> {
        self.inputs.iter().try_fold(0, |w, i| Some(w + i.width()?))
    }
}
