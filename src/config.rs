//! Settings: built-in defaults < TOML file < `SYNCNODE_<SECTION>__<KEY>` environment < flags,
//! merged with the `config` crate and checked here, so that a bad file fails with the file and the
//! key named (exit 2) instead of a node that runs on a guess.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::core::versioning::{Kind as VersioningKind, Policy as VersioningPolicy};
use crate::core::{DeviceId, SharedWith};

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

/// What a folder does with the symbolic links in it (`symlinks`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SymlinkMode {
    /// Synced as links: the target text travels and peers make the same link. Never followed.
    Link,
    /// Left alone: neither announced nor made, replaced or deleted.
    Ignore,
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
    /// What is kept when a peer's change replaces or deletes a file (`core::versioning`).
    pub versioning: VersioningPolicy,
    /// Where the kept versions go; `None`: `.syncnode-versions/` at the folder's root.
    pub versions_path: Option<PathBuf>,
    /// The peers this folder is shared with (`devices`; absent: every trusted peer).
    pub devices: SharedWith,
    /// Symlinks synced as links (the default) or ignored.
    pub symlinks: SymlinkMode,
}

/// Whom this node admits (`security.trust`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// Only peers whose device ID is a configured `[[peer]]`.
    Listed,
    /// Any peer that proves, bound to its TLS session, that it holds this key.
    NetworkKey(NetworkSecret),
}

/// The shared network key. Its `Debug` never prints it, so a logged config cannot leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct NetworkSecret(String);

impl NetworkSecret {
    pub fn new(key: &str) -> Self {
        NetworkSecret(key.to_string())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for NetworkSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NetworkSecret(..)")
    }
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
    /// A scan that would delete every file of a folder holding at least this many is held for the
    /// user to confirm (0: never held).
    pub empty_folder_guard: u64,
    pub mdns: bool,
    pub peers: Vec<PeerConfig>,
    pub trust: Trust,
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
    #[serde(default)]
    devices: Option<Vec<String>>,
    #[serde(default)]
    versioning: Option<RawVersioning>,
    #[serde(default)]
    symlinks: Option<String>,
}

/// `versioning = "trash"`, or a table with `type` and the limits.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawVersioning {
    Kind(String),
    Table(RawVersioningTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVersioningTable {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    max_age: Option<String>,
    #[serde(default)]
    keep: Option<i64>,
    #[serde(default)]
    max_size: Option<String>,
    #[serde(default)]
    path: Option<String>,
}

const VERSIONING_KEYS: &[&str] = &["type", "max_age", "keep", "max_size", "path"];

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
    empty_folder_guard: i64,
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
    network_key: String,
}

/// Every key the file may hold, by section; arrays of tables are listed by their element keys.
const KNOWN_KEYS: &[(&str, &[&str])] = &[
    ("node", &["name", "data_dir", "listen", "api_listen"]),
    ("folder", &["id", "path", "mode", "devices", "versioning", "symlinks"]),
    ("sync", &["chunk_size", "rescan_interval", "debounce", "compression", "tombstone_ttl", "empty_folder_guard"]),
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
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "syncnode".into())
}

