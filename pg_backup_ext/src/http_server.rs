//! The metrics and status page server: a static background worker, registered only when
//! `backup.http_listen` is set at server start (off by default), serving read-only:
//! - `/metrics`: Prometheus text ([`backup_core::monitor::render_metrics`]);
//! - `/`: the status page ([`backup_core::monitor::render_status_page`]);
//! - `/health`: `backup.health()` as JSON, status 503 when the overall status is critical
//!   (for load balancers and uptime checks);
//! - `/stats`: `backup.stats()` as JSON.
//!
//! tiny_http accepts connections on its own threads and hands each request to this worker's
//! main thread, the only one that may run SQL; requests are answered one at a time. Every
//! request reads the catalog afresh; the repositories' usage (a listing of each store) is
//! reused for [`USAGE_TTL`], so a scrape every few seconds does not list a bucket every time.

use std::time::{Duration, Instant};

use backup_core::monitor::{self, RepositoryUsage, Snapshot};
use pgrx::prelude::*;

use crate::gucs;
use crate::postgres::bgworker::{self, transaction, Liveness, SqlError, Worker};

pub const WORKER_TYPE: &str = "pg_backup_ext http";

const RESTART_AFTER: Duration = Duration::from_secs(10);

/// How long the repositories' usage is reused between requests.
const USAGE_TTL: Duration = Duration::from_secs(30);

/// Called from `_PG_init`.
pub fn register() {
    if crate::postgres::loading_shared_preload_libraries() && gucs::http_listen().is_some() {
        bgworker::register_static(WORKER_TYPE, "pg_backup_ext_http_main", RESTART_AFTER);
    }
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pg_backup_ext_http_main(_arg: pg_sys::Datum) {
    let worker = Worker::attach();
    let Some(address) = gucs::http_listen() else {
        return;
    };
    worker.connect_by_name(&gucs::scheduler_database());
    let server = match tiny_http::Server::http(address.as_str()) {
        Ok(s) => s,
        Err(e) => {
            // Exit 1: the postmaster tries again after RESTART_AFTER (the port may free up).
            warning!("pg_backup_ext http: cannot listen on {address:?} (backup.http_listen): {e}; trying again in {} s", RESTART_AFTER.as_secs());
            crate::postgres::exit_process(1);
        }
    };
    log!("pg_backup_ext http: serving /metrics and the status page on http://{address}/");
    let mut usage: Option<(Instant, Vec<RepositoryUsage>)> = None;
    loop {
        match worker.poll() {
            Liveness::Running => {}
            Liveness::Terminate => crate::postgres::exit_process(1),
            Liveness::PostmasterDied => worker.exit_after_postmaster_death(),
        }
        let request = match server.recv_timeout(Duration::from_millis(500)) {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(e) => {
                warning!("pg_backup_ext http: {e}");
                continue;
            }
        };
        let (status, content_type, body) = answer(&request, &mut usage);
        let header = tiny_http::Header::from_bytes(&b"Content-Type"[..], content_type.as_bytes()).expect("a valid header");
        let _ = request.respond(tiny_http::Response::from_string(body).with_status_code(status).with_header(header));
    }
}

fn answer(request: &tiny_http::Request, usage: &mut Option<(Instant, Vec<RepositoryUsage>)>) -> (u16, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    if request.method() != &tiny_http::Method::Get && request.method() != &tiny_http::Method::Head {
        return (405, TEXT, "read-only: GET /, /metrics, /health, /stats\n".into());
    }
    let path = request.url().split('?').next().unwrap_or("/");
    let result = match path {
        "/" | "/metrics" => snapshot(usage).map(|s| {
            if path == "/" {
                (200, "text/html; charset=utf-8", monitor::render_status_page(&s))
            } else {
                (200, "text/plain; version=0.0.4; charset=utf-8", monitor::render_metrics(&s))
            }
        }),
        "/health" => transaction(|| Ok(crate::health::checks()?)).map(|checks| {
            let critical = checks.first().is_some_and(|o| o.status == backup_core::health::Status::Critical);
            (if critical { 503 } else { 200 }, "application/json", serde_json::to_string_pretty(&checks).unwrap_or_default())
        }),
        "/stats" => transaction(|| Ok(crate::stats::stats(pgrx::datum::Interval::new(0, 30, 0).expect("30 days is an interval"))?))
            .map(|s| (200, "application/json", serde_json::to_string_pretty(&s).unwrap_or_default())),
        _ => return (404, TEXT, "not found: GET /, /metrics, /health, /stats\n".into()),
    };
    result.unwrap_or_else(|e| (500, TEXT, format!("pg_backup_ext: {e}\n")))
}

/// The catalog's part read now, the repositories' part reused while fresh.
fn snapshot(usage: &mut Option<(Instant, Vec<RepositoryUsage>)>) -> Result<Snapshot, SqlError> {
    let json = transaction(|| {
        let cluster = crate::alerter::source()?;
        Ok(crate::catalog::monitor::snapshot(&cluster)?)
    })?;
    let mut s: Snapshot = serde_json::from_value(json).map_err(|e| SqlError::new(format!("the monitoring snapshot does not match its type: {e}")))?;
    if usage.as_ref().is_none_or(|(at, _)| at.elapsed() > USAGE_TTL) {
        *usage = Some((Instant::now(), repositories()));
    }
    s.repositories = usage.as_ref().map(|(_, u)| u.clone()).unwrap_or_default();
    Ok(s)
}

/// Each repository's bytes stored, and its filesystem's free and total bytes where it is local.
fn repositories() -> Vec<RepositoryUsage> {
    let figures = crate::stats::repository_figures().unwrap_or_default();
    figures
        .into_iter()
        .map(|f| {
            if let Err(e) = &f.usage {
                log!("pg_backup_ext http: repository {}: {e}", f.name);
            }
            RepositoryUsage { name: f.name, stored_bytes: f.usage.ok().map(|u| u.total_bytes), free_bytes: f.space.map(|s| s.0), total_bytes: f.space.map(|s| s.1) }
        })
        .collect()
}
