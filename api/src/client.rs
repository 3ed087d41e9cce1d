//! A client of `mvm serve`'s API over its Unix socket: JSON requests, and
//! a job's logs followed to its end (what `mvm up --remote` needs).
//!
//! Each request is one HTTP/1.1 connection (hyper), on a current-thread
//! runtime owned by the [`Client`]; its methods block.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tracing::{debug, warn};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot start the async runtime")]
    Runtime(#[source] io::Error),
    #[error("cannot connect to mvm serve at {}", .socket.display())]
    Connect {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the exchange with mvm serve failed")]
    Http(#[from] hyper::Error),
    #[error("cannot build the request")]
    Request(#[from] hyper::http::Error),
    /// The daemon's own `{"error", "field"}` answer.
    #[error("mvm serve answered {status}: {error}")]
    Refused { status: StatusCode, error: String, field: Option<String> },
    #[error("mvm serve's answer is not JSON")]
    NotJson(#[source] serde_json::Error),
    #[error("cannot write the job's output")]
    Write(#[source] io::Error),
}

pub struct Client {
    socket: PathBuf,
    runtime: tokio::runtime::Runtime,
}

impl Client {
    pub fn new(socket: &Path) -> Result<Client, ClientError> {
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(ClientError::Runtime)?;
        Ok(Client { socket: socket.to_owned(), runtime })
    }

    /// `POST /v1/jobs`: creates and starts a job; its record.
    pub fn create_job(&self, body: &Value) -> Result<Value, ClientError> {
        self.call(Method::POST, "/v1/jobs", Some(body))
    }

    /// `GET /v1/jobs/{id}`: a job's record.
    pub fn job(&self, id: &str) -> Result<Value, ClientError> {
        self.call(Method::GET, &format!("/v1/jobs/{id}"), None)
    }

    /// Sends a request with an optional JSON body and returns the JSON
    /// answer; any status but 2xx is [`ClientError::Refused`].
    fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value, ClientError> {
        self.runtime.block_on(async {
            let response = self.send(method, path, body).await?;
            let status = response.status();
            let bytes = response.into_body().collect().await?.to_bytes();
            let value: Value = serde_json::from_slice(&bytes).map_err(ClientError::NotJson)?;
            if !status.is_success() {
                let error = value["error"].as_str().unwrap_or("(no message)").to_owned();
                return Err(ClientError::Refused { status, error, field: value["field"].as_str().map(str::to_owned) });
            }
            Ok(value)
        })
    }

    /// Streams job `id`'s stdout into `stdout` and its stderr into `stderr`
    /// until the job ends. With `kill_on_interrupt`, a SIGINT (^C) kills the
    /// job, as it would a local run, and the logs are followed to its end.
    pub fn follow_logs(
        &self,
        id: &str,
        stdout: &mut dyn Write,
        stderr: &mut dyn Write,
        kill_on_interrupt: bool,
    ) -> Result<(), ClientError> {
        self.runtime.block_on(async {
            let out = self.pump(format!("/v1/jobs/{id}/logs?stream=stdout&follow=true"), stdout);
            let err = self.pump(format!("/v1/jobs/{id}/logs?stream=stderr&follow=true"), stderr);
            let both = async { tokio::try_join!(out, err).map(|_| ()) };
            tokio::pin!(both);
            if kill_on_interrupt {
                tokio::select! {
                    result = &mut both => return result,
                    _ = tokio::signal::ctrl_c() => {
                        match self.send(Method::POST, &format!("/v1/jobs/{id}/kill"), None).await {
                            Ok(response) => debug!(status = %response.status(), "asked mvm serve to kill the job"),
                            Err(e) => warn!(error = %e, "cannot ask mvm serve to kill the job"),
                        }
                    }
                }
            }
            both.await
        })
    }

    async fn pump(&self, path: String, sink: &mut dyn Write) -> Result<(), ClientError> {
        let response = self.send(Method::GET, &path, None).await?;
        let status = response.status();
        let mut body = response.into_body();
        if !status.is_success() {
            let bytes = body.collect().await?.to_bytes();
            let value: Value = serde_json::from_slice(&bytes).map_err(ClientError::NotJson)?;
            let error = value["error"].as_str().unwrap_or("(no message)").to_owned();
            return Err(ClientError::Refused { status, error, field: value["field"].as_str().map(str::to_owned) });
        }
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                sink.write_all(&data).and_then(|()| sink.flush()).map_err(ClientError::Write)?;
            }
        }
        Ok(())
    }

    async fn send(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Response<Incoming>, ClientError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|source| ClientError::Connect { socket: self.socket.clone(), source })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!(error = %e, "connection to mvm serve ended");
            }
        });
        let builder = Request::builder().method(method).uri(path).header(hyper::header::HOST, "localhost");
        let request = match body {
            Some(value) => builder
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(value.to_string())))?,
            None => builder.body(Full::new(Bytes::new()))?,
        };
        Ok(sender.send_request(request).await?)
    }
}
