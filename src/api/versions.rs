//! `GET /rest/versions` and `POST /rest/versions/restore`: the version stores of the node's
//! folders (`fs::versions`), listed and restored through the running node, whose watcher then
//! sees the restored file as a local change. The store's disk work runs on a blocking thread.
//!
//! - `GET /rest/versions[?folder=ID][&path=FILE][&limit=N]`: a JSON array, newest first, of
//!   `{folder, path, time, time_ms, size, reason: "deleted"|"replaced", by, stored}`.
//! - `POST /rest/versions/restore` with `{"folder": ID, "path": FILE, "at": TIME?}`: the restore's
//!   outcome `{path, version, conflict_copy, unchanged}`; 404 when no version matches.

use std::sync::Arc;

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};

use crate::actors::status::NodeState;
use crate::core::versioning::parse_at;
use crate::fs::versions::{Restored, Version, VersionError, VersionStore};

/// A version with the folder it belongs to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FolderVersion {
    pub folder: String,
    #[serde(flatten)]
    pub version: Version,
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    pub folder: Option<String>,
    pub path: Option<String>,
    /// Only the newest this many.
    pub limit: Option<usize>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RestoreRequest {
    pub folder: String,
    pub path: String,
    #[serde(default)]
    pub at: Option<String>,
}

/// Why a list or restore failed, with the HTTP status it maps to.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("no folder `{0}`")]
    NoFolder(String),
    #[error("`{0}` is not a time (write e.g. 2026-11-29T19:01:02Z, as `versions list` prints it)")]
    BadTime(String),
    #[error(transparent)]
    Version(#[from] VersionError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl RequestError {
    fn status(&self) -> actix_web::http::StatusCode {
        use actix_web::http::StatusCode;
        match self {
            RequestError::NoFolder(_) | RequestError::Version(VersionError::NotFound { .. }) => StatusCode::NOT_FOUND,
            RequestError::BadTime(_) | RequestError::Version(VersionError::Unsafe(_)) => StatusCode::BAD_REQUEST,
            RequestError::Io(e) if e.kind() == std::io::ErrorKind::InvalidInput => StatusCode::BAD_REQUEST,
            RequestError::Version(VersionError::IsDirectory(_)) => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The versions of the chosen folders (all when `folder` is `None`), newest first.
pub fn list<'a>(
    stores: impl IntoIterator<Item = (&'a str, &'a VersionStore)>,
    folder: Option<&str>,
    path: Option<&str>,
) -> Result<Vec<FolderVersion>, RequestError> {
    let mut out = Vec::new();
    let mut found = false;
    for (id, store) in stores {
        if folder.is_some_and(|f| f != id) {
            continue;
        }
        found = true;
        out.extend(store.list(path)?.into_iter().map(|version| FolderVersion { folder: id.to_string(), version }));
    }
    if let (Some(f), false) = (folder, found) {
        return Err(RequestError::NoFolder(f.to_string()));
    }
    out.sort_by_key(|v| std::cmp::Reverse(v.version.time_ms));
    Ok(out)
}

/// Restores one version (the newest, or the newest kept at or before `at`).
pub fn restore(
    store: &VersionStore,
    path: &str,
    at: Option<&str>,
    me: crate::core::ShortId,
) -> Result<Restored, RequestError> {
    let at = match at.filter(|t| !t.trim().is_empty()) {
        Some(text) => Some(parse_at(text).ok_or_else(|| RequestError::BadTime(text.to_string()))?),
        None => None,
    };
    Ok(store.restore(path, at, me)?)
}

fn failure(e: RequestError) -> HttpResponse {
    HttpResponse::build(e.status()).json(serde_json::json!({ "error": e.to_string() }))
}

pub async fn get(state: web::Data<Arc<NodeState>>, query: web::Query<ListQuery>) -> actix_web::Result<HttpResponse> {
    let state = state.get_ref().clone();
    let query = query.into_inner();
    let result = web::block(move || {
        let stores = state.versions.iter().map(|(id, s)| (id.as_str(), s.as_ref()));
        let mut versions = list(stores, query.folder.as_deref(), query.path.as_deref())?;
        versions.truncate(query.limit.unwrap_or(usize::MAX));
        Ok::<_, RequestError>(versions)
    })
    .await
    .map_err(actix_web::error::ErrorInternalServerError)?;
    Ok(match result {
        Ok(versions) => HttpResponse::Ok().json(versions),
        Err(e) => failure(e),
    })
}

pub async fn post_restore(
    state: web::Data<Arc<NodeState>>,
    body: web::Json<RestoreRequest>,
) -> actix_web::Result<HttpResponse> {
    let state = state.get_ref().clone();
    let request = body.into_inner();
    let result = web::block(move || {
        let store =
            state.versions.get(&request.folder).ok_or_else(|| RequestError::NoFolder(request.folder.clone()))?;
        restore(store, &request.path, request.at.as_deref(), state.device_id.short())
    })
    .await
    .map_err(actix_web::error::ErrorInternalServerError)?;
    Ok(match result {
        Ok(restored) => HttpResponse::Ok().json(restored),
        Err(e) => failure(e),
    })
}
