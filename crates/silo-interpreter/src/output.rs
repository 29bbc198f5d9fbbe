//! The lines of an `/execute` response and how kernel outputs become them.
//!
//! Each line is one JSON object tagged by `type` (protocol spec §4.1). A MIME bundle from
//! `execute_result` or `display_data` becomes a `result` line: the MIME types the SDK knows get
//! their own field, everything else goes to `extra`.

use serde::Serialize;
use serde_json::{Map, Value};

/// One line of the response body.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutputLine {
    NumberOfExecutions {
        execution_count: i64,
    },
    Stdout {
        text: String,
        timestamp: String,
    },
    Stderr {
        text: String,
        timestamp: String,
    },
    Result(Box<ResultLine>),
    Error {
        name: String,
        value: String,
        traceback: String,
    },
    Keepalive,
    EndOfExecution,
}

impl OutputLine {
    /// The line as sent: compact JSON and a `\n`.
    pub fn to_bytes(&self) -> bytes::Bytes {
        let mut buf = serde_json::to_vec(self).expect("output lines serialize");
        buf.push(b'\n');
        buf.into()
    }

    pub fn error(name: &str, value: impl Into<String>) -> Self {
        OutputLine::Error {
            name: name.into(),
            value: value.into(),
            traceback: String::new(),
        }
    }
}

/// A `result` line. Absent formats are omitted.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ResultLine {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub markdown: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub svg: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub png: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jpeg: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pdf: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latex: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub json: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub javascript: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chart: Option<Value>,
    pub is_main_result: bool,
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub extra: Map<String, Value>,
}

impl ResultLine {
    /// Maps a MIME bundle (`content.data` of `execute_result` / `display_data`).
    pub fn from_bundle(bundle: &Map<String, Value>, is_main_result: bool) -> Self {
        let mut line = ResultLine {
            is_main_result,
            ..Default::default()
        };
        for (mime, value) in bundle {
            match mime.as_str() {
                "text/plain" => line.text = Some(plain_text(value)),
                "text/html" => line.html = Some(text(value)),
                "text/markdown" => line.markdown = Some(text(value)),
                "image/svg+xml" => line.svg = Some(text(value)),
                "image/png" => line.png = Some(text(value)),
                "image/jpeg" => line.jpeg = Some(text(value)),
                "application/pdf" => line.pdf = Some(text(value)),
                "text/latex" => line.latex = Some(text(value)),
                "application/json" => line.json = Some(value.clone()),
                "application/javascript" => line.javascript = Some(text(value)),
                "e2b/data" => line.data = Some(value.clone()),
                "e2b/chart" => line.chart = Some(value.clone()),
                _ => {
                    line.extra.insert(mime.clone(), value.clone());
                }
            }
        }
        line
    }
}

/// A text format's value. Kernels send a string; nbformat also allows a list of lines.
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .map(|p| {
                p.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| p.to_string())
            })
            .collect(),
        other => other.to_string(),
    }
}

/// `text/plain` as the SDK expects it: a Python string repr `'abc'` loses its quotes, so
/// `run_code("'abc'").text == "abc"` as with E2B's own server.
fn plain_text(value: &Value) -> String {
    let s = text(value);
    match s.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
        Some(inner) => inner.to_string(),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bundle(v: Value) -> Map<String, Value> {
        v.as_object().expect("object").clone()
    }

    #[test]
    fn maps_every_known_mime_type() {
        let line = ResultLine::from_bundle(
            &bundle(json!({
                "text/plain": "<Figure>",
                "text/html": "<b>x</b>",
                "text/markdown": "# x",
                "image/svg+xml": "<svg/>",
                "image/png": "iVBOR",
                "image/jpeg": "/9j/",
                "application/pdf": "JVBER",
                "text/latex": "$x$",
                "application/json": {"a": 1},
                "application/javascript": "alert(1)",
                "e2b/data": {"a": [1, 2, 3]},
                "e2b/chart": {"type": "line"},
                "application/vnd.custom+json": {"k": true},
            })),
            false,
        );
        assert_eq!(line.text.as_deref(), Some("<Figure>"));
        assert_eq!(line.html.as_deref(), Some("<b>x</b>"));
        assert_eq!(line.markdown.as_deref(), Some("# x"));
        assert_eq!(line.svg.as_deref(), Some("<svg/>"));
        assert_eq!(line.png.as_deref(), Some("iVBOR"));
        assert_eq!(line.jpeg.as_deref(), Some("/9j/"));
        assert_eq!(line.pdf.as_deref(), Some("JVBER"));
        assert_eq!(line.latex.as_deref(), Some("$x$"));
        assert_eq!(line.json, Some(json!({"a": 1})));
        assert_eq!(line.javascript.as_deref(), Some("alert(1)"));
        assert_eq!(line.data, Some(json!({"a": [1, 2, 3]})));
        assert_eq!(line.chart, Some(json!({"type": "line"})));
        assert_eq!(
            Value::Object(line.extra.clone()),
            json!({"application/vnd.custom+json": {"k": true}})
        );
        assert!(!line.is_main_result);
    }

    #[test]
    fn main_result_line_matches_the_captured_shape() {
        let line = OutputLine::Result(Box::new(ResultLine::from_bundle(
            &bundle(json!({"text/plain": "2"})),
            true,
        )));
        assert_eq!(
            line.to_bytes().as_ref(),
            b"{\"type\":\"result\",\"text\":\"2\",\"is_main_result\":true}\n"
        );
    }

    #[test]
    fn strips_python_string_quotes_only() {
        let t = |v: Value| ResultLine::from_bundle(&bundle(json!({ "text/plain": v })), true).text;
        assert_eq!(t(json!("'abc'")), Some("abc".into()));
        assert_eq!(t(json!("\"it's\"")), Some("\"it's\"".into()));
        assert_eq!(t(json!("'")), Some("'".into()));
        assert_eq!(t(json!("''")), Some("".into()));
        assert_eq!(t(json!(["line1\n", "line2"])), Some("line1\nline2".into()));
    }

    #[test]
    fn other_lines_serialize_with_their_type_tag() {
        let cases = [
            (
                OutputLine::NumberOfExecutions { execution_count: 3 },
                json!({"type":"number_of_executions","execution_count":3}),
            ),
            (
                OutputLine::Stdout {
                    text: "hi\n".into(),
                    timestamp: "2024-01-01T00:00:00Z".into(),
                },
                json!({"type":"stdout","text":"hi\n","timestamp":"2024-01-01T00:00:00Z"}),
            ),
            (
                OutputLine::error("KernelDied", "gone"),
                json!({"type":"error","name":"KernelDied","value":"gone","traceback":""}),
            ),
            (OutputLine::Keepalive, json!({"type":"keepalive"})),
            (
                OutputLine::EndOfExecution,
                json!({"type":"end_of_execution"}),
            ),
        ];
        for (line, want) in cases {
            let bytes = line.to_bytes();
            assert_eq!(bytes.last(), Some(&b'\n'));
            let got: Value = serde_json::from_slice(&bytes).expect("json");
            assert_eq!(got, want);
        }
    }
}