impl Config {
    /// Loads and validates the settings. `file` may be absent when flags alone describe the node.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let file_name = file.map(|f| f.display().to_string()).unwrap_or_else(|| "defaults".into());
        let text = match file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| ConfigError::new(&file_name, format!("cannot read the config file: {e}")))?,
            ),
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

    fn parse(
        text: Option<&str>,
        env: Option<config::Environment>,
        file_name: &str,
        base: &Path,
    ) -> Result<Config, ConfigError> {
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
            .and_then(|b| b.set_default("sync.empty_folder_guard", 10))
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
                None => self.folders.push(FolderConfig {
                    id: "default".into(),
                    path,
                    mode: FolderMode::SendReceive,
                    devices: SharedWith::EveryTrustedPeer,
                    versioning: VersioningPolicy::DEFAULT,
                    versions_path: None,
                    symlinks: SymlinkMode::Link,
                }),
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
            let network_key = matches!(self.trust, Trust::NetworkKey(_));
            self.peers.push(parse_peer_flag(spec, network_key).map_err(|m| flag(format!("--peer {spec}: {m}")))?);
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
            if let Some(versions) = &folder.versions_path {
                check_versions_path(&root, versions)
                    .map_err(|m| ConfigError::new(&source, format!("folder[{i}].versioning.path: {m}")))?;
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
    let listen =
        raw.node.listen.parse::<SocketAddr>().map_err(|e| err("node.listen", format!("`{}`: {e}", raw.node.listen)))?;
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
            other => {
                return Err(err(
                    &format!("folder[{i}].mode"),
                    format!("`{other}`: expected send-receive, send-only or receive-only"),
                ))
            }
        };
        let devices = match f.devices {
            None => SharedWith::EveryTrustedPeer,
            Some(list) => {
                let mut ids = std::collections::BTreeSet::new();
                for (j, text) in list.iter().enumerate() {
                    let id = text
                        .parse::<DeviceId>()
                        .map_err(|e| err(&format!("folder[{i}].devices[{j}]"), e.to_string()))?;
                    ids.insert(id);
                }
                SharedWith::Only(ids)
            }
        };
        let (versioning, versions_path) =
            versioning_of(f.versioning, base).map_err(|(key, m)| err(&format!("folder[{i}].versioning{key}"), m))?;
        let symlinks = match f.symlinks.as_deref() {
            None | Some("link") => SymlinkMode::Link,
            Some("ignore") => SymlinkMode::Ignore,
            Some(other) => {
                return Err(err(&format!("folder[{i}].symlinks"), format!("`{other}`: expected link or ignore")))
            }
        };
        folders.push(FolderConfig {
            id: f.id,
            path: absolute(Path::new(&f.path), base),
            mode,
            devices,
            versioning,
            versions_path,
            symlinks,
        });
    }
    let chunk_size =
        bytesize_of(&raw.sync.chunk_size).and_then(check_chunk_size).map_err(|m| err("sync.chunk_size", m))?;
    let rescan_interval = parse_duration(&raw.sync.rescan_interval).map_err(|m| err("sync.rescan_interval", m))?;
    let debounce = parse_duration(&raw.sync.debounce).map_err(|m| err("sync.debounce", m))?;
    let tombstone_ttl = parse_duration(&raw.sync.tombstone_ttl).map_err(|m| err("sync.tombstone_ttl", m))?;
    let empty_folder_guard = u64::try_from(raw.sync.empty_folder_guard).map_err(|_| {
        err(
            "sync.empty_folder_guard",
            format!("`{}`: expected a count of files (0 turns the guard off)", raw.sync.empty_folder_guard),
        )
    })?;
    let compression = match raw.sync.compression.as_str() {
        "none" => Compression::None,
        "zstd" => Compression::Zstd,
        "gzip" => Compression::Gzip,
        other => return Err(err("sync.compression", format!("`{other}`: expected none, zstd or gzip"))),
    };
    // "listed": the TLS verifiers admit configured device IDs only. "network-key": they admit any
    // certificate, and the peer must then prove it holds the key (net/network_key.rs).
    let trust = match raw.security.trust.as_str() {
        "listed" => Trust::Listed,
        // Surrounding whitespace is dropped, so a key pasted from a file with its newline matches.
        "network-key" => match raw.security.network_key.trim() {
            "" => {
                return Err(err(
                    "security.network_key",
                    "required under trust = \"network-key\" (better given as SYNCNODE_SECURITY__NETWORK_KEY)".into(),
                ))
            }
            key => Trust::NetworkKey(NetworkSecret::new(key)),
        },
        other => return Err(err("security.trust", format!("`{other}`: expected listed or network-key"))),
    };
    let mut peers = Vec::new();
    for (i, p) in raw.peer.into_iter().enumerate() {
        let device_id = match p.device_id {
            Some(id) => Some(id.parse::<DeviceId>().map_err(|e| err(&format!("peer[{i}].device_id"), e.to_string()))?),
            None => None,
        };
        match (&device_id, &p.address, &trust) {
            (None, _, Trust::Listed) => {
                return Err(err(&format!("peer[{i}].device_id"), "required under trust = \"listed\"".into()))
            }
            (None, None, Trust::NetworkKey(_)) => {
                return Err(err(&format!("peer[{i}]"), "give a device_id, an address, or both".into()))
            }
            _ => {}
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
        empty_folder_guard,
        mdns: raw.discovery.mdns,
        peers,
        trust,
        file: None,
    })
}

