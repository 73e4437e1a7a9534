//! The JSON of the open inference protocol (KServe v2, Triton's HTTP
//! API): what a request may hold, the checks each request passes before
//! it joins a batch, and the answers.

use nnc_ir::DType;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A tensor the model takes or gives, as the metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TensorMeta {
    pub name: String,
    pub datatype: &'static str,
    /// `-1` for the batch dim and any other dim the data decides.
    pub shape: Vec<i64>,
}

/// `GET /v2/models/{name}`.
#[derive(Debug, Clone, Serialize)]
pub struct ModelMeta {
    pub name: String,
    pub versions: Vec<String>,
    pub platform: &'static str,
    pub inputs: Vec<TensorMeta>,
    pub outputs: Vec<TensorMeta>,
}

/// `GET /v2`.
#[derive(Debug, Clone, Serialize)]
pub struct ServerMeta {
    pub name: &'static str,
    pub version: &'static str,
    pub extensions: Vec<String>,
}

/// The protocol's name of an element type.
pub fn datatype(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "FP32",
        DType::F64 => "FP64",
        DType::I32 => "INT32",
        DType::I8 => "INT8",
        DType::U8 => "UINT8",
        DType::Bool => "BOOL",
    }
}

#[derive(Debug, Deserialize)]
pub struct InferRequest {
    #[serde(default)]
    pub id: Option<String>,
    pub inputs: Vec<RequestInput>,
    /// The outputs wanted, by name; every output when absent.
    #[serde(default)]
    pub outputs: Option<Vec<RequestedOutput>>,
}

#[derive(Debug, Deserialize)]
pub struct RequestInput {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: String,
    pub data: Value,
}

#[derive(Debug, Deserialize)]
pub struct RequestedOutput {
    pub name: String,
}

/// A request's samples, checked against the model's input: what the
/// encoder turns into the input's values.
#[derive(Debug, Clone, PartialEq)]
pub struct Samples {
    pub count: usize,
    /// The shape of one sample as the client sent it.
    pub sample_shape: Vec<usize>,
    pub values: Values,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    F32(Vec<f32>),
    I32(Vec<i32>),
}

/// What the model's one input takes: its name, raw element type and, when
/// fixed, the number of values per sample.
#[derive(Debug, Clone)]
pub struct InputSpec {
    pub model: String,
    pub name: String,
    pub dtype: DType,
    /// The sample shape the metadata advertises (the model's, after the
    /// batch dim), when fixed.
    pub sample_shape: Option<Vec<usize>>,
}

impl InputSpec {
    fn describe(&self) -> String {
        match &self.sample_shape {
            Some(s) => format!(
                "`{}` ({}, shape [N{}])",
                self.name,
                datatype(self.dtype),
                s.iter().map(|d| format!(", {d}")).collect::<String>()
            ),
            None => format!("`{}` ({})", self.name, datatype(self.dtype)),
        }
    }
}

/// Why a request is refused before it reaches the model (status 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("malformed JSON: {0}")]
    Json(String),
    #[error("the request gives no input {}: model `{}` takes {}", .spec_name, .model, .described)]
    MissingInput {
        model: String,
        spec_name: String,
        described: String,
    },
    #[error("model `{model}` has no input `{name}`; it takes {described}")]
    UnknownInput {
        model: String,
        name: String,
        described: String,
    },
    #[error("input `{0}` is given twice")]
    DuplicateInput(String),
    #[error("input `{name}` has datatype {given}, expected {expected}")]
    Datatype {
        name: String,
        given: String,
        expected: &'static str,
    },
    #[error("input `{name}` has shape {given:?}, expected {expected}")]
    Shape {
        name: String,
        given: Vec<i64>,
        expected: String,
    },
    #[error("input `{name}` has shape {shape:?} ({want} values) but its data holds {have} values")]
    DataLength {
        name: String,
        shape: Vec<i64>,
        want: usize,
        have: usize,
    },
    #[error("input `{name}`: {message}")]
    Data { name: String, message: String },
    #[error("model `{model}` has no output `{name}`; it gives {outputs}")]
    UnknownOutput {
        model: String,
        name: String,
        outputs: String,
    },
}

