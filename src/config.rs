//! Settings: built-in defaults < TOML file < `SYNCNODE_<SECTION>__<KEY>` environment < flags,
//! merged with the `config` crate and checked here, so that a bad file fails with the file and the
//! key named (exit 2) instead of a node that runs on a guess.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::core::DeviceId;

/// A config problem: the CLI reports it and exits with status 2.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: {message}")]
pub struct ConfigError {
    /// The file (or "environment", or "command line") the bad value came from.
    pub source_name: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(source_name: impl Into<String>, message: impl Into<String>) -> Self {
        Self { source_name: source_name.into(), message: message.into() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FolderMode {
    SendReceive,
    SendOnly,
    ReceiveOnly,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Zstd,
    Gzip,
}

#[derive(Debug, Clone)]
pub struct FolderConfig {
    pub id: String,
    pub path: PathBuf,
    pub mode: FolderMode,
}

#[derive(Debug, Clone)]
pub struct PeerConfig {
    pub device_id: Option<DeviceId>,
    pub address: Option<String>,
}

/// The validated settings a node runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub name: String,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub api_listen: Option<SocketAddr>,
    pub folders: Vec<FolderConfig>,
    pub chunk_size: u32,
    pub rescan_interval: Duration,
    pub debounce: Duration,
    pub compression: Compression,
    /// How long a delete is remembered (and passed on) before its record is purged.
    pub tombstone_ttl: Duration,
    pub mdns: bool,
    pub peers: Vec<PeerConfig>,
    /// The file the settings came from, if any (for messages).
    pub file: Option<PathBuf>,
}

/// Overrides from the command line (the seed-compatible flags).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub sync_folder: Option<PathBuf>,
    pub port: Option<u16>,
    pub chunk_size_kib: Option<u32>,
    pub sync_interval: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub peers: Vec<String>,
    pub no_mdns: bool,
}

// ---- raw shape of the file, as serde sees it -------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    node: RawNode,
    #[serde(default)]
    folder: Vec<RawFolder>,
    sync: RawSync,
    discovery: RawDiscovery,
    #[serde(default)]
    peer: Vec<RawPeer>,
    security: RawSecurity,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: String,
    data_dir: String,
    listen: String,
    api_listen: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFolder {
    id: String,
    path: String,
    #[serde(default = "default_mode")]
    mode: String,
}

fn default_mode() -> String {
    "send-receive".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSync {
    chunk_size: String,
    rescan_interval: String,
    debounce: String,
    compression: String,
    tombstone_ttl: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDiscovery {
    mdns: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    #[serde(default)]
    device_id: Option<String>,
    #[serde(default)]
    address: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecurity {
    trust: String,
    /// Accepted so configs written for the shared-key mode parse; that mode is refused above.
    #[allow(dead_code)]
    network_key: String,
}

/// Every key the file may hold, by section; arrays of tables are listed by their element keys.
const KNOWN_KEYS: &[(&str, &[&str])] = &[
    ("node", &["name", "data_dir", "listen", "api_listen"]),
    ("folder", &["id", "path", "mode"]),
    ("sync", &["chunk_size", "rescan_interval", "debounce", "compression", "tombstone_ttl"]),
    ("discovery", &["mdns"]),
    ("peer", &["device_id", "address"]),
    ("security", &["trust", "network_key"]),
];

pub const DEFAULT_PORT: u16 = 50051;

fn default_data_dir() -> String {
    match std::env::var_os("HOME") {
        Some(home) => Path::new(&home).join(".local/state/syncnode").display().to_string(),
        None => "syncnode-data".into(),
    }
}

fn default_name() -> String {
    std::fs::read_to_string("/etc/hostname").map(|s| s.trim().to_string()).ok().filter(|s| !s.is_empty()).unwrap_or_else(|| "syncnode".into())
}

impl Config {
    /// Loads and validates the settings. `file` may be absent when flags alone describe the node.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let file_name = file.map(|f| f.display().to_string()).unwrap_or_else(|| "defaults".into());
        let text = match file {
            Some(path) => Some(std::fs::read_to_string(path).map_err(|e| ConfigError::new(&file_name, format!("cannot read the config file: {e}")))?),
            None => None,
        };
        check_env_keys()?;
        let env = config::Environment::with_prefix("SYNCNODE").prefix_separator("_").separator("__").try_parsing(true);
        let base = file.and_then(|f| f.parent()).map(Path::to_path_buf).unwrap_or_default();
        let mut config = Self::parse(text.as_deref(), Some(env), &file_name, &base)?;
        config.file = file.map(Path::to_path_buf);
        config.apply(overrides)?;
        config.check_paths()?;
        Ok(config)
    }

    /// The settings in a TOML text over the defaults, checked, with relative paths taken from
    /// `base`; no environment, flags or disk checks. What `load` does with a file's text, for
    /// callers that hold the text (the config fuzz target).
    pub fn from_toml(text: &str, file_name: &str, base: &Path) -> Result<Config, ConfigError> {
        Self::parse(Some(text), None, file_name, base)
    }

    fn parse(text: Option<&str>, env: Option<config::Environment>, file_name: &str, base: &Path) -> Result<Config, ConfigError> {
        let mut builder = config::Config::builder()
            .set_default("node.name", default_name())
            .and_then(|b| b.set_default("node.data_dir", default_data_dir()))
            .and_then(|b| b.set_default("node.listen", format!("0.0.0.0:{DEFAULT_PORT}")))
            .and_then(|b| b.set_default("node.api_listen", "127.0.0.1:8384"))
            .and_then(|b| b.set_default("sync.chunk_size", "64KiB"))
            .and_then(|b| b.set_default("sync.rescan_interval", "1m"))
            .and_then(|b| b.set_default("sync.debounce", "20ms"))
            .and_then(|b| b.set_default("sync.compression", "zstd"))
            .and_then(|b| b.set_default("sync.tombstone_ttl", "30d"))
            .and_then(|b| b.set_default("discovery.mdns", true))
            .and_then(|b| b.set_default("security.trust", "listed"))
            .and_then(|b| b.set_default("security.network_key", ""))
            .map_err(|e| ConfigError::new("defaults", e.to_string()))?;
        if let Some(text) = text {
            check_file_keys(text, file_name)?;
            builder = builder.add_source(config::File::from_str(text, config::FileFormat::Toml));
        }
        if let Some(env) = env {
            builder = builder.add_source(env);
        }
        let raw: Raw = builder
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigError::new(file_name, format!("bad value: {e}")))?;
        validate(raw, file_name, base)
    }

    fn apply(&mut self, o: &Overrides) -> Result<(), ConfigError> {
        let flag = |msg: String| ConfigError::new("command line", msg);
        if let Some(dir) = &o.sync_folder {
            let path = absolute(dir, Path::new(""));
            match self.folders.iter_mut().find(|f| f.id == "default") {
                Some(f) => f.path = path,
                None => self.folders.push(FolderConfig { id: "default".into(), path, mode: FolderMode::SendReceive }),
            }
        }
        if let Some(port) = o.port {
            self.listen.set_port(port);
        }
        if let Some(kib) = o.chunk_size_kib {
            self.chunk_size = check_chunk_size(kib as u64 * 1024).map_err(|m| flag(format!("--chunk-size: {m}")))?;
        }
        if let Some(interval) = &o.sync_interval {
            self.rescan_interval = parse_duration(interval).map_err(|m| flag(format!("--sync-interval: {m}")))?;
        }
        if let Some(dir) = &o.data_dir {
            self.data_dir = absolute(dir, Path::new(""));
        }
        for spec in &o.peers {
            self.peers.push(parse_peer_flag(spec).map_err(|m| flag(format!("--peer {spec}: {m}")))?);
        }
        if o.no_mdns {
            self.mdns = false;
        }
        Ok(())
    }

    /// A folder that does not exist is a config error: a node never reads a missing (unmounted)
    /// folder as "everything was deleted". The data dir must lie outside every folder.
    fn check_paths(&self) -> Result<(), ConfigError> {
        let source = self.file.as_ref().map(|f| f.display().to_string()).unwrap_or_else(|| "command line".into());
        if self.folders.is_empty() {
            return Err(ConfigError::new(source, "no [[folder]] configured (or give --sync-folder DIR)"));
        }
        let data_dir = normalize(&self.data_dir);
        for (i, folder) in self.folders.iter().enumerate() {
            if !folder.path.is_dir() {
                return Err(ConfigError::new(
                    &source,
                    format!("folder[{i}].path: `{}` does not exist or is not a directory", folder.path.display()),
                ));
            }
            let root = normalize(&folder.path);
            if data_dir.starts_with(&root) {
                return Err(ConfigError::new(
                    &source,
                    format!("node.data_dir: `{}` lies inside synced folder `{}`", self.data_dir.display(), folder.id),
                ));
            }
        }
        Ok(())
    }

    pub fn folder(&self, id: &str) -> Option<&FolderConfig> {
        self.folders.iter().find(|f| f.id == id)
    }
}

fn normalize(path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|_| path.to_path_buf())
}

fn absolute(path: &Path, base: &Path) -> PathBuf {
    let joined = if path.is_absolute() { path.to_path_buf() } else { base.join(path) };
    if joined.is_absolute() {
        joined
    } else {
        std::env::current_dir().map(|d| d.join(&joined)).unwrap_or(joined)
    }
}

fn validate(raw: Raw, file: &str, base: &Path) -> Result<Config, ConfigError> {
    let err = |key: &str, msg: String| ConfigError::new(file, format!("{key}: {msg}"));
    let listen = raw.node.listen.parse::<SocketAddr>().map_err(|e| err("node.listen", format!("`{}`: {e}", raw.node.listen)))?;
    let api_listen = match raw.node.api_listen.trim() {
        "" => None,
        s => Some(s.parse::<SocketAddr>().map_err(|e| err("node.api_listen", format!("`{s}`: {e}")))?),
    };
    let mut folders = Vec::new();
    for (i, f) in raw.folder.into_iter().enumerate() {
        if f.id.is_empty() || f.id.contains(['/', '\0']) {
            return Err(err(&format!("folder[{i}].id"), format!("`{}` is not a folder id", f.id)));
        }
        if folders.iter().any(|g: &FolderConfig| g.id == f.id) {
            return Err(err(&format!("folder[{i}].id"), format!("`{}` appears twice", f.id)));
        }
        let mode = match f.mode.as_str() {
            "send-receive" => FolderMode::SendReceive,
            "send-only" => FolderMode::SendOnly,
            "receive-only" => FolderMode::ReceiveOnly,
            other => return Err(err(&format!("folder[{i}].mode"), format!("`{other}`: expected send-receive, send-only or receive-only"))),
        };
        folders.push(FolderConfig { id: f.id, path: absolute(Path::new(&f.path), base), mode });
    }
    let chunk_size = bytesize_of(&raw.sync.chunk_size)
        .and_then(check_chunk_size)
        .map_err(|m| err("sync.chunk_size", m))?;
    let rescan_interval = parse_duration(&raw.sync.rescan_interval).map_err(|m| err("sync.rescan_interval", m))?;
    let debounce = parse_duration(&raw.sync.debounce).map_err(|m| err("sync.debounce", m))?;
    let tombstone_ttl = parse_duration(&raw.sync.tombstone_ttl).map_err(|m| err("sync.tombstone_ttl", m))?;
    let compression = match raw.sync.compression.as_str() {
        "none" => Compression::None,
        "zstd" => Compression::Zstd,
        "gzip" => Compression::Gzip,
        other => return Err(err("sync.compression", format!("`{other}`: expected none, zstd or gzip"))),
    };
    // Only "listed" peers are trusted (the TLS verifiers check their device IDs).
    match raw.security.trust.as_str() {
        "listed" => {}
        // The shared-key mode (any peer proving it holds network_key) is part of the contract but
        // not built yet; refusing it is better than a node that silently trusts no one.
        "network-key" => {
            return Err(err("security.trust", "\"network-key\" is not supported by this version; use \"listed\" with [[peer]] device_id entries".into()))
        }
        other => return Err(err("security.trust", format!("`{other}`: expected listed or network-key"))),
    }
    let mut peers = Vec::new();
    for (i, p) in raw.peer.into_iter().enumerate() {
        let device_id = match p.device_id {
            Some(id) => Some(id.parse::<DeviceId>().map_err(|e| err(&format!("peer[{i}].device_id"), e.to_string()))?),
            None => None,
        };
        if device_id.is_none() {
            return Err(err(&format!("peer[{i}].device_id"), "required under trust = \"listed\"".into()));
        }
        if let Some(a) = &p.address {
            check_address(a).map_err(|m| err(&format!("peer[{i}].address"), m))?;
        }
        peers.push(PeerConfig { device_id, address: p.address });
    }
    Ok(Config {
        name: raw.node.name,
        data_dir: absolute(Path::new(&raw.node.data_dir), base),
        listen,
        api_listen,
        folders,
        chunk_size,
        rescan_interval,
        debounce,
        compression,
        tombstone_ttl,
        mdns: raw.discovery.mdns,
        peers,
        file: None,
    })
}

fn check_address(address: &str) -> Result<(), String> {
    match address.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(format!("`{address}`: expected HOST:PORT")),
    }
}

