//! The HTTP API: routes, query strings, and records as JSON. Every handler
//! answers JSON (logs and consoles excepted), errors as `{"error", "field"}`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::logs::{self, LogRequest};
use super::record::{Kind, Record};
use super::request::{self, machine_dir, ApiError, RequestContext};
use super::supervisor::{Action, Supervisor};
use super::{new_id, unix_now};

/// The OpenAPI document, served as is and kept in the repository.
pub const OPENAPI: &str = include_str!("../../openapi.json");

pub struct App {
    pub supervisor: Arc<Supervisor>,
    pub context: RequestContext,
}

type AppState = State<Arc<App>>;
/// How much of a plain-text error body [`json_errors`] keeps.
const ERROR_BODY_MAX: usize = 64 * 1024;
type Answer = Result<Response, ApiError>;

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/jobs", post(create_job).get(list_jobs))
        .route("/v1/jobs/{id}", get(get_job).delete(delete_job))
        .route("/v1/jobs/{id}/logs", get(job_logs))
        .route("/v1/jobs/{id}/pause", post(pause_job))
        .route("/v1/jobs/{id}/resume", post(resume_job))
        .route("/v1/jobs/{id}/kill", post(kill_job))
        .route("/v1/vms", post(create_vm).get(list_vms))
        .route("/v1/vms/{id}", get(get_vm).delete(delete_vm))
        .route("/v1/vms/{id}/console", get(vm_console))
        .route("/v1/vms/{id}/pause", post(pause_vm))
        .route("/v1/vms/{id}/resume", post(resume_vm))
        .route("/v1/vms/{id}/stop", post(stop_vm))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::map_response(json_errors))
        .with_state(app)
}

/// Makes the errors axum answers by itself (a body over its size limit, a
/// path segment that is not UTF-8, ...) JSON errors like the others.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let json =
        response.headers().get(header::CONTENT_TYPE).is_some_and(|t| t.as_bytes().starts_with(b"application/json"));
    if json || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let body = axum::body::to_bytes(response.into_body(), ERROR_BODY_MAX).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&body).trim().to_owned();
    let error = if text.is_empty() { status.canonical_reason().unwrap_or("error").to_owned() } else { text };
    ApiError { status, error, field: None }.into_response()
}

async fn health(State(app): AppState) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "running": app.supervisor.running(),
        "max_running": app.supervisor.max_running(),
    }))
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such endpoint (see GET /v1/openapi.json)", None)
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed on this endpoint", None)
}

async fn create(app: &App, kind: Kind, body: &[u8]) -> Answer {
    let id = new_id().map_err(|e| ApiError::internal(format!("cannot make an id: {e}")))?;
    let now = unix_now();
    let launch = match kind {
        Kind::Job => request::job(&app.context, &id, body, now)?,
        Kind::Vm => request::vm(&app.context, &id, body, now)?,
    };
    let record = app.supervisor.launch(launch).await?;
    Ok((StatusCode::CREATED, Json(view(app, &record))).into_response())
}

async fn create_job(State(app): AppState, body: Bytes) -> Answer {
    create(&app, Kind::Job, &body).await
}

async fn create_vm(State(app): AppState, body: Bytes) -> Answer {
    create(&app, Kind::Vm, &body).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    state: Option<String>,
}

fn query<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    query.map(|Query(q)| q).map_err(|e| {
        let message = e.body_text();
        let field = message.split('`').nth(1).filter(|_| message.contains("field")).map(str::to_owned);
        ApiError { status: StatusCode::BAD_REQUEST, error: message, field: field.or(Some("query".into())) }
    })
}

fn list(app: &App, kind: Kind, q: ListQuery) -> Answer {
    let state = match q.state.as_deref() {
        None | Some("") => None,
        Some(s) => Some(s.parse().map_err(|e| {
            let states: Vec<_> = super::record::STATES.iter().map(|s| s.as_str()).collect();
            ApiError::field("state", format!("{e}; one of {}", states.join(", ")))
        })?),
    };
    let records = app.supervisor.list(kind, state)?;
    let items: Vec<Value> = records.iter().map(|r| view(app, r)).collect();
    Ok(Json(json!({ kind.collection(): items })).into_response())
}

async fn list_jobs(State(app): AppState, q: Result<Query<ListQuery>, QueryRejection>) -> Answer {
    list(&app, Kind::Job, query(q)?)
}

async fn list_vms(State(app): AppState, q: Result<Query<ListQuery>, QueryRejection>) -> Answer {
    list(&app, Kind::Vm, query(q)?)
}

/// The record with this id and kind; 404 otherwise.
fn find(app: &App, kind: Kind, id: &str) -> Result<Record, ApiError> {
    match app.supervisor.record(id)? {
        Some(record) if record.kind == kind => Ok(record),
        _ => Err(ApiError::not_found(kind, id)),
    }
}

fn view(app: &App, record: &Record) -> Value {
    let live = if record.state.ended() { None } else { app.supervisor.live_usage(&record.id) };
    record.to_json(live)
}

async fn get_job(State(app): AppState, Path(id): Path<String>) -> Answer {
    Ok(Json(view(&app, &find(&app, Kind::Job, &id)?)).into_response())
}

