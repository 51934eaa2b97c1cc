//! One-way folders through the API (`actors::index::modes`): `GET /rest/changes[?folder=ID]`
//! lists what differs from the cluster (receive-only: local changes; send-only: peer changes not
//! taken), `POST /rest/revert` and `POST /rest/override` with `{"folder": ID}` settle them.

use std::sync::Arc;

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};

use crate::actors::index::modes::{listed, Divergent, Override, Revert};
use crate::actors::status::NodeState;
use crate::config::FolderMode;

/// A differing path with its folder and which side changed it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FolderChange {
    pub folder: String,
    /// "local" (receive-only) or "remote" (send-only).
    pub side: String,
    #[serde(flatten)]
    pub change: Divergent,
}

#[derive(Debug, Deserialize)]
pub struct ChangesQuery {
    pub folder: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct FolderRequest {
    pub folder: String,
}

/// `{"paths": N}`: how many paths a revert or override settled.
#[derive(Debug, Serialize, Deserialize)]
pub struct Settled {
    pub paths: usize,
}

fn error(status: actix_web::http::StatusCode, message: impl std::fmt::Display) -> HttpResponse {
    HttpResponse::build(status).json(serde_json::json!({ "error": message.to_string() }))
}

pub async fn get(state: web::Data<Arc<NodeState>>, query: web::Query<ChangesQuery>) -> actix_web::Result<HttpResponse> {
    let state = state.get_ref().clone();
    let folder = query.into_inner().folder;
    if let Some(f) = &folder {
        if !state.folders.iter().any(|(c, _)| &c.id == f) {
            return Ok(error(actix_web::http::StatusCode::NOT_FOUND, format!("no folder `{f}`")));
        }
    }
    let changes = web::block(move || {
        let me = state.device_id.short();
        let chosen = state.folders.iter().filter(|(c, _)| folder.as_ref().is_none_or(|f| &c.id == f));
        chosen
            .flat_map(|(c, _)| {
                let side = if c.mode == FolderMode::SendOnly { "remote" } else { "local" };
                listed(&state.store, &c.id, c.mode, me).into_iter().map(move |change| FolderChange {
                    folder: c.id.clone(),
                    side: side.into(),
                    change,
                })
            })
            .collect::<Vec<_>>()
    })
    .await
    .map_err(actix_web::error::ErrorInternalServerError)?;
    Ok(HttpResponse::Ok().json(changes))
}

async fn settle<M>(state: &NodeState, msg: M) -> HttpResponse
where
    M: actix::Message<Result = Result<usize, String>> + Send + 'static,
    crate::actors::index::IndexActor: actix::Handler<M>,
{
    let Some(index) = state.index.get() else {
        return error(actix_web::http::StatusCode::SERVICE_UNAVAILABLE, "the node is starting");
    };
    match index.send(msg).await {
        Ok(Ok(paths)) => HttpResponse::Ok().json(Settled { paths }),
        Ok(Err(e)) => error(actix_web::http::StatusCode::BAD_REQUEST, e),
        Err(e) => error(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

pub async fn revert(state: web::Data<Arc<NodeState>>, body: web::Json<FolderRequest>) -> HttpResponse {
    settle(&state, Revert { folder: body.into_inner().folder }).await
}

pub async fn override_peers(state: web::Data<Arc<NodeState>>, body: web::Json<FolderRequest>) -> HttpResponse {
    settle(&state, Override { folder: body.into_inner().folder }).await
}
