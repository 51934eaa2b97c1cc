//! The command line, as fixed by CONTRACT.md: `syncnode [--config PATH] [flags]` runs a node;
//! `init`, `id`, `status`, `confirm`, `retry`, `versions list|restore`, and for one-way folders
//! `changes`, `revert` and `override` are subcommands. Exit codes: 0 clean stop, 2 bad command line or
//! config (the message names the file and key), 1 any other fatal error.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::config::{starter_config, Config, ConfigError, Overrides, DEFAULT_PORT};
use crate::net::identity::Identity;

#[derive(Parser, Debug)]
#[command(name = "syncnode", version, about = "Peer-to-peer folder synchronization daemon")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Args, Debug, Default, Clone)]
pub struct RunArgs {
    /// Config file (TOML)
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// The folder to synchronize (folder id `default`)
    #[arg(long, global = true, value_name = "DIR")]
    pub sync_folder: Option<PathBuf>,
    /// Peer listen port
    #[arg(long, global = true, value_name = "N")]
    pub port: Option<u16>,
    /// Average content-defined chunk size in KiB
    #[arg(long, global = true, value_name = "KIB")]
    pub chunk_size: Option<u32>,
    /// Full rescan interval, e.g. 1m
    #[arg(long, global = true, value_name = "DURATION")]
    pub sync_interval: Option<String>,
    /// Data directory (index and identity)
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Trusted static peer, DEVICE_ID@HOST:PORT (repeatable)
    #[arg(long = "peer", global = true, value_name = "DEVICE_ID@HOST:PORT")]
    pub peers: Vec<String>,
    /// Do not announce or browse on the LAN
    #[arg(long, global = true)]
    pub no_mdns: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Write a starter config, create the data dir and identity, print the device ID
    Init,
    /// Print this node's device ID
    Id,
    /// Show the running node's folders, peers and progress
    Status {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Accept a stopped folder's current state: a new (or empty) root, or the deletes of every file
    Confirm {
        /// The folder id
        #[arg(long)]
        folder: String,
    },
    /// Retry the folder's failed pulls now instead of at their next backoff step
    Retry {
        /// The folder id
        #[arg(long)]
        folder: String,
    },
    /// One-way folders: what differs from the peers (receive-only: local changes; send-only: peer changes not taken)
    Changes {
        /// Only this folder
        #[arg(long, value_name = "ID")]
        folder: Option<String>,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Receive-only folder: give its local changes back to the cluster (the files go to the version store)
    Revert {
        /// The folder's id
        #[arg(long, value_name = "ID")]
        folder: String,
    },
    /// Send-only folder: make this node's state win on every peer
    Override {
        /// The folder's id
        #[arg(long, value_name = "ID")]
        folder: String,
    },
    /// List or restore the versions kept of files that peers replaced or deleted
    Versions {
        #[command(subcommand)]
        command: VersionsCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum VersionsCommand {
    /// The kept versions, newest first (path, time, size, deleted or replaced, by which peer)
    List {
        /// Only this folder's versions
        #[arg(long, value_name = "ID")]
        folder: Option<String>,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
        /// Only the versions of this file (or of everything under this directory), relative to the folder
        #[arg(value_name = "FILE")]
        file: Option<String>,
    },
    /// Put a kept version back as a new local change (the newest without --at); it then syncs
    Restore {
        /// The folder's id
        #[arg(long, value_name = "ID")]
        folder: String,
        /// The file, relative to the folder
        #[arg(value_name = "FILE")]
        file: String,
        /// The newest version kept at or before this time (as `versions list` prints it, or a date)
        #[arg(long, value_name = "TIME")]
        at: Option<String>,
    },
}

/// An error with the exit code it maps to.
pub enum Failure {
    Usage(String),
    Fatal(anyhow::Error),
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Failure::Usage(e.to_string())
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        match e.downcast::<ConfigError>() {
            Ok(c) => Failure::Usage(c.to_string()),
            Err(e) => Failure::Fatal(e),
        }
    }
}

impl RunArgs {
    fn overrides(&self) -> Overrides {
        Overrides {
            sync_folder: self.sync_folder.clone(),
            port: self.port,
            chunk_size_kib: self.chunk_size,
            sync_interval: self.sync_interval.clone(),
            data_dir: self.data_dir.clone(),
            peers: self.peers.clone(),
            no_mdns: self.no_mdns,
        }
    }

    pub fn load(&self) -> Result<Config, ConfigError> {
        Config::load(self.config.as_deref(), &self.overrides())
    }
}

pub fn execute(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        None => {
            let config = cli.run.load()?;
            crate::node::run(config)?;
            Ok(())
        }
        Some(Command::Init) => init(&cli.run),
        Some(Command::Id) => {
            let config = cli.run.load()?;
            let identity = Identity::load(&config.data_dir)?;
            println!("{}", identity.device_id);
            Ok(())
        }
        Some(Command::Status { json }) => {
            let config = cli.run.load()?;
            crate::status::print(&config, json).map_err(Failure::Fatal)
        }
        Some(Command::Confirm { folder }) => {
            let config = cli.run.load()?;
            crate::status::control(&config, "confirm", &folder).map_err(Failure::Fatal)
        }
        Some(Command::Retry { folder }) => {
            let config = cli.run.load()?;
            crate::status::control(&config, "retry", &folder).map_err(Failure::Fatal)
        }
        Some(Command::Changes { folder, json }) => {
            let config = cli.run.load()?;
            if let Some(f) = folder.as_deref().filter(|f| config.folder(f).is_none()) {
                return Err(Failure::Usage(format!("--folder {f}: no such folder in the config")));
            }
            crate::oneway::changes(&config, folder.as_deref(), json).map_err(Failure::Fatal)
        }
        Some(Command::Revert { folder }) | Some(Command::Override { folder })
            if cli.run.load().is_ok_and(|c| c.folder(&folder).is_none()) =>
        {
            Err(Failure::Usage(format!("--folder {folder}: no such folder in the config")))
        }
        Some(Command::Revert { folder }) => crate::oneway::revert(&cli.run.load()?, &folder).map_err(Failure::Fatal),
        Some(Command::Override { folder }) => {
            crate::oneway::override_peers(&cli.run.load()?, &folder).map_err(Failure::Fatal)
        }
        Some(Command::Versions { command }) => {
            let config = cli.run.load()?;
            let known = |id: &str| {
                config
                    .folder(id)
                    .map(|_| ())
                    .ok_or_else(|| Failure::Usage(format!("--folder {id}: no such folder in the config")))
            };
            match command {
                VersionsCommand::List { folder, json, file } => {
                    folder.as_deref().map(known).transpose()?;
                    crate::versions::list(&config, folder.as_deref(), file.as_deref(), json).map_err(Failure::Fatal)
                }
                VersionsCommand::Restore { folder, file, at } => {
                    known(&folder)?;
                    crate::versions::restore(&config, &folder, &file, at.as_deref()).map_err(Failure::Fatal)
                }
            }
        }
    }
}

fn init(args: &RunArgs) -> Result<(), Failure> {
    let path = args.config.clone().ok_or_else(|| Failure::Usage("init needs --config PATH".into()))?;
    if path.exists() {
        return Err(Failure::Usage(format!("{}: already exists; not overwriting it", path.display())));
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = dir.canonicalize().with_context(|| format!("cannot resolve {}", dir.display()))?;
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("node");
    let data_dir = args.data_dir.clone().map(|d| absolute(&d)).unwrap_or_else(|| dir.join(format!("{stem}-data")));
    let folder = args.sync_folder.clone().map(|d| absolute(&d)).unwrap_or_else(|| dir.join(format!("{stem}-sync")));
    std::fs::create_dir_all(&folder).with_context(|| format!("cannot create {}", folder.display()))?;
    let identity = Identity::load_or_create(&data_dir)?;
    let name = format!("{stem}-{}", &identity.device_id.prefix());
    std::fs::write(&path, starter_config(&name, &data_dir, &folder, args.port.unwrap_or(DEFAULT_PORT)))
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!("{}", identity.device_id);
    Ok(())
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().map(|d| d.join(p)).unwrap_or_else(|_| p.to_path_buf())
    }
}