fn parse_peer_flag(spec: &str) -> Result<PeerConfig, String> {
    // A bare HOST:PORT would need trust = "network-key", which this version refuses.
    let (id, address) = spec.split_once('@').ok_or("expected DEVICE_ID@HOST:PORT")?;
    check_address(address)?;
    let device_id = id.parse::<DeviceId>().map_err(|e| e.to_string())?;
    Ok(PeerConfig { device_id: Some(device_id), address: Some(address.into()) })
}

fn bytesize_of(text: &str) -> Result<u64, String> {
    text.trim().parse::<bytesize::ByteSize>().map(|b| b.as_u64()).map_err(|e| format!("`{text}`: {e}"))
}

fn check_chunk_size(bytes: u64) -> Result<u32, String> {
    // FastCDC's limits: the average must lie in 256 B ..= 4 MiB; min and max are derived from it.
    if !(1024..=4 * 1024 * 1024).contains(&bytes) {
        return Err(format!("{bytes} bytes: must be between 1KiB and 4MiB"));
    }
    Ok(bytes as u32)
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| format!("`{text}`: {e} (write e.g. \"500ms\", \"1m\")"))
}

fn check_file_keys(text: &str, file: &str) -> Result<(), ConfigError> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError::new(file, format!("not valid TOML: {e}")))?;
    let known: BTreeMap<&str, &[&str]> = KNOWN_KEYS.iter().copied().collect();
    for (section, value) in &table {
        let Some(keys) = known.get(section.as_str()) else {
            return Err(ConfigError::new(file, format!("unknown key `{section}`")));
        };
        let is_array = section == "folder" || section == "peer";
        let tables: Vec<&toml::Table> = match value {
            toml::Value::Table(t) if !is_array => vec![t],
            toml::Value::Array(items) if is_array => items.iter().filter_map(|v| v.as_table()).collect(),
            _ => {
                let shape = if is_array { "an array of tables [[...]]" } else { "a table [...]" };
                return Err(ConfigError::new(file, format!("`{section}` must be {shape}")));
            }
        };
        for t in tables {
            if let Some(key) = t.keys().find(|k| !keys.contains(&k.as_str())) {
                return Err(ConfigError::new(file, format!("unknown key `{section}.{key}`")));
            }
        }
    }
    Ok(())
}

