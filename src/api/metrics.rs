//! `GET /metrics`: the status report as OpenMetrics text, encoded by the Prometheus project's own
//! client (`prometheus-client`). The numbers live in the actors' gauges (kept up to date as work
//! happens, never recounted), so a scrape builds a registry from one status snapshot: O(folders +
//! peers), whatever the size of the tree.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::actors::status::{FolderReport, PeerReport, StatusReport};

pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(&'static str, String)>;
/// A metric read off a report: its name, its help text, and how to get its value.
type Metric<T> = (&'static str, &'static str, fn(&T) -> u64);

/// Counters are named without `_total`: OpenMetrics adds it to the sample
/// (`syncnode_pulls_total{folder="default"} 3`).
pub fn render(r: &StatusReport) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("syncnode");
    let folder = |f: &FolderReport| vec![("folder", f.id.clone())];
    let peer = |p: &PeerReport| vec![("peer", p.device_id.clone())];

    let folder_gauges: [Metric<FolderReport>; 14] = [
        ("folder_files", "Files and directories in the folder.", |f| f.local_files),
        ("folder_bytes", "Bytes of file data in the folder.", |f| f.local_bytes),
        ("folder_need_files", "Files still to pull.", |f| f.need_files),
        ("folder_need_bytes", "Bytes still to pull.", |f| f.need_bytes),
        (
            "folder_error",
            "1 while the folder is in state error (root gone, folder emptied, or paths that cannot be pulled).",
            |f| u64::from(f.state == "error"),
        ),
        ("folder_failed_paths", "Paths whose last pull failed, waiting for a retry.", |f| f.failed_paths),
        ("folder_need_window", "Needs the Puller holds in memory now (the rest wait in the index).", |f| f.need_window),
        ("folder_need_window_peak", "The most needs the Puller ever held in memory.", |f| f.need_window_peak),
        ("folder_unreadable_paths", "Local files that could not be read (skipped, never taken for deleted).", |f| {
            f.unreadable_paths
        }),
        ("last_full_scan_ms", "How long the last full scan took, in milliseconds.", |f| f.last_full_scan_ms),
        ("versions_files", "Versions kept in the folder's version store.", |f| f.versions_files),
        ("versions_bytes", "Bytes of the versions kept in the folder's version store.", |f| f.versions_bytes),
        ("local_changes", "Receive-only folders: paths changed here and not announced.", |f| f.local_changes),
        ("remote_changes", "Send-only folders: peer changes not taken.", |f| f.remote_changes),
    ];
    for (name, help, value) in folder_gauges {
        registry.register(name, help, gauges(r.folders.iter().map(|f| (folder(f), value(f)))));
    }
    let folder_counters: [Metric<FolderReport>; 9] = [
        ("pulls", "Files and directories pulled from peers.", |f| f.pulls),
        ("conflicts", "Conflicts resolved (a copy kept).", |f| f.conflicts),
        ("errors", "Failed pulls (retried).", |f| f.errors),
        ("scan_hashed_files", "Files scans read and hashed (new or changed on disk).", |f| f.hashed_files),
        ("scan_hashed_bytes", "Bytes of the files scans read and hashed.", |f| f.hashed_bytes),
        ("scan_looked_paths", "Paths scans of changed paths looked at (full scans not counted).", |f| f.looked_paths),
        ("full_scans", "Full scans of the folder done.", |f| f.full_scans),
        ("reused_bytes", "File bytes taken from local files instead of the network.", |f| f.bytes_reused),
        ("wire_saved_bytes", "File bytes from peers that rsync deltas and compression kept off the wire.", |f| {
            f.bytes_saved_on_wire
        }),
    ];
    for (name, help, value) in folder_counters {
        registry.register(name, help, counters(r.folders.iter().map(|f| (folder(f), value(f)))));
    }

    let connected = r.peers.iter().filter(|p| p.connected).count() as u64;
    registry.register("peers_connected", "Peers connected now.", gauges([(Vec::new(), connected)]));
    registry.register(
        "actor_thread_stall_max_ms",
        "The longest the actor thread (shared by every actor and the signal handler) was held past a timer, in ms.",
        gauges([(Vec::new(), r.actor_stall_max_ms)]),
    );
    let m = &r.index_memory;
    let parts = [
        ("block_cache", m.block_cache),
        ("block_cache_pinned", m.block_cache_pinned),
        ("memtables", m.memtables),
        ("table_readers", m.table_readers),
    ];
    registry.register(
        "index_memory_bytes",
        "What the index (RocksDB) holds in memory, by part; block_cache_pinned is within block_cache.",
        gauges(parts.map(|(part, bytes)| (vec![("part", part.to_string())], bytes))),
    );
    let peer_gauges: [Metric<PeerReport>; 3] = [
        (
            "peer_needs_admitted",
            "Needs charged to the peer in the pull queues now (queued, running or waiting to retry).",
            |p| p.needs_admitted,
        ),
        ("peer_needs_held", "Needs of the peer held in the index until its need budget frees.", |p| p.needs_held),
        ("peer_index_batch_max", "The most records one index message of the peer held.", |p| p.index_batch_max),
    ];
    for (name, help, value) in peer_gauges {
        registry.register(name, help, gauges(r.peers.iter().map(|p| (peer(p), value(p)))));
    }
    let peer_counters: [Metric<PeerReport>; 7] = [
        (
            "peer_failed_fetches",
            "Our chunk requests to the peer that failed (refused, timed out, connection lost).",
            |p| p.failed_fetches,
        ),
        ("peer_bytes_in", "Protocol bytes received from the peer.", |p| p.bytes_in),
        ("peer_bytes_out", "Protocol bytes sent to the peer.", |p| p.bytes_out),
        ("peer_refused_records", "Records from the peer refused (their batch not applied).", |p| p.refused_records),
        ("peer_refused_requests", "Chunk requests from the peer refused.", |p| p.refused_requests),
        ("peer_protocol_violations", "Times the peer broke the protocol and was cut off.", |p| p.protocol_violations),
        ("peer_index_batches", "Index messages of the peer taken in.", |p| p.index_batches),
    ];
    for (name, help, value) in peer_counters {
        registry.register(name, help, counters(r.peers.iter().map(|p| (peer(p), value(p)))));
    }

    let mut out = String::new();
    encode(&mut out, &registry)?;
    Ok(out)
}

