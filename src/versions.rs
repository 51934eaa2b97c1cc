//! `syncnode versions list|restore`: the kept versions of the config's folders. Both ask the
//! running node's local API first (it owns the folders, and may run as another user); when no node
//! answers they work on the version stores directly, which needs nothing but the config (a restore
//! made that way is found by the node's startup scan and syncs then).

use anyhow::{anyhow, bail, Context, Result};

use crate::api::versions::{list as list_stores, restore as restore_in, FolderVersion, RequestError, RestoreRequest};
use crate::config::Config;
use crate::fs::versions::{Restored, VersionStore};
use crate::net::identity::Identity;

/// What the node's API said, or that no node is there.
pub(crate) enum Answer {
    NoNode,
    Body(String),
}

pub(crate) fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(60)))
        .build()
        .into()
}

pub(crate) fn base_url(config: &Config) -> Option<String> {
    let address = config.api_listen?;
    let host = if address.ip().is_unspecified() {
        std::net::SocketAddr::new([127, 0, 0, 1].into(), address.port())
    } else {
        address
    };
    Some(format!("http://{host}"))
}

/// The body of a successful answer; an error answer becomes the error it names.
pub(crate) fn answer(result: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Result<Answer> {
    let mut response = match result {
        Ok(r) => r,
        Err(ureq::Error::Io(e))
            if matches!(e.kind(), std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound) =>
        {
            return Ok(Answer::NoNode)
        }
        Err(ureq::Error::ConnectionFailed) => return Ok(Answer::NoNode),
        Err(e) => return Err(anyhow!("the node's API did not answer: {e}")),
    };
    let status = response.status();
    let body = response.body_mut().read_to_string().context("reading the node's answer")?;
    if status.is_success() {
        return Ok(Answer::Body(body));
    }
    let message = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or(body);
    bail!("{message}")
}

fn stores(config: &Config) -> Vec<(String, VersionStore)> {
    config
        .folders
        .iter()
        .map(|f| (f.id.clone(), VersionStore::new(&f.path, f.versions_path.as_deref(), f.versioning)))
        .collect()
}

/// `versions list`: newest first, as a table or JSON.
pub fn list(config: &Config, folder: Option<&str>, path: Option<&str>, json: bool) -> Result<()> {
    let from_node = match base_url(config) {
        Some(base) => {
            let mut request = agent().get(format!("{base}/rest/versions"));
            if let Some(f) = folder {
                request = request.query("folder", f);
            }
            if let Some(p) = path {
                request = request.query("path", p);
            }
            answer(request.call())?
        }
        None => Answer::NoNode,
    };
    let versions: Vec<FolderVersion> = match from_node {
        Answer::Body(body) => serde_json::from_str(&body).context("the node's answer is not a list of versions")?,
        Answer::NoNode => {
            let stores = stores(config);
            list_stores(stores.iter().map(|(id, s)| (id.as_str(), s)), folder, path).map_err(|e| anyhow!(e))?
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&versions)?);
        return Ok(());
    }
    if versions.is_empty() {
        println!("no versions kept{}", path.map(|p| format!(" of {p}")).unwrap_or_default());
        return Ok(());
    }
    println!("{:<12} {:<25} {:>10}  {:<9} {:<8} PATH", "FOLDER", "KEPT AT (UTC)", "SIZE", "WHY", "BY");
    for v in &versions {
        let size = bytesize::ByteSize(v.version.size).to_string();
        println!(
            "{:<12} {:<25} {:>10}  {:<9} {:<8} {}",
            v.folder,
            v.version.time,
            size,
            v.version.reason.as_str(),
            v.version.by,
            v.version.path
        );
    }
    Ok(())
}

/// `versions restore`: puts a version back (through the node if one runs) and says what it did.
pub fn restore(config: &Config, folder: &str, path: &str, at: Option<&str>) -> Result<()> {
    let from_node = match base_url(config) {
        Some(base) => {
            let request =
                RestoreRequest { folder: folder.to_string(), path: path.to_string(), at: at.map(str::to_string) };
            answer(agent().post(format!("{base}/rest/versions/restore")).send_json(&request))?
        }
        None => Answer::NoNode,
    };
    let restored: Restored = match from_node {
        Answer::Body(body) => serde_json::from_str(&body).context("the node's answer is not a restore report")?,
        Answer::NoNode => {
            let f = config.folder(folder).ok_or_else(|| anyhow!(RequestError::NoFolder(folder.to_string())))?;
            let me = Identity::load(&config.data_dir)?.device_id.short();
            let store = VersionStore::new(&f.path, f.versions_path.as_deref(), f.versioning);
            let restored = restore_in(&store, path, at, me).map_err(|e| anyhow!(e))?;
            eprintln!("(no node is running: restored on disk; it syncs when the node starts)");
            restored
        }
    };
    let v = &restored.version;
    if restored.unchanged {
        println!(
            "{path} already holds the version kept at {} ({} by {}); nothing changed",
            v.time,
            v.reason.as_str(),
            v.by
        );
        return Ok(());
    }
    println!("restored {path}: the version kept at {} ({} by {})", v.time, v.reason.as_str(), v.by);
    if let Some(copy) = &restored.conflict_copy {
        println!("the file that was at {path} is kept as {copy}");
    }
    Ok(())
}
