//! Shared pieces of the fuzz targets: writing a target's seed corpus from the real encoders, and
//! the invariants every record decoded from a peer must satisfy.
//!
//! Seeds: each target that reads a real format (protobuf, TOML, zstd, gzip, rsync deltas) makes
//! its seeds with syncnode's own encoders in its libFuzzer init hook when `SYNCNODE_FUZZ_SEEDS`
//! names a directory (`scripts/fuzz.sh seeds`), so they stay valid when the formats change and no
//! second, uninstrumented build is needed.

use std::path::Path;

use syncnode::core::{chunks, path, FileKind, FileRecord};

/// In the init hook: if `SYNCNODE_FUZZ_SEEDS` is set, writes `seeds()` there (one file each, named
/// by index and a content hash) and exits; otherwise returns and fuzzing starts.
pub fn write_seeds_if_asked(seeds: impl FnOnce() -> Vec<Vec<u8>>) {
    let Some(dir) = std::env::var_os("SYNCNODE_FUZZ_SEEDS") else { return };
    let dir = Path::new(&dir);
    std::fs::create_dir_all(dir).expect("seed directory");
    for (i, seed) in seeds().iter().enumerate() {
        let name = format!(
            "seed-{i:02}-{}",
            &syncnode::fs::chunker::hash(seed).iter().map(|b| format!("{b:02x}")).collect::<String>()[..12]
        );
        std::fs::write(dir.join(name), seed).expect("seed file");
    }
    std::process::exit(0);
}

/// What `net::wire::from_wire` promises about any record it accepts.
pub fn assert_valid_record(r: &FileRecord) {
    assert_eq!(path::validate(&r.path), Ok(()), "accepted record with bad path {:?}", r.path);
    assert!(!r.version.is_empty(), "accepted record with an empty version");
    assert!(r.version.counters().all(|(_, v)| v > 0), "zero counter kept in {:?}", r.version);
    assert_eq!(r.permissions & !0o7777, 0, "permission bits beyond 0o7777: {:o}", r.permissions);
    if r.kind == FileKind::File && !r.deleted {
        assert!(
            chunks::is_consistent(&r.chunks, r.size),
            "live file whose chunks do not add up to {}: {:?}",
            r.size,
            r.chunks
        );
        assert!(r.chunks.iter().all(|c| c.size as usize <= syncnode::net::MAX_MESSAGE), "chunk larger than a message");
    } else {
        assert!(r.chunks.is_empty() && r.size == 0, "directory or tombstone with content: {r:?}");
    }
    if r.kind == FileKind::Symlink && !r.deleted {
        assert_eq!(syncnode::core::record::check_link_target(&r.link_target), Ok(()), "accepted a bad link target");
    } else {
        assert!(r.link_target.is_empty(), "link target on a file, directory or tombstone: {r:?}");
    }
}
