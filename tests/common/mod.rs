//! Test harness: real `syncnode` processes on 127.0.0.1 ports with real configs, TLS identities and
//! RocksDB indexes in temp dirs, and helpers that wait for convergence by polling with a deadline.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_syncnode")
}

/// A port that was free a moment ago, and never handed out before in this test process (the
/// kernel may give a just-released port again, and two nodes of one test would then collide).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap();
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Polls `check` every 20 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Dir,
    /// Content hash, executable bit, mtime in seconds.
    File {
        hash: [u8; 32],
        exec: bool,
        mtime: i64,
        size: u64,
    },
}

/// Everything a user sees in a folder (syncnode's temp files excluded, which must not linger anyway),
/// except the local version store, which differs between nodes by design.
pub fn tree(root: &Path) -> BTreeMap<String, Entry> {
    let mut out = BTreeMap::new();
    let store = root.join(".syncnode-versions");
    for e in
        walkdir::WalkDir::new(root).min_depth(1).sort_by_file_name().into_iter().filter_entry(|e| e.path() != store)
    {
        let Ok(e) = e else { continue };
        let rel = e.path().strip_prefix(root).unwrap().to_string_lossy().to_string();
        let Ok(meta) = e.metadata() else { continue };
        if meta.is_dir() {
            out.insert(rel, Entry::Dir);
        } else if meta.is_file() {
            let Ok(data) = std::fs::read(e.path()) else { continue };
            out.insert(
                rel,
                Entry::File {
                    hash: *blake3::hash(&data).as_bytes(),
                    exec: meta.permissions().mode() & 0o100 != 0,
                    mtime: meta.mtime(),
                    size: meta.len(),
                },
            );
        }
    }
    out
}

pub struct Node {
    pub name: String,
    pub dir: PathBuf,
    pub folder: PathBuf,
    pub data_dir: PathBuf,
    pub config: PathBuf,
    pub port: u16,
    pub api_port: u16,
    pub device_id: String,
    pub peers: Vec<(String, Option<String>)>,
    pub extra: String,
    /// Run the node as this user id (and group), for tests where permissions must matter.
    pub run_as: Option<u32>,
    /// A command the node runs under (its program and arguments, the node's command line after
    /// them), e.g. `unshare` for a user namespace with its own limits. It must exec the node, so
    /// that the child's pid is the node's.
    pub runner: Vec<String>,
    child: Option<Child>,
    pub log: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Node {
    /// `syncnode init` in a fresh temp dir; the config is then rewritten for the test.
    pub fn new(name: &str) -> Node {
        let tmp = tempfile::Builder::new().prefix(&format!("syncnode-{name}-")).tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let mut node = Node::at(name, &dir);
        node._tmp = Some(tmp);
        node
    }

    pub fn at(name: &str, dir: &Path) -> Node {
        let config = dir.join("node.toml");
        let folder = dir.join("sync");
        let out = Command::new(bin())
            .args(["init", "--config"])
            .arg(&config)
            .arg("--sync-folder")
            .arg(&folder)
            .output()
            .unwrap();
        assert!(out.status.success(), "init failed: {}", String::from_utf8_lossy(&out.stderr));
        let device_id = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let node = Node {
            name: name.into(),
            dir: dir.to_path_buf(),
            folder,
            data_dir: dir.join("node-data"),
            config,
            port: free_port(),
            api_port: free_port(),
            device_id,
            peers: Vec::new(),
            extra: String::new(),
            run_as: None,
            runner: Vec::new(),
            child: None,
            log: dir.join("node.log"),
            _tmp: None,
        };
        node.write_config();
        node
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Trust `other` and know its address.
    pub fn trust(&mut self, other: &Node) {
        self.peers.push((other.device_id.clone(), Some(other.address())));
        self.write_config();
    }

    pub fn write_config(&self) {
        let mut text = format!(
            r#"[node]
name = "{name}"
data_dir = "{data}"
listen = "127.0.0.1:{port}"
api_listen = "127.0.0.1:{api}"

[[folder]]
id = "default"
path = "{folder}"

[sync]
chunk_size = "64KiB"
rescan_interval = "1m"
debounce = "20ms"
compression = "zstd"

[discovery]
mdns = false

[security]
trust = "listed"
network_key = ""
"#,
            name = self.name,
            data = self.data_dir.display(),
            port = self.port,
            api = self.api_port,
            folder = self.folder.display()
        );
        for (id, addr) in &self.peers {
            text.push_str(&format!("\n[[peer]]\ndevice_id = \"{id}\"\n"));
            if let Some(a) = addr {
                text.push_str(&format!("address = \"{a}\"\n"));
            }
        }
        text.push_str(&self.extra);
        std::fs::write(&self.config, text).unwrap();
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.name);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let mut command = match self.runner.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(bin());
                c
            }
            None => Command::new(bin()),
        };
        command
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "info,syncnode=debug")
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(uid) = self.run_as {
            use std::os::unix::process::CommandExt;
            command.uid(uid).gid(uid);
        }
        let child = command.spawn().unwrap();
        self.child = Some(child);
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > deadline {
                child.kill().unwrap();
                panic!("{} did not stop within 10 s of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.folder.join(rel)
    }

    pub fn write(&self, rel: &str, data: &[u8]) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let mut f = std::fs::File::create(p).unwrap();
        f.write_all(data).unwrap();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("---- log of {} ----\n{}", self.name, self.log_text());
        }
    }
}

/// Nodes trusting each other pairwise along `links` (indices), started.
/// Makes each linked pair trust each other and know each other's address (configs not written yet).
pub fn introduce(nodes: &mut [Node], links: &[(usize, usize)]) {
    for &(a, b) in links {
        let (na, nb) = (nodes[a].device_id.clone(), nodes[b].device_id.clone());
        let (aa, ab) = (nodes[a].address(), nodes[b].address());
        nodes[a].peers.push((nb, Some(ab)));
        nodes[b].peers.push((na, Some(aa)));
    }
}

