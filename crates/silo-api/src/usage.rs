//! What sandboxes use, as E2B's `get_metrics` reads it: `GET /sandboxes/{id}/metrics`
//! (samples between two times, oldest first) and `GET /sandboxes/metrics` (the newest
//! sample of each sandbox named). The node takes the samples (silo_node::sandbox::metrics).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use silo_catalog::{now_ms, MetricSample};
use silo_protocol::ids::SandboxId;
use silo_protocol::rest::{MetricsQuery, SandboxMetric, SandboxesWithMetrics};

use crate::error::ApiError;
use crate::extract::{ApiQuery, SandboxPath};
use crate::sandboxes::rfc3339;
use crate::AppState;

/// `GET /sandboxes/{id}/metrics?start&end`: from `start` (default: the sandbox's start)
/// to `end` (default: now), Unix seconds.
#[utoipa::path(get, path = "/sandboxes/{id}/metrics", tag = "observe", params(("id" = String, Path, description = "Sandbox id"), MetricsQuery), responses((status = 200, description = "Samples, oldest first", body = Vec<SandboxMetric>), (status = 400, description = "malformed request", body = silo_protocol::rest::ApiError), (status = 401, description = "no or wrong API key", body = silo_protocol::rest::ApiError), (status = 404, description = "no such sandbox", body = silo_protocol::rest::ApiError), (status = 500, description = "internal error; the log has the detail", body = silo_protocol::rest::ApiError)), security(("api_key" = [])))]
pub async fn of_sandbox(
    State(app): State<AppState>,
    SandboxPath(id): SandboxPath,
    ApiQuery(query): ApiQuery<MetricsQuery>,
) -> Result<Json<Vec<SandboxMetric>>, ApiError> {
    let rec = app.manager.get(&id)?;
    let from_ms = query
        .start
        .map_or(rec.started_at_ms, |s| s.saturating_mul(1000));
    let to_ms = query.end.map_or_else(now_ms, end_ms);
    if from_ms > to_ms {
        return Err(ApiError::BadRequest(format!(
            "start ({}) is after end ({})",
            from_ms / 1000,
            to_ms / 1000
        )));
    }
    let samples = app.manager.catalog().metrics(&id, from_ms, to_ms)?;
    Ok(Json(samples.iter().map(wire).collect()))
}

/// `GET /sandboxes/metrics?sandbox_ids=a,b`: the newest sample of each named sandbox
/// that is running or paused (others, and those without a sample yet, are left out).
#[utoipa::path(get, path = "/sandboxes/metrics", tag = "observe", params(("sandbox_ids" = Option<String>, Query, description = "Comma-separated sandbox ids")), responses((status = 200, description = "The newest sample of each", body = SandboxesWithMetrics), (status = 400, description = "malformed request", body = silo_protocol::rest::ApiError), (status = 401, description = "no or wrong API key", body = silo_protocol::rest::ApiError), (status = 500, description = "internal error; the log has the detail", body = silo_protocol::rest::ApiError)), security(("api_key" = [])))]
pub async fn latest(
    State(app): State<AppState>,
    ApiQuery(query): ApiQuery<BTreeMap<String, String>>,
) -> Result<Json<SandboxesWithMetrics>, ApiError> {
    let ids: Vec<SandboxId> = query
        .get("sandbox_ids")
        .map(String::as_str)
        .unwrap_or_default()
        .split(',')
        .filter_map(|id| id.trim().parse().ok())
        .filter(|id| app.manager.get(id).is_ok())
        .collect();
    let samples = app.manager.catalog().latest_metrics(&ids)?;
    Ok(Json(SandboxesWithMetrics {
        sandboxes: samples
            .iter()
            .map(|s| (s.sandbox_id.to_string(), wire(s)))
            .collect(),
    }))
}

/// The last millisecond of second `end`: the samples taken within it are included.
/// Saturating, as any number a query brings must be.
fn end_ms(end: i64) -> i64 {
    end.saturating_add(1).saturating_mul(1000).saturating_sub(1)
}

fn wire(s: &MetricSample) -> SandboxMetric {
    SandboxMetric {
        timestamp: rfc3339(s.at_ms),
        timestamp_unix: s.at_ms / 1000,
        cpu_count: s.cpu_count,
        cpu_used_pct: s.cpu_used_pct,
        mem_used: s.mem_used,
        mem_total: s.mem_total,
        mem_cache: s.mem_cache,
        disk_used: s.disk_used,
        disk_total: s.disk_total,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_end_includes_its_whole_second_and_never_overflows() {
        assert_eq!(end_ms(5), 5_999);
        assert_eq!(end_ms(i64::MAX), i64::MAX - 1);
        // Saturates to the smallest time rather than wrapping (or panicking).
        assert_eq!(end_ms(i64::MIN), i64::MIN);
        assert_eq!(end_ms(i64::MIN / 1000 - 5), i64::MIN);
    }
}
