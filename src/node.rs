//! Starting and stopping a node: open the index, bind the listener, start the actors, wait for
//! SIGINT/SIGTERM, then close connections and flush the index before exiting.

use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;
use anyhow::{Context as _, Result};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

use crate::actors::directory::PeerDirectory;
use crate::actors::discovery::Discovery;
use crate::actors::index::{index_path, IndexActor};
use crate::actors::messages::{
    Control, DiscoveryReports, IndexForPeers, IndexForPuller, PullerPort, Sequences, Shutdown, StopDiscovery,
};
use crate::actors::puller::Puller;
use crate::actors::status::NodeState;
use crate::actors::supervisor::{Supervisor, SupervisorSetup};
use crate::actors::watcher::Watcher;
use crate::config::{Config, Trust};
use crate::fs::root::RootGuard;
use crate::fs::versions::VersionStore;
use crate::net::identity::Identity;
use crate::net::network_key::NetworkKey;
use crate::net::tls::{Admit, TrustedDevices};
use crate::pull::{CommitQueue, PullContext};
use crate::store::Store;

/// Runs a node in the foreground until SIGINT or SIGTERM.
pub fn run(config: Config) -> Result<()> {
    let identity = Identity::load_or_create(&config.data_dir)?;
    let store = Arc::new(Store::open(&index_path(&config.data_dir))?);
    let system = actix_rt::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime")
    });
    let result = system.block_on(serve(config, identity, store.clone()));
    store.flush().context("flushing the index")?;
    result
}

async fn serve(config: Config, identity: Identity, store: Arc<Store>) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    tracing::info!(device = %identity.device_id, name = %config.name, listen = %listener.local_addr()?, "node starting");

    let directory = PeerDirectory::default();
    let folders = Arc::new(config.folders.clone());
    let roots: Arc<HashMap<_, _>> = Arc::new(config.folders.iter().map(|f| (f.id.clone(), f.path.clone())).collect());

    let versions: HashMap<String, Arc<VersionStore>> = config
        .folders
        .iter()
        .map(|f| (f.id.clone(), Arc::new(VersionStore::new(&f.path, f.versions_path.as_deref(), f.versioning))))
        .collect();
    let state = Arc::new(NodeState {
        device_id: identity.device_id,
        name: config.name.clone(),
        folders: config.folders.iter().map(|f| (f.clone(), Arc::default())).collect(),
        directory: directory.clone(),
        store: store.clone(),
        versions: versions.clone(),
        actor_stall_max_ms: Default::default(),
    });
    actix_rt::spawn(watch_actor_thread(state.clone()));
    let mut guarded = Vec::new();
    for folder in config.folders.iter() {
        let expected = store.root_id(&folder.id).context("reading the index")?;
        guarded.push((folder.clone(), Arc::new(RootGuard::new(folder.path.clone(), expected))));
    }
    // The one place where actors learn each other: the Index's and the Watcher's addresses exist
    // before they run, so the Pullers get their port to the Index first, the Index gets theirs
    // and the Watcher's when it is made, and the Watcher the Index's.
    let index_context = Context::<IndexActor>::new();
    let index = index_context.address();
    let watcher_context = Context::<Watcher>::new();
    let watcher = watcher_context.address();
    let for_puller = IndexForPuller {
        applied: index.clone().recipient(),
        changed: index.clone().recipient(),
        pulling: index.clone().recipient(),
        recompute_paths: index.clone().recipient(),
    };
    let mut pullers = HashMap::new();
    let mut wired = Vec::new();
    // The Pullers run on a thread of their own: their queue work (RocksDB reads and writes per
    // need) beside the Index's on the system thread made that one thread the limit of a big sync.
    // Their pulls still run on the multi-threaded runtime.
    let puller_thread = actix_rt::Arbiter::new();
    let runtime = tokio::runtime::Handle::current();
    for (folder, guard) in guarded {
        let context = PullContext {
            folder: folder.id.clone(),
            commits: CommitQueue::start(versions[&folder.id].clone(), folder.id.clone(), for_puller.applied.clone()),
            root: folder.path.clone(),
            roots: roots.clone(),
            store: store.clone(),
            directory: directory.clone(),
            index: for_puller.clone(),
            gauges: state.gauges(&folder.id),
            guard: guard.clone(),
            versions: versions[&folder.id].clone(),
            runtime: runtime.clone(),
        };
        let puller = Puller::start_in_arbiter(&puller_thread.handle(), move |_| Puller::new(context));
        pullers.insert(folder.id.clone(), puller.clone().recipient());
        wired.push((folder, guard, PullerPort { needs: puller.clone().recipient(), barrier: puller.recipient() }));
    }
    let mut current = Vec::new();
    for folder in config.folders.iter() {
        current.push((folder.id.clone(), store.folder_meta(&folder.id).context("reading the index")?.max_sequence));
    }
    let sequences = Sequences::new(current);
    index_context.run(IndexActor::new(
        store.clone(),
        identity.device_id,
        config.chunk_size,
        config.tombstone_ttl,
        config.empty_folder_guard,
        &wired,
        state.clone(),
        sequences.clone(),
        watcher.recipient(),
    ));
    let for_peers = IndexForPeers {
        remote_index: index.clone().recipient(),
        rehash: index.clone().recipient(),
        sequences,
        recompute: index.clone().recipient(),
    };
    let network_key = match &config.trust {
        Trust::Listed => None,
        Trust::NetworkKey(secret) => Some(Arc::new(NetworkKey::new(secret.expose()))),
    };
    warn_about_trust(&config);
    let supervisor = Supervisor::new(SupervisorSetup {
        identity: identity.clone(),
        name: config.name.clone(),
        folders: folders.clone(),
        store: store.clone(),
        index: for_peers,
        directory: directory.clone(),
        compression: config.compression,
        network_key: network_key.clone(),
    });
    let (inbound_tx, inbound_rx) = mpsc::channel(64);
    let supervisor = Supervisor::create(move |ctx| {
        ctx.add_stream(ReceiverStream::new(inbound_rx));
        supervisor
    });
    let _versions = crate::actors::versions::VersionCleaner::new(versions.clone()).start();
    let _watcher = watcher_context.run(Watcher::new(
        config.folders.clone(),
        index.clone().recipient(),
        index.clone().recipient(),
        config.debounce,
        config.rescan_interval,
    ));
    let port = listener.local_addr()?.port();
    let discovery = Discovery::new(
        identity.device_id,
        config.name.clone(),
        port,
        config.mdns,
        config.peers.clone(),
        network_key.is_some(),
        DiscoveryReports {
            discovered: supervisor.clone().recipient(),
            at_address: supervisor.clone().recipient(),
            vanished: supervisor.clone().recipient(),
        },
    )
    .start();

    let admit = match &network_key {
        None => Admit::Listed(TrustedDevices::new(config.peers.iter().filter_map(|p| p.device_id))),
        Some(_) => Admit::AnyCertificate,
    };
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server_identity = identity.clone();
    let server = tokio::spawn(async move {
        crate::net::dial::serve(listener, &server_identity, admit, network_key, inbound_tx, async {
            let _ = stop_rx.await;
        })
        .await
    });
    let api = match config.api_listen {
        Some(address) => Some(crate::api::start(
            address,
            state.clone(),
            Control {
                confirm: index.clone().recipient(),
                revert: index.clone().recipient(),
                override_: index.clone().recipient(),
                retry: pullers,
            },
        )?),
        None => None,
    };
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);

    wait_for_signal().await;
    tracing::info!("stopping");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    let _ = supervisor.send(Shutdown).await;
    discovery.do_send(StopDiscovery);
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(std::time::Duration::from_secs(3), server).await;
    if let Some(api) = api {
        api.stop(true).await;
    }
    puller_thread.stop();
    System::current().stop();
    Ok(())
}