/// The versioning policy of a folder; a bad value comes back with its key (".type", ...).
fn versioning_of(
    raw: Option<RawVersioning>,
    base: &Path,
) -> Result<(VersioningPolicy, Option<PathBuf>), (String, String)> {
    let table = match raw {
        None => return Ok((VersioningPolicy::DEFAULT, None)),
        Some(RawVersioning::Kind(kind)) => {
            RawVersioningTable { kind: Some(kind), max_age: None, keep: None, max_size: None, path: None }
        }
        Some(RawVersioning::Table(t)) => t,
    };
    let kind_text = table.kind.unwrap_or_else(|| "trash".into());
    let kind = VersioningKind::parse(&kind_text)
        .ok_or_else(|| (".type".to_string(), format!("`{kind_text}`: expected none, trash, simple or staggered")))?;
    let max_age = match table.max_age.as_deref().map(str::trim) {
        None => kind.default_max_age(),
        Some("forever") => None,
        Some(text) => Some(
            parse_duration(text).map_err(|m| (".max_age".to_string(), format!("{m}, or \"forever\"")))?.as_millis()
                as u64,
        ),
    };
    let keep = match table.keep {
        None => VersioningPolicy::DEFAULT.keep,
        Some(n) if n >= 1 => n as usize,
        Some(n) => return Err((".keep".into(), format!("{n}: keep at least 1 version (or type = \"none\")"))),
    };
    let max_size = match &table.max_size {
        None => None,
        Some(text) => Some(bytesize_of(text).map_err(|m| (".max_size".to_string(), m))?),
    };
    let path = table.path.map(|p| absolute(Path::new(&p), base));
    Ok((VersioningPolicy { kind, max_age, keep, max_size }, path))
}

/// A version store elsewhere must be on the folder's filesystem (keeping a version is a hard
/// link) and must not lie inside the folder, where it would be synced (except the default place).
fn check_versions_path(root: &Path, versions: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let versions_norm = normalize(versions);
    if versions_norm.starts_with(root) && !versions_norm.starts_with(root.join(crate::core::path::VERSIONS_DIR)) {
        return Err(format!("`{}` lies inside the folder, where it would be synced", versions.display()));
    }
    // The nearest part of it that exists already tells the filesystem.
    let existing = versions
        .ancestors()
        .find(|p| p.exists())
        .ok_or_else(|| format!("`{}`: no part of it exists", versions.display()))?;
    let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).map_err(|e| format!("`{}`: {e}", p.display()));
    if dev(existing)? != dev(root)? {
        return Err(format!(
            "`{}` is not on the folder's filesystem (a version is kept by a hard link, never a copy)",
            versions.display()
        ));
    }
    Ok(())
}

fn check_address(address: &str) -> Result<(), String> {
    match address.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(format!("`{address}`: expected HOST:PORT")),
    }
}