/// Parses an inference request's body and checks it against `spec`:
/// one input of that name, its datatype, a shape `[N, ...]` whose sample
/// has the model's number of values (any shape of it, as `--predict`
/// takes), `data` flat or nested holding exactly that many numbers.
/// Returns the request's id, its samples and the outputs it asks for.
pub fn parse_infer(
    body: &[u8],
    spec: &InputSpec,
    outputs: &[String],
) -> Result<(Option<String>, Samples, Vec<String>), RequestError> {
    let request: InferRequest =
        serde_json::from_slice(body).map_err(|e| RequestError::Json(e.to_string()))?;
    let described = spec.describe();
    let mut found = None;
    for input in &request.inputs {
        if input.name != spec.name {
            return Err(RequestError::UnknownInput {
                model: spec.model.clone(),
                name: input.name.clone(),
                described,
            });
        }
        if found.is_some() {
            return Err(RequestError::DuplicateInput(input.name.clone()));
        }
        found = Some(input);
    }
    let input = found.ok_or_else(|| RequestError::MissingInput {
        model: spec.model.clone(),
        spec_name: format!("`{}`", spec.name),
        described: described.clone(),
    })?;
    let expected = datatype(spec.dtype);
    if input.datatype != expected {
        return Err(RequestError::Datatype {
            name: input.name.clone(),
            given: input.datatype.clone(),
            expected,
        });
    }
    let shape_error = || RequestError::Shape {
        name: input.name.clone(),
        given: input.shape.clone(),
        expected: match &spec.sample_shape {
            Some(s) => format!(
                "[N{}] with N >= 1 (or any [N, ...] of {} values per sample)",
                s.iter().map(|d| format!(", {d}")).collect::<String>(),
                s.iter().product::<usize>()
            ),
            None => "[N, ...] with N >= 1".to_string(),
        },
    };
    let dims: Vec<usize> = input
        .shape
        .iter()
        .map(|&d| usize::try_from(d).ok())
        .collect::<Option<_>>()
        .ok_or_else(shape_error)?;
    let Some((&count, sample)) = dims.split_first() else {
        return Err(shape_error());
    };
    let per_sample = sample
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(shape_error)?;
    if count == 0 || per_sample == 0 {
        return Err(shape_error());
    }
    if let Some(want) = &spec.sample_shape {
        if per_sample != want.iter().product::<usize>() {
            return Err(shape_error());
        }
    }
    let total = count.checked_mul(per_sample).ok_or_else(shape_error)?;
    let mut numbers = Vec::with_capacity(total.min(1 << 24));
    flatten(&input.data, &mut numbers).map_err(|message| RequestError::Data {
        name: input.name.clone(),
        message,
    })?;
    if numbers.len() != total {
        return Err(RequestError::DataLength {
            name: input.name.clone(),
            shape: input.shape.clone(),
            want: total,
            have: numbers.len(),
        });
    }
    let values = match spec.dtype {
        DType::I32 => Values::I32(
            numbers
                .iter()
                .map(|v| {
                    v.as_i64()
                        .and_then(|i| i32::try_from(i).ok())
                        .ok_or_else(|| format!("{v} is not an INT32"))
                })
                .collect::<Result<_, _>>()
                .map_err(|message| RequestError::Data {
                    name: input.name.clone(),
                    message,
                })?,
        ),
        _ => Values::F32(
            numbers
                .iter()
                .map(|v| v.as_f64().map(|x| x as f32))
                .collect::<Option<_>>()
                .ok_or_else(|| RequestError::Data {
                    name: input.name.clone(),
                    message: "a value is not a number".into(),
                })?,
        ),
    };
    let wanted = match request.outputs {
        None => outputs.to_vec(),
        Some(list) => {
            let mut wanted = Vec::with_capacity(list.len());
            for o in list {
                if !outputs.contains(&o.name) {
                    return Err(RequestError::UnknownOutput {
                        model: spec.model.clone(),
                        name: o.name,
                        outputs: outputs
                            .iter()
                            .map(|n| format!("`{n}`"))
                            .collect::<Vec<_>>()
                            .join(", "),
                    });
                }
                wanted.push(o.name);
            }
            wanted
        }
    };
    Ok((
        request.id,
        Samples {
            count,
            sample_shape: sample.to_vec(),
            values,
        },
        wanted,
    ))
}

