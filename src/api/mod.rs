//! The local HTTP API (actix-web, on `node.api_listen`, loopback by default): `GET /rest/status`
//! (JSON), `GET /metrics` (OpenMetrics text, by the Prometheus project's
//! `prometheus-client`), `GET /` (a status page that refreshes itself), and two
//! controls for a stopped folder: `POST /rest/folder/confirm?folder=ID` (accept a new root, or the
//! deletes of every file) and `POST /rest/folder/retry?folder=ID` (retry failed pulls now);
//! the version stores under `/rest/versions` (`versions.rs`); one-way folders' changes, revert and
//! override (`modes.rs`).

mod metrics;
pub mod modes;
pub mod versions;

use std::net::SocketAddr;
use std::sync::Arc;

use actix_web::{web, App, HttpResponse, HttpServer};
use serde::{Deserialize, Serialize};

pub use crate::actors::messages::Control;
use crate::actors::messages::{Confirm, RetryNow};
use crate::actors::status::{NodeState, StatusReport};

#[derive(Deserialize)]
struct FolderQuery {
    folder: String,
}

/// The answer of a control request.
#[derive(Debug, Serialize, Deserialize)]
pub struct ControlReply {
    pub ok: bool,
    pub message: String,
}

fn reply(result: Result<String, String>) -> HttpResponse {
    match result {
        Ok(message) => HttpResponse::Ok().json(ControlReply { ok: true, message }),
        Err(message) => HttpResponse::BadRequest().json(ControlReply { ok: false, message }),
    }
}

async fn confirm(control: web::Data<Control>, query: web::Query<FolderQuery>) -> HttpResponse {
    let answer = control.confirm.send(Confirm { folder: query.folder.clone() }).await;
    reply(answer.unwrap_or_else(|e| Err(format!("the node is stopping ({e})"))))
}

async fn retry(control: web::Data<Control>, query: web::Query<FolderQuery>) -> HttpResponse {
    let Some(puller) = control.retry.get(&query.folder) else {
        return reply(Err(format!("no folder `{}`", query.folder)));
    };
    match puller.send(RetryNow).await {
        Ok(n) => reply(Ok(format!("folder `{}`: retrying {n} failed path(s) now", query.folder))),
        Err(e) => reply(Err(format!("the node is stopping ({e})"))),
    }
}

const PAGE: &str = include_str!("page.html");

async fn snapshot(state: &web::Data<Arc<NodeState>>) -> Result<StatusReport, actix_web::Error> {
    let state = state.get_ref().clone();
    web::block(move || state.snapshot())
        .await
        .map_err(actix_web::error::ErrorInternalServerError)?
        .map_err(|e| actix_web::error::ErrorInternalServerError(format!("{e:#}")))
}

async fn status(state: web::Data<Arc<NodeState>>) -> actix_web::Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(snapshot(&state).await?))
}

async fn metrics(state: web::Data<Arc<NodeState>>) -> actix_web::Result<HttpResponse> {
    let report = snapshot(&state).await?;
    let body = metrics::render(&report).map_err(actix_web::error::ErrorInternalServerError)?;
    Ok(HttpResponse::Ok().content_type(metrics::CONTENT_TYPE).body(body))
}

async fn page() -> HttpResponse {
    HttpResponse::Ok().content_type("text/html; charset=utf-8").body(PAGE)
}

/// Starts the API server on the current actix system.
pub fn start(
    address: SocketAddr,
    state: Arc<NodeState>,
    control: Control,
) -> anyhow::Result<actix_web::dev::ServerHandle> {
    let data = web::Data::new(state);
    let control = web::Data::new(control);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(control.clone())
            .route("/rest/status", web::get().to(status))
            .route("/rest/folder/confirm", web::post().to(confirm))
            .route("/rest/folder/retry", web::post().to(retry))
            .route("/metrics", web::get().to(metrics))
            .route("/rest/versions", web::get().to(versions::get))
            .route("/rest/versions/restore", web::post().to(versions::post_restore))
            .route("/rest/changes", web::get().to(modes::get))
            .route("/rest/revert", web::post().to(modes::revert))
            .route("/rest/override", web::post().to(modes::override_peers))
            .route("/", web::get().to(page))
    })
    .workers(1)
    .disable_signals()
    .bind(address)
    .map_err(|e| anyhow::anyhow!("cannot serve the API on {address}: {e}"))?
    .run();
    let handle = server.handle();
    actix_rt::spawn(server);
    Ok(handle)
}