/// Settings that work but are probably not what the user meant.
fn warn_about_trust(config: &Config) {
    match &config.trust {
        Trust::NetworkKey(secret) if secret.expose().chars().count() < 16 => {
            tracing::warn!("security.network_key is short: a host this node dials could guess it offline; use 16 or more random characters")
        }
        Trust::NetworkKey(_) => {}
        Trust::Listed => {
            for folder in &config.folders {
                for device in
                    folder.devices.listed().filter(|d| !config.peers.iter().any(|p| p.device_id.as_ref() == Some(*d)))
                {
                    tracing::warn!(folder = %folder.id, device = %device, "folder is shared with a device that is not a [[peer]]; it cannot connect");
                }
            }
        }
    }
}

/// How late the actor thread runs a short timer. Every actor, and the wait for SIGTERM, share
/// that thread: a handler that holds it shows here, as the longest stall in `/metrics`
/// (`syncnode_actor_thread_stall_max_ms`), at debug from 100 ms and as a WARN from a second.
async fn watch_actor_thread(state: Arc<NodeState>) {
    const TICK: std::time::Duration = std::time::Duration::from_millis(50);
    loop {
        let asked = std::time::Instant::now();
        tokio::time::sleep(TICK).await;
        let late = asked.elapsed().saturating_sub(TICK).as_millis() as u64;
        state.actor_stall_max_ms.fetch_max(late, std::sync::atomic::Ordering::Relaxed);
        if late >= 1000 {
            tracing::warn!(late_ms = late, "the actor thread was held for over a second");
        } else if late >= 100 {
            tracing::debug!(late_ms = late, "the actor thread was held");
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