pub fn connect(nodes: &mut [Node], links: &[(usize, usize)]) {
    introduce(nodes, links);
    for n in nodes.iter_mut() {
        n.write_config();
        n.start();
    }
}

/// Waits until every node's folder equals the first one's and `check` holds on it.
pub fn converged(nodes: &[&Node], timeout: Duration, check: impl Fn(&BTreeMap<String, Entry>) -> bool) -> bool {
    wait_until(timeout, || {
        let first = tree(&nodes[0].folder);
        check(&first) && nodes[1..].iter().all(|n| tree(&n.folder) == first)
    })
}

/// Each node's paths, then every entry that differs from the first node's.
pub fn describe(nodes: &[&Node]) -> String {
    let trees: Vec<_> = nodes.iter().map(|n| tree(&n.folder)).collect();
    let mut out: String =
        nodes.iter().zip(&trees).map(|(n, t)| format!("{}: {:?}\n", n.name, t.keys().collect::<Vec<_>>())).collect();
    for (n, t) in nodes.iter().zip(&trees).skip(1) {
        for key in trees[0].keys().chain(t.keys()).collect::<std::collections::BTreeSet<_>>() {
            let (mine, first) = (t.get(key), trees[0].get(key));
            if mine != first {
                out += &format!("differs on {}: {key}: {:?} vs {}: {:?}\n", n.name, mine, nodes[0].name, first);
            }
        }
    }
    out
}

/// Deterministic pseudo-random bytes (xorshift), fast enough for hundreds of MiB.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The node's local API, through the same HTTP client the `syncnode status` command uses.
impl Node {
    /// `GET /rest/status` as JSON, or None while the node does not answer.
    pub fn status(&self) -> Option<serde_json::Value> {
        let mut response = ureq::get(&format!("http://127.0.0.1:{}/rest/status", self.api_port)).call().ok()?;
        serde_json::from_str(&response.body_mut().read_to_string().ok()?).ok()
    }

    /// The status of folder `id`.
    pub fn folder_status(&self, id: &str) -> Option<serde_json::Value> {
        self.status()?["folders"].as_array()?.iter().find(|f| f["id"] == id).cloned()
    }

    /// Polls folder `id`'s status until `check` holds; returns the last one seen either way.
    pub fn folder_until(
        &self,
        id: &str,
        timeout: Duration,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> (bool, serde_json::Value) {
        let mut last = serde_json::Value::Null;
        let ok = wait_until(timeout, || match self.folder_status(id) {
            Some(f) => {
                let ok = check(&f);
                last = f;
                ok
            }
            None => false,
        });
        (ok, last)
    }

    /// `GET /metrics` as text.
    pub fn metrics(&self) -> String {
        ureq::get(&format!("http://127.0.0.1:{}/metrics", self.api_port))
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_to_string().ok())
            .unwrap_or_default()
    }

    /// Runs `syncnode ARGS --config <this node's config>`: (success, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(bin()).args(args).arg("--config").arg(&self.config).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    }
}

/// Whether this process may mount filesystems. Tests that need it skip without root, but fail
/// under `CI=true`, where root is expected: a test that cannot run must not pass silently there.
pub fn require_root(test: &str) -> bool {
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    skip(test, "needs root to mount filesystems");
    false
}

/// Says why `test` skips; panics instead under `CI` (.ci/run sets CI=true, as most CI services
/// do), where everything a test needs is installed: a skip there would be a silent pass.
pub fn skip(test: &str, why: &str) {
    assert!(std::env::var_os("CI").is_none(), "{test} cannot run ({why}), and CI is set");
    eprintln!("skipping {test}: {why}");
}

/// A small filesystem of its own, mounted at `dir` for a test, unmounted when dropped: ext4 on a
/// loop device (as a USB disk would be), or tmpfs where loop devices are missing.
pub struct Disk {
    pub dir: PathBuf,
    image: Option<PathBuf>,
    size_mib: u64,
}

impl Disk {
    pub fn mount(dir: &Path, size_mib: u64) -> Disk {
        std::fs::create_dir_all(dir).unwrap();
        let image = dir.with_extension("img");
        let mkfs = Command::new("truncate")
            .arg("-s")
            .arg(format!("{size_mib}M"))
            .arg(&image)
            .status()
            .is_ok_and(|s| s.success())
            && Command::new("mkfs.ext4").args(["-q", "-F", "-m", "0"]).arg(&image).status().is_ok_and(|s| s.success());
        let disk = Disk { dir: dir.to_path_buf(), image: mkfs.then_some(image), size_mib };
        disk.remount();
        disk
    }

    /// Mounts it (again): the same filesystem, so the same root.
    pub fn remount(&self) {
        let ok = match &self.image {
            Some(image) => {
                Command::new("mount").args(["-o", "loop"]).arg(image).arg(&self.dir).status().unwrap().success()
            }
            None => false,
        } || Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={}m", self.size_mib), "tmpfs"])
            .arg(&self.dir)
            .status()
            .unwrap()
            .success();
        assert!(ok, "cannot mount a filesystem at {}", self.dir.display());
        // ext4 makes lost+found: not part of what the test syncs.
        let _ = std::fs::remove_dir(self.dir.join("lost+found"));
    }

    /// As an unplugged disk: `umount -l`, leaving the mount point directory behind.
    pub fn unplug(&self) {
        assert!(Command::new("umount").arg("-l").arg(&self.dir).status().unwrap().success());
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        if let Some(image) = &self.image {
            let _ = std::fs::remove_file(image);
        }
    }
}
