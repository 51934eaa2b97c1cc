//! The command line contract: init, id, config layering and the errors a user gets for bad input.

mod common;

use std::process::Command;

use common::*;

#[test]
fn init_writes_a_config_and_id_prints_the_same_device_id() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("n.toml");
    let cfg = config.to_str().unwrap();
    let (code, out, err) = run_cli(
        &["init", "--config", cfg, "--sync-folder", dir.path().join("f").to_str().unwrap(), "--port", "50999"],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let id = out.trim();
    assert_eq!(id.len(), 52);
    assert!(std::fs::read_to_string(&config).unwrap().contains("0.0.0.0:50999"));
    let (code, out2, _) = run_cli(&["id", "--config", cfg], &[]);
    assert_eq!((code, out2.trim()), (0, id));
    // init refuses to overwrite
    let (code, _, err) = run_cli(&["init", "--config", cfg], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("already exists"), "{err}");
}

#[test]
fn bad_configs_exit_2_naming_the_file_and_the_key() {
    let node = Node::new("a");
    let cfg = node.config.to_str().unwrap().to_string();
    let good = std::fs::read_to_string(&node.config).unwrap();

    std::fs::write(&node.config, good.replace("debounce = \"20ms\"", "debounce = \"20ms\"\nspeed = 3")).unwrap();
    let (code, _, err) = run_cli(&["--config", &cfg], &[]);
    assert_eq!(code, 2);
    assert!(err.contains(&cfg) && err.contains("sync.speed"), "{err}");

    std::fs::write(&node.config, good.replace("debounce = \"20ms\"", "debounce = \"soon\"")).unwrap();
    let (code, _, err) = run_cli(&["--config", &cfg], &[]);
    assert_eq!(code, 2);
    assert!(err.contains(&cfg) && err.contains("sync.debounce"), "{err}");

    std::fs::write(&node.config, good.replace(node.folder.to_str().unwrap(), "/no/such/folder")).unwrap();
    let (code, _, err) = run_cli(&["--config", &cfg], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("folder[0].path") && err.contains("/no/such/folder"), "{err}");

    std::fs::write(&node.config, &good).unwrap();
    let (code, _, err) = run_cli(&["--config", &cfg], &[("SYNCNODE_NODE__LISTEN", "not-an-address")]);
    assert_eq!(code, 2);
    assert!(err.contains("node.listen"), "{err}");
    let (code, _, err) = run_cli(&["--config", &cfg, "--peer", "nonsense"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("--peer"), "{err}");
    let (code, _, err) = run_cli(&["--config", &cfg], &[("SYNCNODE_NODE__COLOUR", "red")]);
    assert_eq!(code, 2);
    assert!(err.contains("SYNCNODE_NODE__COLOUR"), "{err}");
}

#[test]
fn flags_override_the_file_and_a_bare_sync_folder_runs_a_node() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("x");
    std::fs::create_dir(&folder).unwrap();
    let port = free_port();
    let mut child = Command::new(bin())
        .args(["--sync-folder", folder.to_str().unwrap(), "--port", &port.to_string(), "--no-mdns"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("SYNCNODE_NODE__API_LISTEN", "")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        wait_until(std::time::Duration::from_secs(20), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok())
    );
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(dir.path().join("data/cert.der").exists());
}
