//! `GET /metrics`: the server's own metrics in the Prometheus (OpenMetrics) text format,
//! for a Prometheus to scrape.
//!
//! - counted as they happen: create latency per template, the latency of proxied calls
//!   into sandboxes (to the response's head: a command or a code run started), and
//!   errors answered, by kind;
//! - read at each scrape: sandboxes by state and template, and template builds by status
//!   (from the catalog), and the warm pools' sizes.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::error::ApiError;
use crate::AppState;

/// What an error response was, for `silo_errors_total` (set by `ApiError` on its
/// response, counted by [`count_errors`]).
#[derive(Debug, Clone, Copy)]
pub struct ErrorKind(pub &'static str);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
    template: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TemplateLabels {
    template: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    call: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    kind: &'static str,
    status: u16,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// 5 ms to ~80 s, doubling.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

/// The server's metrics. Cheap to share: the families are handles.
pub struct Telemetry {
    registry: Registry,
    sandboxes: Family<StateLabels, Gauge>,
    pooled: Family<TemplateLabels, Gauge>,
    builds: Family<StatusLabels, Gauge>,
    dozing: Gauge,
    creates: Histograms<TemplateLabels>,
    calls: Histograms<CallLabels>,
    errors: Family<ErrorLabels, Counter>,
    /// One scrape at a time: a scrape clears and refills the gauges it reads.
    scrape: tokio::sync::Mutex<()>,
}

impl Default for Telemetry {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("silo");
        let sandboxes = Family::<StateLabels, Gauge>::default();
        let pooled = Family::<TemplateLabels, Gauge>::default();
        let builds = Family::<StatusLabels, Gauge>::default();
        let dozing = Gauge::default();
        let creates: Histograms<TemplateLabels> = Family::new_with_constructor(latency_histogram);
        let calls: Histograms<CallLabels> = Family::new_with_constructor(latency_histogram);
        let errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "sandboxes",
            "Sandboxes in the catalog, by state and template (killed ones included)",
            sandboxes.clone(),
        );
        registry.register(
            "pool_ready",
            "Sandboxes booted and waiting in the warm pool, by template",
            pooled.clone(),
        );
        registry.register(
            "template_builds",
            "Template builds recorded, by status",
            builds.clone(),
        );
        registry.register(
            "sandboxes_dozing",
            "Running sandboxes frozen while idle, thawed by their next request",
            dozing.clone(),
        );
        registry.register(
            "sandbox_create_seconds",
            "Time to create a sandbox, from request to answer, by template",
            creates.clone(),
        );
        registry.register(
            "sandbox_call_seconds",
            "Time from a call into a sandbox to its answer's head (command: envd process \
             start; code: code interpreter execute; files: upload or download; other)",
            calls.clone(),
        );
        registry.register(
            "errors",
            "Error responses by kind and HTTP status",
            errors.clone(),
        );
        Telemetry {
            registry,
            sandboxes,
            pooled,
            builds,
            dozing,
            creates,
            calls,
            errors,
            scrape: tokio::sync::Mutex::new(()),
        }
    }
}

impl Telemetry {
    pub fn observe_create(&self, template: &str, took: Duration) {
        self.creates
            .get_or_create(&TemplateLabels {
                template: template.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    /// A call into a sandbox (by its path) answered after `took`.
    pub fn observe_call(&self, path: &str, took: Duration) {
        let call = match path {
            "/process.Process/Start" => "command",
            "/execute" => "code",
            "/files" => "files",
            _ => "other",
        };
        self.calls
            .get_or_create(&CallLabels { call })
            .observe(took.as_secs_f64());
    }
}

/// `GET /metrics`.
#[utoipa::path(get, path = "/metrics", tag = "server", responses((status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8", body = String), (status = 500, description = "internal error; the log has the detail", body = silo_protocol::rest::ApiError)))]
pub async fn scrape(State(app): State<AppState>) -> Result<Response, ApiError> {
    let t = &app.telemetry;
    let _one_at_a_time = t.scrape.lock().await;
    let catalog = app.manager.catalog();
    t.sandboxes.clear();
    for (state, template, count) in catalog.count_sandboxes()? {
        t.sandboxes
            .get_or_create(&StateLabels {
                state: state.as_str().to_owned(),
                template,
            })
            .set(count as i64);
    }
    t.pooled.clear();
    for (template, count) in app.manager.pooled() {
        t.pooled
            .get_or_create(&TemplateLabels { template })
            .set(count as i64);
    }
    t.builds.clear();
    for (status, count) in catalog.count_builds()? {
        t.builds
            .get_or_create(&StatusLabels { status })
            .set(count as i64);
    }
    t.dozing.set(app.manager.dozing() as i64);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &t.registry)
        .expect("writing to a String does not fail");
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// Middleware: count the error responses that say what they were.
pub async fn count_errors(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    if let Some(ErrorKind(kind)) = resp.extensions().get::<ErrorKind>().copied() {
        app.telemetry
            .errors
            .get_or_create(&ErrorLabels {
                kind,
                status: resp.status().as_u16(),
            })
            .inc();
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_appear_in_the_text() {
        let t = Telemetry::default();
        t.observe_create("base", Duration::from_millis(250));
        t.observe_call("/process.Process/Start", Duration::from_millis(40));
        t.observe_call("/anything", Duration::from_millis(1));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &t.registry).unwrap();
        assert!(
            text.contains("silo_sandbox_create_seconds_count{template=\"base\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("silo_sandbox_call_seconds_count{call=\"command\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("silo_sandbox_call_seconds_count{call=\"other\"} 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
