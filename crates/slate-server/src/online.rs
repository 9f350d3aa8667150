//! `POST /v1/query/online`: features of keys from the online store, as stored.

use crate::{AppState, error};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use slate_project::{FeatureKind, Project};
use slate_types::{FeatureRef, ValueType};
use std::sync::Arc;

fn feature_known(project: &Project, r: &FeatureRef) -> Result<(), String> {
    let class = project
        .class(&r.class)
        .ok_or_else(|| format!("unknown class `{}`", r.class))?;
    let first = r.path.first().unwrap_or(&r.feature);
    if class.feature(first).is_none() {
        return Err(format!("`{}` has no feature `{first}`", class.name));
    }
    Ok(())
}

/// Reads the request's keys as the online store's text keys, checking their JSON type against
/// the primary key's declared type.
fn keys_of(value: &Value, int_key: bool, name: &str) -> Result<Vec<(Value, String)>, String> {
    let items: Vec<&Value> = match value {
        Value::Array(a) => a.iter().collect(),
        v => vec![v],
    };
    if items.is_empty() {
        return Err(format!("`{name}` lists no keys"));
    }
    items
        .into_iter()
        .map(|v| match (v, int_key) {
            (Value::Number(n), true) if n.is_i64() => Ok((v.clone(), n.to_string())),
            (Value::String(s), false) => Ok((v.clone(), s.clone())),
            (other, true) => Err(format!("`{name}` takes integer keys, got {other}")),
            (other, false) => Err(format!("`{name}` takes string keys, got {other}")),
        })
        .collect()
}

pub(crate) async fn query_online(State(s): State<Arc<AppState>>, body: Bytes) -> Response {
    // The store's reads block (a redb read, a Redis round trip): they run on tokio's blocking
    // threads, so that a slow read never holds one of the few async workers.
    match tokio::task::spawn_blocking(move || online_inner(&s, &body)).await {
        Ok(Ok(r)) => r,
        Ok(Err((code, message))) => error(code, message),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("online read failed: {e}"),
        ),
    }
}

fn online_inner(s: &AppState, body: &[u8]) -> Result<Response, (StatusCode, String)> {
    let bad = |m: String| (StatusCode::BAD_REQUEST, m);
    let req: Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("the body is not JSON: {e}")))?;
    let engine = s.engine();
    let project = engine.project();
    let inputs = req
        .get("inputs")
        .and_then(Value::as_object)
        .filter(|o| o.len() == 1)
        .ok_or_else(|| {
            bad(
                "`inputs` must be an object with one key feature, e.g. {\"transaction.id\": 42}"
                    .into(),
            )
        })?;
    let (input_name, input_value) = inputs.iter().next().ok_or_else(|| bad("no input".into()))?;
    let key_ref = FeatureRef::parse(input_name).map_err(|e| bad(e.to_string()))?;
    let class = project
        .class(&key_ref.class)
        .ok_or_else(|| bad(format!("unknown class `{}`", key_ref.class)))?;
    if !key_ref.path.is_empty() || key_ref.feature != class.primary_key {
        return Err(bad(format!(
            "the online store is keyed by `{}.{}`, the primary key",
            class.name.to_lowercase(),
            class.primary_key
        )));
    }
    let int_key = matches!(
        class.feature(&class.primary_key).map(|f| &f.kind),
        Some(FeatureKind::Scalar {
            ty: ValueType::Int,
            ..
        })
    );
    let keys = keys_of(input_value, int_key, input_name).map_err(bad)?;
    let outputs = req
        .get("outputs")
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty())
        .ok_or_else(|| bad("`outputs` must be a non-empty list of feature names".into()))?;
    let mut refs = Vec::new();
    for o in outputs {
        let name = o
            .as_str()
            .ok_or_else(|| bad(format!("output {o} is not a feature name")))?;
        let r = FeatureRef::parse(name).map_err(|e| bad(e.to_string()))?;
        if !r.class.eq_ignore_ascii_case(&class.name) {
            return Err(bad(format!(
                "output `{name}` is not a feature of `{}`",
                class.name
            )));
        }
        feature_known(project, &r).map_err(|e| bad(format!("unknown feature `{name}`: {e}")))?;
        refs.push((name.to_string(), r));
    }
    // Stored values are JSON already; they are written into the response as stored, so a
    // float comes back with exactly the digits that were stored.
    let mut data: Vec<String> = Vec::new();
    let mut missing: Vec<String> = Vec::new();
    // One read of each key's record for every feature (one round trip for a server store).
    let key_texts: Vec<&str> = keys.iter().map(|(_, k)| k.as_str()).collect();
    let columns: Vec<String> = refs.iter().map(|(_, r)| r.column_name()).collect();
    let columns: Vec<&str> = columns.iter().map(|c| c.as_str()).collect();
    let mut values = s.online.get_features(&columns, &key_texts).map_err(|e| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("online store: {e}"),
        )
    })?;
    for (i, (key_json, _)) in keys.iter().enumerate() {
        let mut found = false;
        for (j, (name, _)) in refs.iter().enumerate() {
            let (value, ts) = match values[i][j].take() {
                Some(v) => {
                    found = true;
                    let raw = serde_json::value::RawValue::from_string(v.json.clone())
                        .map(|r| r.get().to_string())
                        .unwrap_or_else(|_| Value::String(v.json).to_string());
                    (
                        raw,
                        Value::String(slate_types::format_rfc3339(v.feature_time)).to_string(),
                    )
                }
                None => ("null".to_string(), "null".to_string()),
            };
            data.push(format!(
                "{{\"key\":{key_json},\"field\":{},\"value\":{value},\"ts\":{ts}}}",
                Value::String(name.clone())
            ));
        }
        if !found {
            missing.push(format!(
                "no values for {input_name}={key_json}: no run has stored this key"
            ));
        }
    }
    // A key without values is an error of its own; the request fails only when none has any.
    if missing.len() == keys.len() {
        return Err((StatusCode::NOT_FOUND, missing.join("; ")));
    }
    let errors: Vec<String> = missing
        .into_iter()
        .map(|m| Value::String(m).to_string())
        .collect();
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        format!(
            "{{\"data\":[{}],\"errors\":[{}]}}",
            data.join(","),
            errors.join(",")
        ),
    )
        .into_response())
}
