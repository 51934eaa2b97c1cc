//! The local HTTP API (actix-web, on `node.api_listen`, loopback by default): `GET /rest/status`
//! (JSON), `GET /metrics` (Prometheus text), `GET /` (a status page that refreshes itself), and two
//! controls for a stopped folder: `POST /rest/folder/confirm?folder=ID` (accept a new root, or the
//! deletes of every file) and `POST /rest/folder/retry?folder=ID` (retry failed pulls now);
//! the version stores under `/rest/versions` (`versions.rs`); one-way folders' changes, revert and
//! override (`modes.rs`).

pub mod modes;
pub mod versions;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use std::collections::HashMap;

use actix::Recipient;
use actix_web::{web, App, HttpResponse, HttpServer};
use serde::{Deserialize, Serialize};

use crate::actors::index::Confirm;
use crate::actors::puller::RetryNow;
use crate::actors::status::{NodeState, StatusReport};

/// What the API may ask of the actors.
#[derive(Clone)]
pub struct Control {
    pub confirm: Recipient<Confirm>,
    /// Per folder.
    pub retry: HashMap<String, Recipient<RetryNow>>,
}

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
    web::block(move || state.snapshot()).await.map_err(actix_web::error::ErrorInternalServerError)
}

async fn status(state: web::Data<Arc<NodeState>>) -> actix_web::Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(snapshot(&state).await?))
}

async fn metrics(state: web::Data<Arc<NodeState>>) -> actix_web::Result<HttpResponse> {
    let report = snapshot(&state).await?;
    Ok(HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(prometheus_text(&report)))
}

async fn page() -> HttpResponse {
    HttpResponse::Ok().content_type("text/html; charset=utf-8").body(PAGE)
}

/// Renders the report in the Prometheus text exposition format.
pub fn prometheus_text(r: &StatusReport) -> String {
    let mut out = String::new();
    let mut family = |name: &str, help: &str, kind: &str, samples: Vec<(String, u64)>| {
        let _ = writeln!(out, "# HELP syncnode_{name} {help}\n# TYPE syncnode_{name} {kind}");
        for (labels, v) in samples {
            if labels.is_empty() {
                let _ = writeln!(out, "syncnode_{name} {v}");
            } else {
                let _ = writeln!(out, "syncnode_{name}{{{labels}}} {v}");
            }
        }
    };
    let per_folder = |f: &dyn Fn(&crate::actors::status::FolderReport) -> u64| -> Vec<(String, u64)> {
        r.folders.iter().map(|x| (format!("folder=\"{}\"", x.id), f(x))).collect()
    };
    family("folder_files", "Files and directories in the folder.", "gauge", per_folder(&|f| f.local_files));
    family("folder_bytes", "Bytes of file data in the folder.", "gauge", per_folder(&|f| f.local_bytes));
    family("folder_need_files", "Files still to pull.", "gauge", per_folder(&|f| f.need_files));
    family("folder_need_bytes", "Bytes still to pull.", "gauge", per_folder(&|f| f.need_bytes));
    family("pulls_total", "Files and directories pulled from peers.", "counter", per_folder(&|f| f.pulls));
    family("conflicts_total", "Conflicts resolved (a copy kept).", "counter", per_folder(&|f| f.conflicts));
    family("errors_total", "Failed pulls (retried).", "counter", per_folder(&|f| f.errors));
    family(
        "folder_error",
        "1 while the folder is in state error (root gone, folder emptied, or paths that cannot be pulled).",
        "gauge",
        per_folder(&|f| u64::from(f.state == "error")),
    );
    family(
        "folder_failed_paths",
        "Paths whose last pull failed, waiting for a retry.",
        "gauge",
        per_folder(&|f| f.failed_paths),
    );
    family(
        "folder_need_window",
        "Needs the Puller holds in memory now (the rest wait in the index).",
        "gauge",
        per_folder(&|f| f.need_window),
    );
    family(
        "folder_need_window_peak",
        "The most needs the Puller ever held in memory.",
        "gauge",
        per_folder(&|f| f.need_window_peak),
    );
    family(
        "folder_unreadable_paths",
        "Local files that could not be read (skipped, never taken for deleted).",
        "gauge",
        per_folder(&|f| f.unreadable_paths),
    );
    family(
        "reused_bytes_total",
        "File bytes taken from local files instead of the network.",
        "counter",
        per_folder(&|f| f.bytes_reused),
    );
    family(
        "versions_files",
        "Versions kept in the folder's version store.",
        "gauge",
        per_folder(&|f| f.versions_files),
    );
    family(
        "versions_bytes",
        "Bytes of the versions kept in the folder's version store.",
        "gauge",
        per_folder(&|f| f.versions_bytes),
    );
    family(
        "local_changes",
        "Receive-only folders: paths changed here and not announced.",
        "gauge",
        per_folder(&|f| f.local_changes),
    );
    family("remote_changes", "Send-only folders: peer changes not taken.", "gauge", per_folder(&|f| f.remote_changes));
    family(
        "wire_saved_bytes_total",
        "File bytes from peers that rsync deltas and compression kept off the wire.",
        "counter",
        per_folder(&|f| f.bytes_saved_on_wire),
    );
    family(
        "actor_thread_stall_max_ms",
        "The longest the actor thread (shared by every actor and the signal handler) was held past a timer, in ms.",
        "gauge",
        vec![(String::new(), r.actor_stall_max_ms)],
    );
    let connected = r.peers.iter().filter(|p| p.connected).count() as u64;
    family("peers_connected", "Peers connected now.", "gauge", vec![(String::new(), connected)]);
    let per_peer = |f: &dyn Fn(&crate::actors::status::PeerReport) -> u64| -> Vec<(String, u64)> {
        r.peers.iter().map(|p| (format!("peer=\"{}\"", p.device_id), f(p))).collect()
    };
    family("peer_bytes_in_total", "Protocol bytes received from the peer.", "counter", per_peer(&|p| p.bytes_in));
    family("peer_bytes_out_total", "Protocol bytes sent to the peer.", "counter", per_peer(&|p| p.bytes_out));
    family(
        "peer_refused_records_total",
        "Records from the peer refused (their batch not applied).",
        "counter",
        per_peer(&|p| p.refused_records),
    );
    family(
        "peer_refused_requests_total",
        "Chunk requests from the peer refused.",
        "counter",
        per_peer(&|p| p.refused_requests),
    );
    family(
        "peer_protocol_violations_total",
        "Times the peer broke the protocol and was cut off.",
        "counter",
        per_peer(&|p| p.protocol_violations),
    );
    family(
        "peer_failed_fetches_total",
        "Our chunk requests to the peer that failed (refused, timed out, connection lost).",
        "counter",
        per_peer(&|p| p.failed_fetches),
    );
    family(
        "peer_needs_admitted",
        "Needs charged to the peer in the pull queues now (queued, running or waiting to retry).",
        "gauge",
        per_peer(&|p| p.needs_admitted),
    );
    family(
        "peer_needs_held",
        "Needs of the peer held in the index until its need budget frees.",
        "gauge",
        per_peer(&|p| p.needs_held),
    );
    out
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
