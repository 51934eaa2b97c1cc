//! One-way folders through the API (`store::changes`, `actors::index::modes`): `GET /rest/changes[?folder=ID]`
//! lists what differs from the cluster (receive-only: local changes; send-only: peer changes not
//! taken), `POST /rest/revert` and `POST /rest/override` with `{"folder": ID}` settle them.

use std::sync::Arc;

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};

use crate::actors::messages::{Control, Override, Revert};
use crate::actors::status::NodeState;
use crate::config::FolderMode;
use crate::store::changes::{listed, Divergent};

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
    let changes = web::block(move || -> anyhow::Result<Vec<FolderChange>> {
        let me = state.device_id.short();
        let mut out = Vec::new();
        for (c, _) in state.folders.iter().filter(|(c, _)| folder.as_ref().is_none_or(|f| &c.id == f)) {
            let side = if c.mode == FolderMode::SendOnly { "remote" } else { "local" };
            for change in listed(&state.store, &c.id, c.mode, me)? {
                out.push(FolderChange { folder: c.id.clone(), side: side.into(), change });
            }
        }
        Ok(out)
    })
    .await
    .map_err(actix_web::error::ErrorInternalServerError)?
    .map_err(actix_web::error::ErrorInternalServerError)?;
    Ok(HttpResponse::Ok().json(changes))
}

async fn settle<M>(to: &actix::Recipient<M>, msg: M) -> HttpResponse
where
    M: actix::Message<Result = Result<usize, String>> + Send + 'static,
{
    match to.send(msg).await {
        Ok(Ok(paths)) => HttpResponse::Ok().json(Settled { paths }),
        Ok(Err(e)) => error(actix_web::http::StatusCode::BAD_REQUEST, e),
        Err(e) => error(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

pub async fn revert(control: web::Data<Control>, body: web::Json<FolderRequest>) -> HttpResponse {
    settle(&control.revert, Revert { folder: body.into_inner().folder }).await
}

pub async fn override_peers(control: web::Data<Control>, body: web::Json<FolderRequest>) -> HttpResponse {
    settle(&control.override_, Override { folder: body.into_inner().folder }).await
}