/// The numbers of `data`, a number or arrays of them nested to any depth,
/// in row-major order (the body's size limit bounds how many).
fn flatten<'v>(data: &'v Value, out: &mut Vec<&'v Value>) -> Result<(), String> {
    match data {
        Value::Number(_) => {
            out.push(data);
            Ok(())
        }
        Value::Array(items) => {
            for item in items {
                flatten(item, out)?;
            }
            Ok(())
        }
        other => Err(format!(
            "`data` holds {}, expected numbers (a flat array or arrays nested as the shape)",
            kind(other)
        )),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// One output of an answer.
#[derive(Debug, Clone, Serialize)]
pub struct ResponseOutput {
    pub name: String,
    pub datatype: &'static str,
    pub shape: Vec<usize>,
    pub data: OutputData,
}

/// An output's values as its datatype prints them: an `f32` as the
/// shortest decimal that reads back to the same `f32`, as `--predict`
/// prints it.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum OutputData {
    F32(Vec<f32>),
    F64(Vec<f64>),
    Int(Vec<i64>),
    Bool(Vec<bool>),
}

impl OutputData {
    pub fn new(dtype: DType, values: &[f64]) -> OutputData {
        match dtype {
            DType::F32 => OutputData::F32(values.iter().map(|&v| v as f32).collect()),
            DType::F64 => OutputData::F64(values.to_vec()),
            DType::Bool => OutputData::Bool(values.iter().map(|&v| v != 0.0).collect()),
            DType::I32 | DType::I8 | DType::U8 => {
                OutputData::Int(values.iter().map(|&v| v as i64).collect())
            }
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct InferResponse {
    pub model_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub outputs: Vec<ResponseOutput>,
}

/// The protocol's error answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> InputSpec {
        InputSpec {
            model: "M".into(),
            name: "image".into(),
            dtype: DType::F32,
            sample_shape: Some(vec![1, 2, 2]),
        }
    }

    fn parse(body: &str) -> Result<Samples, RequestError> {
        parse_infer(body.as_bytes(), &spec(), &["logits".into()]).map(|(_, s, _)| s)
    }

    #[test]
    fn flat_and_nested_data_of_any_sample_shape_give_the_same_samples() {
        let flat = parse(
            r#"{"inputs":[{"name":"image","shape":[2,4],"datatype":"FP32","data":[1,2,3,4,5,6,7,8]}]}"#,
        )
        .unwrap();
        let nested = parse(
            r#"{"inputs":[{"name":"image","shape":[2,1,2,2],"datatype":"FP32","data":[[[[1,2],[3,4]]],[[[5,6],[7,8]]]]}]}"#,
        )
        .unwrap();
        assert_eq!(flat.values, nested.values);
        assert_eq!((flat.count, nested.count), (2, 2));
        assert_eq!(nested.sample_shape, [1, 2, 2]);
    }

    #[test]
    fn each_bad_request_says_what_was_expected() {
        let cases = [
            ("{", "malformed JSON"),
            (r#"{"inputs":[]}"#, "no input `image`"),
            (
                r#"{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}"#,
                "has no input `x`",
            ),
            (
                r#"{"inputs":[{"name":"image","shape":[1,4],"datatype":"INT32","data":[1,2,3,4]}]}"#,
                "datatype INT32, expected FP32",
            ),
            (
                r#"{"inputs":[{"name":"image","shape":[1,5],"datatype":"FP32","data":[1,2,3,4,5]}]}"#,
                "expected [N, 1, 2, 2]",
            ),
            (
                r#"{"inputs":[{"name":"image","shape":[0,4],"datatype":"FP32","data":[]}]}"#,
                "expected [N, 1, 2, 2]",
            ),
            (
                r#"{"inputs":[{"name":"image","shape":[-1,4],"datatype":"FP32","data":[1,2,3,4]}]}"#,
                "expected [N, 1, 2, 2]",
            ),
            (
                r#"{"inputs":[{"name":"image","shape":[1,4],"datatype":"FP32","data":[1,2,3]}]}"#,
                "holds 3 values",
            ),
            (
                r#"{"inputs":[{"name":"image","shape":[1,4],"datatype":"FP32","data":[1,2,"3",4]}]}"#,
                "holds a string",
            ),
        ];
        for (body, message) in cases {
            let e = parse(body).unwrap_err().to_string();
            assert!(e.contains(message), "{body}: {e}");
        }
        let e = parse_infer(
            br#"{"inputs":[{"name":"image","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}],"outputs":[{"name":"probs"}]}"#,
            &spec(),
            &["logits".into()],
        )
        .unwrap_err();
        assert!(e.to_string().contains("no output `probs`"), "{e}");
    }

    #[test]
    fn f32_outputs_print_in_the_shortest_form_that_reads_back() {
        let x = 0.1f32;
        let text = serde_json::to_string(&OutputData::new(DType::F32, &[f64::from(x)])).unwrap();
        assert_eq!(text, "[0.1]");
    }
}
