//! `syncnode status`: asks the running node's local API and prints its folders and peers as a table
//! (or the JSON as it came). `syncnode confirm` and `syncnode retry` go through the same API.

use anyhow::{anyhow, Context, Result};

use crate::actors::status::StatusReport;
use crate::api::ControlReply;
use crate::config::Config;

/// The running node's API address.
fn api_host(config: &Config) -> Result<std::net::SocketAddr> {
    let address = config.api_listen.ok_or_else(|| anyhow!("node.api_listen is off in the config; no node to ask"))?;
    Ok(if address.ip().is_unspecified() {
        std::net::SocketAddr::new([127, 0, 0, 1].into(), address.port())
    } else {
        address
    })
}

/// `POST /rest/folder/<action>?folder=ID`, printing the node's answer.
pub fn control(config: &Config, action: &str, folder: &str) -> Result<()> {
    let host = api_host(config)?;
    let url = format!("http://{host}/rest/folder/{action}");
    let response = ureq::post(&url).query("folder", folder).config().http_status_as_error(false).build().send_empty();
    let mut response = response.map_err(|e| anyhow!("no node is running at {host} ({e})"))?;
    let body = response.body_mut().read_to_string().context("reading the node's answer")?;
    let reply: ControlReply =
        serde_json::from_str(&body).with_context(|| format!("unexpected answer from the node: {body}"))?;
    if !reply.ok {
        return Err(anyhow!("{}", reply.message));
    }
    println!("{}", reply.message);
    Ok(())
}

pub fn print(config: &Config, json: bool) -> Result<()> {
    let host = api_host(config)?;
    let url = format!("http://{host}/rest/status");
    let mut response = ureq::get(&url).call().map_err(|e| anyhow!("no node is running at {host} ({e})"))?;
    let body = response.body_mut().read_to_string().context("reading the node's answer")?;
    if json {
        println!("{body}");
        return Ok(());
    }
    let report: StatusReport = serde_json::from_str(&body).context("the node's answer is not a status report")?;
    println!("{} ({})", report.name, report.device_id);
    println!();
    println!("{:<12} {:<9} {:>8} {:>12} {:>12}  PATH", "FOLDER", "STATE", "FILES", "SIZE", "NEEDED");
    for f in &report.folders {
        println!(
            "{:<12} {:<9} {:>8} {:>12} {:>12}  {}",
            f.id,
            f.state,
            f.local_files,
            human(f.local_bytes),
            human(f.need_bytes),
            f.path
        );
        if let Some(error) = &f.error {
            println!("{:<12} error: {error}", "");
        }
        for e in &f.read_errors {
            println!("{:<12} cannot read {}: {}", "", e.path, e.reason);
        }
        for e in &f.pull_errors {
            println!("{:<12} cannot pull {} ({:?}, {} attempts): {}", "", e.path, e.kind, e.attempts, e.reason);
        }
    }
    println!();
    println!("{:<16} {:<9} {:<22} {:>12} {:>12}  DEVICE", "PEER", "STATE", "ADDRESS", "IN", "OUT");
    for p in &report.peers {
        let state = if p.connected { "connected" } else { "offline" };
        println!(
            "{:<16} {:<9} {:<22} {:>12} {:>12}  {}",
            p.name,
            state,
            p.address,
            human(p.bytes_in),
            human(p.bytes_out),
            p.device_id
        );
    }
    Ok(())
}

fn human(n: u64) -> String {
    bytesize::ByteSize(n).to_string()
}