/// `--peer DEVICE_ID@HOST:PORT`, or a bare `HOST:PORT` under trust = "network-key" (the peer
/// then proves it holds the key; whoever answers there with it is admitted).
fn parse_peer_flag(spec: &str, network_key: bool) -> Result<PeerConfig, String> {
    let Some((id, address)) = spec.split_once('@') else {
        if !network_key {
            return Err("expected DEVICE_ID@HOST:PORT (a bare HOST:PORT needs trust = \"network-key\")".into());
        }
        check_address(spec)?;
        return Ok(PeerConfig { device_id: None, address: Some(spec.into()) });
    };
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
    let table: toml::Table =
        text.parse().map_err(|e: toml::de::Error| ConfigError::new(file, format!("not valid TOML: {e}")))?;
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
            if let Some(toml::Value::Table(v)) = t.get("versioning") {
                if let Some(key) = v.keys().find(|k| !VERSIONING_KEYS.contains(&k.as_str())) {
                    return Err(ConfigError::new(file, format!("unknown key `{section}.versioning.{key}`")));
                }
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
            return Err(ConfigError::new(
                "environment",
                format!("unknown key `{name}` (expected SYNCNODE_<SECTION>__<KEY>, e.g. SYNCNODE_NODE__LISTEN)"),
            ));
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
# devices = ["..."]             # only these peers see this folder; absent: every trusted peer
# What a peer's change replaces or deletes is kept in .syncnode-versions/ for 30 days;
# `syncnode versions list` / `versions restore` bring it back. Types: none, trash, simple, staggered.
versioning = {{ type = "trash", max_age = "30d" }}
symlinks = "link"               # links travel as links (never followed); "ignore" leaves them alone

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
trust = "listed"               # or "network-key": any peer proving it holds network_key joins
network_key = ""               # better given as SYNCNODE_SECURITY__NETWORK_KEY
"#,
        data_dir = data_dir.display(),
        folder = folder.display(),
        api = port.wrapping_add(1000).max(1024),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loads `text` (with `FOLDER` replaced by an existing directory) as a config file.
    fn load_text(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("sync");
        std::fs::create_dir(&folder).unwrap();
        let file = dir.path().join("n.toml");
        std::fs::write(&file, text.replace("FOLDER", &folder.display().to_string())).unwrap();
        Config::load(Some(&file), &Overrides::default())
    }

    fn id(n: u8) -> DeviceId {
        DeviceId([n; 32])
    }

    #[test]
    fn a_folder_lists_the_devices_it_is_shared_with() {
        let text = format!("[[folder]]\nid = \"a\"\npath = \"FOLDER\"\ndevices = [\"{}\", \"{}\"]\n\n[[folder]]\nid = \"b\"\npath = \"FOLDER\"\n", id(1), id(2));
        let config = load_text(&text).unwrap();
        assert_eq!(config.folders[0].devices, SharedWith::Only([id(1), id(2)].into_iter().collect()));
        assert_eq!(config.folders[1].devices, SharedWith::EveryTrustedPeer);
    }

    #[test]
    fn symlinks_default_to_link_and_a_bad_value_names_the_file_and_key() {
        let text = "[[folder]]\nid = \"a\"\npath = \"FOLDER\"\n\n[[folder]]\nid = \"b\"\npath = \"FOLDER\"\nsymlinks = \"ignore\"\n\n[[folder]]\nid = \"c\"\npath = \"FOLDER\"\nsymlinks = \"link\"\n";
        let config = load_text(text).unwrap();
        let modes: Vec<_> = config.folders.iter().map(|f| f.symlinks).collect();
        assert_eq!(modes, vec![SymlinkMode::Link, SymlinkMode::Ignore, SymlinkMode::Link]);
        let e =
            load_text("[[folder]]\nid = \"a\"\npath = \"FOLDER\"\nsymlinks = \"follow\"\n").unwrap_err().to_string();
        assert!(e.contains("n.toml: folder[0].symlinks: `follow`: expected link or ignore"), "{e}");
        // The starter config `syncnode init` writes holds the key.
        assert!(starter_config("n", Path::new("/d"), Path::new("/f"), 22000).contains("\nsymlinks = \"link\""));
    }

    #[test]
    fn a_device_list_entry_that_is_not_an_id_names_the_file_and_key() {
        let text = format!("[[folder]]\nid = \"a\"\npath = \"FOLDER\"\ndevices = [\"{}\", \"not-an-id\"]\n", id(1));
        let e = load_text(&text).unwrap_err().to_string();
        assert!(e.contains("n.toml: folder[0].devices[1]: `not-an-id` is not a device ID"), "{e}");
    }

    #[test]
    fn network_key_trust_needs_a_key_and_accepts_address_only_peers() {
        let base =
            "[[folder]]\nid = \"a\"\npath = \"FOLDER\"\n\n[[peer]]\naddress = \"127.0.0.1:5000\"\n\n[security]\n";
        let config = load_text(&format!("{base}trust = \"network-key\"\nnetwork_key = \" s3cret-key \"\n")).unwrap();
        assert_eq!(config.trust, Trust::NetworkKey(NetworkSecret::new("s3cret-key")));
        assert_eq!(config.peers[0].device_id, None);
        assert!(!format!("{config:?}").contains("s3cret"), "the key must not appear in Debug output");
        let e = load_text(&format!("{base}trust = \"network-key\"\nnetwork_key = \"\"\n")).unwrap_err().to_string();
        assert!(e.contains("n.toml: security.network_key: required"), "{e}");
        let e = load_text(&format!("{base}trust = \"listed\"\n")).unwrap_err().to_string();
        assert!(e.contains("n.toml: peer[0].device_id: required"), "{e}");
        let e = load_text("[[folder]]\nid = \"a\"\npath = \"FOLDER\"\n\n[[peer]]\n\n[security]\ntrust = \"network-key\"\nnetwork_key = \"k\"\n").unwrap_err().to_string();
        assert!(e.contains("n.toml: peer[0]: give a device_id, an address, or both"), "{e}");
    }

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
    fn versioning_defaults_to_trash_for_30_days_and_parses_both_forms() {
        let base = Path::new("/cfg");
        let (policy, path) = versioning_of(None, base).unwrap();
        assert_eq!((policy, path), (VersioningPolicy::DEFAULT, None));
        assert_eq!(policy.max_age, Some(30 * crate::core::versioning::DAY));
        let (policy, _) = versioning_of(Some(RawVersioning::Kind("none".into())), base).unwrap();
        assert_eq!(policy.kind, VersioningKind::None);
        let table = RawVersioningTable {
            kind: Some("simple".into()),
            max_age: Some("forever".into()),
            keep: Some(3),
            max_size: Some("1GiB".into()),
            path: Some("v".into()),
        };
        let (policy, path) = versioning_of(Some(RawVersioning::Table(table)), base).unwrap();
        assert_eq!(
            (policy.kind, policy.max_age, policy.keep, policy.max_size),
            (VersioningKind::Simple, None, 3, Some(1 << 30))
        );
        assert_eq!(path, Some(PathBuf::from("/cfg/v")));
        let bad =
            RawVersioningTable { kind: Some("weekly".into()), max_age: None, keep: None, max_size: None, path: None };
        assert_eq!(versioning_of(Some(RawVersioning::Table(bad)), base).unwrap_err().0, ".type");
        let e = check_file_keys(
            "[[folder]]\nid = \"a\"\npath = \"/x\"\nversioning = { type = \"trash\", max_ag = \"1d\" }\n",
            "n.toml",
        )
        .unwrap_err();
        assert!(e.to_string().contains("`folder.versioning.max_ag`"), "{e}");
    }

    #[test]
    fn a_version_store_must_be_outside_the_folder_and_on_its_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("sync");
        std::fs::create_dir(&root).unwrap();
        let root = normalize(&root);
        assert!(check_versions_path(&root, &root.join("old")).is_err());
        assert!(check_versions_path(&root, &root.join(".syncnode-versions")).is_ok());
        assert!(check_versions_path(&root, &dir.path().join("versions/sync")).is_ok());
        // /proc is another filesystem on any Linux.
        assert!(check_versions_path(&root, Path::new("/proc/versions")).unwrap_err().contains("filesystem"));
    }

    #[test]
    fn the_starter_config_parses_from_its_text() {
        let text = starter_config("n1", Path::new("/var/lib/n1"), Path::new("/srv/sync"), 50051);
        let config = Config::from_toml(&text, "n1.toml", Path::new("/etc")).unwrap();
        assert_eq!((config.name.as_str(), config.chunk_size, config.compression), ("n1", 65536, Compression::Zstd));
        assert_eq!(config.folders[0].path, Path::new("/srv/sync"));
        let relative = text.replace("/srv/sync", "sync");
        assert_eq!(
            Config::from_toml(&relative, "n1.toml", Path::new("/etc")).unwrap().folders[0].path,
            Path::new("/etc/sync")
        );
        assert!(Config::from_toml("[node]\nnmae = \"x\"\n", "n1.toml", Path::new("/etc")).is_err());
    }

    #[test]
    fn peer_flags_need_a_device_id() {
        let id = crate::core::DeviceId([7; 32]).to_string();
        assert!(parse_peer_flag(&format!("{id}@127.0.0.1:5000"), false).is_ok());
        assert!(parse_peer_flag("127.0.0.1:5000", false).is_err());
        assert!(parse_peer_flag(&format!("{id}@nowhere"), false).is_err());
    }

    #[test]
    fn a_bare_peer_address_is_accepted_only_under_network_key() {
        let p = parse_peer_flag("127.0.0.1:5000", true).unwrap();
        assert_eq!((p.device_id, p.address.as_deref()), (None, Some("127.0.0.1:5000")));
        assert!(parse_peer_flag("nowhere", true).is_err());
    }
}
