//! The file's raw shape, as serde sees it, and the check that names an unknown key with its
//! section (in the file or in the environment) before anything is merged.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::ConfigError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Raw {
    pub(super) node: RawNode,
    #[serde(default)]
    pub(super) folder: Vec<RawFolder>,
    pub(super) sync: RawSync,
    pub(super) discovery: RawDiscovery,
    #[serde(default)]
    pub(super) peer: Vec<RawPeer>,
    pub(super) security: RawSecurity,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNode {
    pub(super) name: String,
    pub(super) data_dir: String,
    pub(super) listen: String,
    pub(super) api_listen: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFolder {
    pub(super) id: String,
    pub(super) path: String,
    #[serde(default = "default_mode")]
    pub(super) mode: String,
    #[serde(default)]
    pub(super) devices: Option<Vec<String>>,
    #[serde(default)]
    pub(super) versioning: Option<RawVersioning>,
    #[serde(default)]
    pub(super) symlinks: Option<String>,
}

/// `versioning = "trash"`, or a table with `type` and the limits.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawVersioning {
    Kind(String),
    Table(RawVersioningTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVersioningTable {
    #[serde(rename = "type", default)]
    pub(super) kind: Option<String>,
    #[serde(default)]
    pub(super) max_age: Option<String>,
    #[serde(default)]
    pub(super) keep: Option<i64>,
    #[serde(default)]
    pub(super) max_size: Option<String>,
    #[serde(default)]
    pub(super) path: Option<String>,
}

pub(super) const VERSIONING_KEYS: &[&str] = &["type", "max_age", "keep", "max_size", "path"];

pub(super) fn default_mode() -> String {
    "send-receive".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSync {
    pub(super) chunk_size: String,
    pub(super) rescan_interval: String,
    pub(super) debounce: String,
    pub(super) compression: String,
    pub(super) tombstone_ttl: String,
    pub(super) empty_folder_guard: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDiscovery {
    pub(super) mdns: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPeer {
    #[serde(default)]
    pub(super) device_id: Option<String>,
    #[serde(default)]
    pub(super) address: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSecurity {
    pub(super) trust: String,
    pub(super) network_key: String,
}

/// Every key the file may hold, by section; arrays of tables are listed by their element keys.
pub(super) const KNOWN_KEYS: &[(&str, &[&str])] = &[
    ("node", &["name", "data_dir", "listen", "api_listen"]),
    ("folder", &["id", "path", "mode", "devices", "versioning", "symlinks"]),
    ("sync", &["chunk_size", "rescan_interval", "debounce", "compression", "tombstone_ttl", "empty_folder_guard"]),
    ("discovery", &["mdns"]),
    ("peer", &["device_id", "address"]),
    ("security", &["trust", "network_key"]),
];

pub(super) fn check_file_keys(text: &str, file: &str) -> Result<(), ConfigError> {
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

pub(super) fn check_env_keys() -> Result<(), ConfigError> {
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
