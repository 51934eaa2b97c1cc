//! Settings: built-in defaults < TOML file < `SYNCNODE_<SECTION>__<KEY>` environment < flags,
//! merged with the `config` crate and checked here, so that a bad file fails with the file and the
//! key named (exit 2) instead of a node that runs on a guess.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::core::versioning::{Kind as VersioningKind, Policy as VersioningPolicy};
use crate::core::{DeviceId, SharedWith};

mod raw;
use raw::*;

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

impl FolderMode {
    /// What a one-way folder's `diverged` paths are to the user: (local changes, remote changes).
    /// Receive-only: changes made here and not announced; send-only: peers' changes not taken.
    pub fn changes(self, diverged: u64) -> (u64, u64) {
        match self {
            FolderMode::ReceiveOnly => (diverged, 0),
            FolderMode::SendOnly => (0, diverged),
            FolderMode::SendReceive => (0, 0),
        }
    }
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
mod tests;