fn check_env_keys() -> Result<(), ConfigError> {
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        let Some(rest) = name.strip_prefix("SYNCNODE_") else { continue };
        let lower = rest.to_lowercase();
        let ok = lower.split_once("__").is_some_and(|(section, key)| {
            KNOWN_KEYS.iter().any(|(s, keys)| *s == section && *s != "folder" && *s != "peer" && keys.contains(&key))
        });
        if !ok {
            return Err(ConfigError::new("environment", format!("unknown key `{name}` (expected SYNCNODE_<SECTION>__<KEY>, e.g. SYNCNODE_NODE__LISTEN)")));
        }
    }
    Ok(())
}

/// The commented starter config that `syncnode init` writes.
pub fn starter_config(name: &str, data_dir: &Path, folder: &Path, port: u16) -> String {
    format!(
        r#"# syncnode configuration (written by `syncnode init`). Every key is documented in
# config/example-node.toml; environment variables SYNCNODE_<SECTION>__<KEY> and flags override it.

[node]
name = "{name}"
data_dir = "{data_dir}"      # index and TLS identity; outside every synced folder
listen = "0.0.0.0:{port}"    # peer-to-peer gRPC over mutual TLS
api_listen = "127.0.0.1:{api}"   # local status API and page; "" turns it off

[[folder]]
id = "default"
path = "{folder}"
mode = "send-receive"

[sync]
chunk_size = "64KiB"
rescan_interval = "1m"
debounce = "20ms"
compression = "zstd"
tombstone_ttl = "30d"

[discovery]
mdns = true

# Add each peer you trust; its ID is what `syncnode id` prints on that machine.
# [[peer]]
# device_id = "..."
# address = "192.0.2.10:50051"   # optional: without it the peer is found by mDNS

[security]
trust = "listed"
network_key = ""
"#,
        data_dir = data_dir.display(),
        folder = folder.display(),
        api = port.wrapping_add(1000).max(1024),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_named() {
        let e = check_file_keys("[sync]\nchunk_sise = \"1KiB\"\n", "n.toml").unwrap_err();
        assert_eq!(e.to_string(), "n.toml: unknown key `sync.chunk_sise`");
        let e = check_file_keys("[[folder]]\nid = \"a\"\npth = \"/x\"\n", "n.toml").unwrap_err();
        assert!(e.to_string().contains("`folder.pth`"));
        let e = check_file_keys("[colour]\n", "n.toml").unwrap_err();
        assert!(e.to_string().contains("`colour`"));
    }

    #[test]
    fn sizes_and_durations_parse() {
        assert_eq!(bytesize_of("64KiB").unwrap(), 65536);
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert!(parse_duration("soon").is_err());
        assert!(check_chunk_size(10).is_err());
    }

    #[test]
    fn the_starter_config_parses_from_its_text() {
        let text = starter_config("n1", Path::new("/var/lib/n1"), Path::new("/srv/sync"), 50051);
        let config = Config::from_toml(&text, "n1.toml", Path::new("/etc")).unwrap();
        assert_eq!((config.name.as_str(), config.chunk_size, config.compression), ("n1", 65536, Compression::Zstd));
        assert_eq!(config.folders[0].path, Path::new("/srv/sync"));
        let relative = text.replace("/srv/sync", "sync");
        assert_eq!(Config::from_toml(&relative, "n1.toml", Path::new("/etc")).unwrap().folders[0].path, Path::new("/etc/sync"));
        assert!(Config::from_toml("[node]\nnmae = \"x\"\n", "n1.toml", Path::new("/etc")).is_err());
    }

    #[test]
    fn peer_flags_need_a_device_id() {
        let id = crate::core::DeviceId([7; 32]).to_string();
        assert!(parse_peer_flag(&format!("{id}@127.0.0.1:5000")).is_ok());
        assert!(parse_peer_flag("127.0.0.1:5000").is_err());
        assert!(parse_peer_flag(&format!("{id}@nowhere")).is_err());
    }
}
