//! The config file (`Config::from_toml`, the part of `Config::load` that reads the file's text): any
//! text is refused with an error or gives settings that hold what the rest of the node relies on
//! (chunk size in FastCDC's range, folder ids usable as keys and unique, absolute paths, every
//! peer identified), and the same text always gives the same settings.
#![no_main]

use std::net::SocketAddr;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use syncnode::config::{starter_config, Config};
use syncnode_fuzz::write_seeds_if_asked;

fn seeds() -> Vec<Vec<u8>> {
    let mut out = vec![starter_config("n1", Path::new("/var/lib/n1"), Path::new("/srv/sync"), 50051).into_bytes()];
    for example in ["example-node.toml", "two-nodes-a.toml", "two-nodes-b.toml"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config").join(example);
        out.push(std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())));
    }
    out.push(b"[sync]\nchunk_size = \"1MiB\"\ncompression = \"gzip\"\n[[folder]]\nid = \"a\"\npath = \"rel\"\nmode = \"send-only\"\n".to_vec());
    out
}

fuzz_target!(
    init: write_seeds_if_asked(seeds),
    |data: &[u8]| {
        let Ok(text) = std::str::from_utf8(data) else { return };
        let base = Path::new("/etc/syncnode");
        let Ok(config) = Config::from_toml(text, "fuzz.toml", base) else { return };
        assert!((1024..=4 << 20).contains(&config.chunk_size), "chunk size {}", config.chunk_size);
        assert!(config.data_dir.is_absolute());
        for (i, f) in config.folders.iter().enumerate() {
            assert!(!f.id.is_empty() && !f.id.contains(['/', '\0']), "folder id {:?}", f.id);
            assert!(config.folders[..i].iter().all(|g| g.id != f.id), "folder id {:?} twice", f.id);
            assert!(f.path.is_absolute(), "folder path {:?}", f.path);
        }
        for p in &config.peers {
            assert!(p.device_id.is_some(), "peer without a device id");
            if let Some(a) = &p.address {
                let (host, port) = a.rsplit_once(':').expect("address without a port");
                assert!(!host.is_empty() && port.parse::<u16>().is_ok(), "address {a:?}");
            }
        }
        let _: SocketAddr = config.listen;
        let again = Config::from_toml(text, "fuzz.toml", base).expect("the same text refused the second time");
        assert_eq!(format!("{again:?}"), format!("{config:?}"), "the same text gave other settings");
    }
);
