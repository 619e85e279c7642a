//! `supervisor daemon --metrics ADDR`: Prometheus's scrape endpoint, `GET /metrics`, over
//! HTTP/1 (hyper). Loopback only unless `--metrics-public`: the figures name no secret, but
//! they tell how busy the host is and what fails on it.
//!
//! Each scrape reads the gauges (jobs by state, unresponsive and paused jobs: one store read;
//! live conductors; the store's size) and renders every metric. Connections are bounded in
//! number and in how long their request may take.

use crate::job::Jobs;
use crate::metrics::METRICS;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// How many scrapes are served at once; more connections wait to be accepted.
const MAX_CONNECTIONS: usize = 16;
/// How long a client has to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The content type of the OpenMetrics text exposition (which Prometheus reads).
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `/metrics` on `listener` until the daemon stops.
pub async fn serve(listener: TcpListener, jobs: Jobs) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                tracing::warn!(error = %err, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let jobs = jobs.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let jobs = jobs.clone();
                async move { Ok::<_, Infallible>(answer(&request, &jobs).await) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(err) = served {
                tracing::debug!(error = %err, "metrics: connection failed");
            }
            drop(permit);
        });
    }
}

async fn answer(request: &Request<Incoming>, jobs: &Jobs) -> Response<Full<Bytes>> {
    let status = match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => None,
        (_, "/metrics") => Some(StatusCode::METHOD_NOT_ALLOWED),
        _ => Some(StatusCode::NOT_FOUND),
    };
    if let Some(status) = status {
        let mut response = Response::new(Full::new(Bytes::from_static(b"see /metrics\n")));
        *response.status_mut() = status;
        return response;
    }
    refresh_gauges(jobs).await;
    let mut response = Response::new(Full::new(Bytes::from(METRICS.render())));
    if let Ok(value) = hyper::header::HeaderValue::from_str(CONTENT_TYPE) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

/// Reads what the gauges show now.
async fn refresh_gauges(jobs: &Jobs) {
    match jobs.store().read(|s| s.metrics_counts()).await {
        Ok(counts) => {
            METRICS.set_jobs(&counts.by_state);
            METRICS.unresponsive_conductors.set(counts.unresponsive);
            METRICS.paused_jobs.set(counts.paused);
            METRICS
                .store_bytes
                .set(i64::try_from(counts.store_bytes).unwrap_or(i64::MAX));
        }
        Err(err) => tracing::warn!(error = %err, "metrics: cannot read the store"),
    }
    METRICS
        .live_conductors
        .set(i64::try_from(jobs.supervising()).unwrap_or(i64::MAX));
}
