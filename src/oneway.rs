//! `syncnode changes`, `revert` and `override`: one-way folders and their peers, through the
//! running node's API (these act on the index, which only the node may write). `changes` lists what
//! differs (receive-only: local changes; send-only: peer changes not taken); `revert` gives a
//! receive-only folder's local changes back to the cluster (the files go to the version store, so
//! `versions restore` can bring them back); `override` makes a send-only folder's state win on
//! every peer.

use anyhow::{anyhow, Context, Result};

use crate::api::modes::{FolderChange, FolderRequest, Settled};
use crate::config::Config;
use crate::versions::{agent, answer, base_url, Answer};

fn node(config: &Config) -> Result<String> {
    base_url(config).ok_or_else(|| anyhow!("node.api_listen is off in the config; this needs the running node's API"))
}

fn body(a: Answer, base: &str) -> Result<String> {
    match a {
        Answer::Body(b) => Ok(b),
        Answer::NoNode => Err(anyhow!("no node is running at {base}; start it first")),
    }
}

pub fn changes(config: &Config, folder: Option<&str>, json: bool) -> Result<()> {
    let base = node(config)?;
    let mut request = agent().get(format!("{base}/rest/changes"));
    if let Some(f) = folder {
        request = request.query("folder", f);
    }
    let text = body(answer(request.call())?, &base)?;
    let list: Vec<FolderChange> = serde_json::from_str(&text).context("the node's answer is not a list of changes")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    if list.is_empty() {
        println!("no changes: every one-way folder matches its peers");
        return Ok(());
    }
    println!("{:<12} {:<7} {:<9} {:<10} {:>10}  {:<8} PATH", "FOLDER", "SIDE", "KIND", "CHANGE", "SIZE", "BY");
    for c in &list {
        let change = if c.change.deleted { "deleted" } else { "changed" };
        println!(
            "{:<12} {:<7} {:<9} {:<10} {:>10}  {:<8} {}",
            c.folder,
            c.side,
            c.change.kind,
            change,
            bytesize::ByteSize(c.change.size).to_string(),
            c.change.by,
            c.change.path
        );
    }
    Ok(())
}

fn settle(config: &Config, what: &str, folder: &str) -> Result<usize> {
    let base = node(config)?;
    let request = FolderRequest { folder: folder.to_string() };
    let text = body(answer(agent().post(format!("{base}/rest/{what}")).send_json(&request))?, &base)?;
    let settled: Settled = serde_json::from_str(&text).context("unexpected answer from the node")?;
    Ok(settled.paths)
}

pub fn revert(config: &Config, folder: &str) -> Result<()> {
    let n = settle(config, "revert", folder)?;
    println!("reverted {n} local change(s) in {folder}; the cluster's versions are being pulled (the local files are kept: `syncnode versions list`)");
    Ok(())
}

pub fn override_peers(config: &Config, folder: &str) -> Result<()> {
    let n = settle(config, "override", folder)?;
    println!("re-issued {n} path(s) of {folder} above the peers' changes; they now win everywhere");
    Ok(())
}