fn gauges(samples: impl IntoIterator<Item = (Labels, u64)>) -> Family<Labels, Gauge> {
    let family = Family::<Labels, Gauge>::default();
    for (labels, v) in samples {
        family.get_or_create(&labels).set(i64::try_from(v).unwrap_or(i64::MAX));
    }
    family
}

fn counters(samples: impl IntoIterator<Item = (Labels, u64)>) -> Family<Labels, Counter> {
    let family = Family::<Labels, Counter>::default();
    for (labels, v) in samples {
        family.get_or_create(&labels).inc_by(v);
    }
    family
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_samples_stay_what_scrapers_and_tests_know() {
        let report = StatusReport {
            folders: vec![FolderReport { id: "default".into(), local_files: 3, pulls: 7, ..Default::default() }],
            peers: vec![PeerReport { device_id: "PEER".into(), connected: true, bytes_in: 42, ..Default::default() }],
            index_memory: crate::store::IndexMemory { memtables: 5, ..Default::default() },
            ..Default::default()
        };
        let text = render(&report).unwrap();
        for line in [
            "# TYPE syncnode_folder_files gauge",
            "syncnode_folder_files{folder=\"default\"} 3",
            "# TYPE syncnode_pulls counter",
            "syncnode_pulls_total{folder=\"default\"} 7",
            "syncnode_peer_bytes_in_total{peer=\"PEER\"} 42",
            "syncnode_peers_connected 1",
            "syncnode_index_memory_bytes{part=\"memtables\"} 5",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "no line {line:?} in\n{text}");
        }
    }
}
