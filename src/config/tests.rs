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
    let e = load_text("[[folder]]\nid = \"a\"\npath = \"FOLDER\"\nsymlinks = \"follow\"\n").unwrap_err().to_string();
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
    let base = "[[folder]]\nid = \"a\"\npath = \"FOLDER\"\n\n[[peer]]\naddress = \"127.0.0.1:5000\"\n\n[security]\n";
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
    let bad = RawVersioningTable { kind: Some("weekly".into()), max_age: None, keep: None, max_size: None, path: None };
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

#[test]
fn a_one_way_folders_diverged_paths_are_local_or_remote_changes_by_its_mode() {
    assert_eq!(FolderMode::ReceiveOnly.changes(3), (3, 0));
    assert_eq!(FolderMode::SendOnly.changes(3), (0, 3));
    assert_eq!(FolderMode::SendReceive.changes(3), (0, 0));
}