async fn get_vm(State(app): AppState, Path(id): Path<String>) -> Answer {
    Ok(Json(view(&app, &find(&app, Kind::Vm, &id)?)).into_response())
}

fn control(app: &App, kind: Kind, id: &str, action: Action) -> Answer {
    let record = find(app, kind, id)?;
    app.supervisor.control(&record, action)?;
    Ok(Json(view(app, &find(app, kind, id)?)).into_response())
}

async fn pause_job(State(app): AppState, Path(id): Path<String>) -> Answer {
    control(&app, Kind::Job, &id, Action::Pause)
}

async fn resume_job(State(app): AppState, Path(id): Path<String>) -> Answer {
    control(&app, Kind::Job, &id, Action::Resume)
}

async fn kill_job(State(app): AppState, Path(id): Path<String>) -> Answer {
    control(&app, Kind::Job, &id, Action::Kill)
}

async fn pause_vm(State(app): AppState, Path(id): Path<String>) -> Answer {
    control(&app, Kind::Vm, &id, Action::Pause)
}

async fn resume_vm(State(app): AppState, Path(id): Path<String>) -> Answer {
    control(&app, Kind::Vm, &id, Action::Resume)
}

async fn stop_vm(State(app): AppState, Path(id): Path<String>) -> Answer {
    control(&app, Kind::Vm, &id, Action::Kill)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteQuery {
    #[serde(default)]
    outputs: bool,
}

fn delete(app: &App, kind: Kind, id: &str, q: DeleteQuery) -> Answer {
    let record = find(app, kind, id)?;
    if q.outputs && kind == Kind::Vm {
        return Err(ApiError::field("outputs", "a VM has no outputs"));
    }
    let removed = app.supervisor.delete(&record, q.outputs)?;
    Ok(Json(json!({ "id": id, "deleted": true, "outputs_removed": removed })).into_response())
}

async fn delete_job(
    State(app): AppState,
    Path(id): Path<String>,
    q: Result<Query<DeleteQuery>, QueryRejection>,
) -> Answer {
    delete(&app, Kind::Job, &id, query(q)?)
}

async fn delete_vm(
    State(app): AppState,
    Path(id): Path<String>,
    q: Result<Query<DeleteQuery>, QueryRejection>,
) -> Answer {
    delete(&app, Kind::Vm, &id, query(q)?)
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Stream {
    Stdout,
    Stderr,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogsQuery {
    stream: Option<Stream>,
    follow: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsoleQuery {
    follow: Option<bool>,
}

fn log_response(app: &App, record: &Record, stream: Stream, follow: bool) -> Response {
    let name = match stream {
        Stream::Stdout => "stdout.log",
        Stream::Stderr => "stderr.log",
    };
    let request = LogRequest {
        id: record.id.clone(),
        path: machine_dir(&app.context.state_dir, &record.id).join(name),
        follow,
        strip_report: record.kind == Kind::Job && stream == Stream::Stderr,
    };
    let headers = [(header::CONTENT_TYPE, "application/octet-stream"), (header::CACHE_CONTROL, "no-store")];
    (headers, logs::body(Arc::clone(&app.supervisor), request)).into_response()
}

async fn job_logs(State(app): AppState, Path(id): Path<String>, q: Result<Query<LogsQuery>, QueryRejection>) -> Answer {
    let q = query(q)?;
    let record = find(&app, Kind::Job, &id)?;
    Ok(log_response(&app, &record, q.stream.unwrap_or(Stream::Stdout), q.follow.unwrap_or(false)))
}

async fn vm_console(
    State(app): AppState,
    Path(id): Path<String>,
    q: Result<Query<ConsoleQuery>, QueryRejection>,
) -> Answer {
    let q = query(q)?;
    let record = find(&app, Kind::Vm, &id)?;
    Ok(log_response(&app, &record, Stream::Stdout, q.follow.unwrap_or(true)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openapi_document_lists_every_route_and_its_errors() {
        let doc: Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.0"));
        let mut documented: Vec<String> = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                documented.push(format!("{} {path}", method.to_uppercase()));
                for (code, response) in operation["responses"].as_object().unwrap() {
                    if code.starts_with('4') || code.starts_with('5') {
                        let schema = &response["content"]["application/json"]["schema"]["$ref"];
                        assert_eq!(schema, "#/components/schemas/Error", "{method} {path} {code}");
                    }
                }
            }
        }
        documented.sort();
        let mut routed = vec![
            "GET /v1/health",
            "GET /v1/openapi.json",
            "POST /v1/jobs",
            "GET /v1/jobs",
            "GET /v1/jobs/{id}",
            "DELETE /v1/jobs/{id}",
            "GET /v1/jobs/{id}/logs",
            "POST /v1/jobs/{id}/pause",
            "POST /v1/jobs/{id}/resume",
            "POST /v1/jobs/{id}/kill",
            "POST /v1/vms",
            "GET /v1/vms",
            "GET /v1/vms/{id}",
            "DELETE /v1/vms/{id}",
            "GET /v1/vms/{id}/console",
            "POST /v1/vms/{id}/pause",
            "POST /v1/vms/{id}/resume",
            "POST /v1/vms/{id}/stop",
        ];
        routed.sort_unstable();
        assert_eq!(documented, routed);
    }
}
