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
    /// The address the node listens on for peers (127.0.0.1 unless a test gives it a LAN's).
    pub host: String,
    pub port: u16,
    pub api_port: u16,
    pub device_id: String,
    /// Trusted devices and the address to dial each at (`None`: it dials us). An empty device ID
    /// writes a bare address (a peer known only by address, for `trust = "network-key"`).
    pub peers: Vec<(String, Option<String>)>,
    /// TOML lines added to the `[[folder]]` table, e.g. `mode = "send-only"` or versioning keys.
    pub folder_keys: String,
    /// The `[sync]` table, `key = "value"` each (chunk size, rescan interval, debounce, compression).
    pub sync: BTreeMap<&'static str, String>,
    /// Whether the node finds peers by mDNS (off: the harness gives every address).
    pub mdns: bool,
    /// The body of the `[security]` table.
    pub security: String,
    /// Written at the end of the config (more `[[folder]]` tables, say).
    pub extra: String,
    /// Environment variables the node runs with, besides `RUST_LOG`.
    pub env: Vec<(String, String)>,
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
        let (code, out, err) =
            run_cli(&["init", "--config", config.to_str().unwrap(), "--sync-folder", folder.to_str().unwrap()], &[]);
        assert_eq!(code, 0, "init failed: {err}");
        let device_id = out.trim().to_string();
        let node = Node {
            name: name.into(),
            dir: dir.to_path_buf(),
            folder,
            data_dir: dir.join("node-data"),
            config,
            host: "127.0.0.1".into(),
            port: free_port(),
            api_port: free_port(),
            device_id,
            peers: Vec::new(),
            folder_keys: String::new(),
            sync: [("chunk_size", "64KiB"), ("rescan_interval", "1m"), ("debounce", "20ms"), ("compression", "zstd")]
                .into_iter()
                .map(|(k, v)| (k, v.to_string()))
                .collect(),
            mdns: false,
            security: "trust = \"listed\"\nnetwork_key = \"\"".into(),
            extra: String::new(),
            env: Vec::new(),
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
        format!("{}:{}", self.host, self.port)
    }

    /// Trust `other` and know its address.
    pub fn trust(&mut self, other: &Node) {
        self.peers.push((other.device_id.clone(), Some(other.address())));
        self.write_config();
    }

    /// Trust device `id`, which dials us (a peer the harness does not run, say).
    pub fn trust_id(&mut self, id: &str) {
        self.peers.push((id.into(), None));
        self.write_config();
    }

    pub fn write_config(&self) {
        let mut text = format!(
            r#"[node]
name = "{name}"
data_dir = "{data}"
listen = "{address}"
api_listen = "127.0.0.1:{api}"

[[folder]]
id = "default"
path = "{folder}"
{folder_keys}
[sync]
"#,
            name = self.name,
            data = self.data_dir.display(),
            address = self.address(),
            api = self.api_port,
            folder = self.folder.display(),
            folder_keys = self.folder_keys.lines().map(|l| format!("{l}\n")).collect::<String>(),
        );
        for (key, value) in &self.sync {
            text.push_str(&format!("{key} = \"{value}\"\n"));
        }
        text.push_str(&format!("\n[discovery]\nmdns = {}\n\n[security]\n{}\n", self.mdns, self.security));
        for (id, addr) in &self.peers {
            text.push_str("\n[[peer]]\n");
            if !id.is_empty() {
                text.push_str(&format!("device_id = \"{id}\"\n"));
            }
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
            .envs(self.env.iter().map(|(k, v)| (k, v)))
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
        self.child.as_ref()?;
        self.terminate();
        match self.wait_exit(Duration::from_secs(10)) {
            Some(code) => code,
            None => {
                self.kill();
                panic!("{} did not stop within 10 s of SIGTERM", self.name);
            }
        }
    }

    /// Sends SIGTERM and returns at once (see [`Node::wait_exit`]).
    pub fn terminate(&self) {
        let child = self.child.as_ref().expect("the node runs");
        assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    }

    /// Waits up to `timeout` for the node to exit: `Some(exit code)` once it has (the code is
    /// `None` after a signal), `None` if it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<Option<i32>> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("the node was started");
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return Some(status.code());
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
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

/// Nodes set up together: each made by `syncnode init`, linked as asked, then given what the test
/// needs before it starts (folder keys, files, a runner...), then configured and started.
pub struct Cluster {
    pub nodes: Vec<Node>,
}

impl Cluster {
    /// Nodes named `names`; each pair in `links` (indices) trusts each other and dials the other.
    pub fn new(names: &[&str], links: &[(usize, usize)]) -> Cluster {
        let mut cluster = Cluster { nodes: names.iter().map(|n| Node::new(n)).collect() };
        for &(a, b) in links {
            let (to_a, to_b) = (cluster.nodes[a].address(), cluster.nodes[b].address());
            cluster.knows(a, b, Some(to_b)).knows(b, a, Some(to_a));
        }
        cluster
    }

    /// `a` and `b`, linked.
    pub fn pair() -> Cluster {
        Cluster::new(&["a", "b"], &[(0, 1)])
    }

    /// `n` nodes `a`, `b`, `c`... each linked to the next.
    pub fn line(n: usize) -> Cluster {
        let names: Vec<String> = (0..n).map(|i| ((b'a' + i as u8) as char).to_string()).collect();
        let links: Vec<(usize, usize)> = (1..n).map(|i| (i - 1, i)).collect();
        Cluster::new(&names.iter().map(String::as_str).collect::<Vec<_>>(), &links)
    }

    /// `a`, `b` and `c`, each linked to both others.
    pub fn triangle() -> Cluster {
        Cluster::new(&["a", "b", "c"], &[(0, 1), (1, 2), (0, 2)])
    }

    /// Node `i` trusts node `j`, and dials it at `address` (`None`: it waits for `j` to dial).
    pub fn knows(&mut self, i: usize, j: usize, address: Option<String>) -> &mut Cluster {
        let id = self.nodes[j].device_id.clone();
        self.nodes[i].peers.push((id, address));
        self
    }

    /// `from` dials `to` at `address` (a proxy in front of it, say); `to` trusts `from` and waits.
    pub fn dials(mut self, from: usize, to: usize, address: String) -> Cluster {
        self.knows(from, to, Some(address)).knows(to, from, None);
        self
    }

    /// Runs `f` on node `i` before it is configured and started.
    pub fn with(mut self, i: usize, f: impl FnOnce(&mut Node)) -> Cluster {
        f(&mut self.nodes[i]);
        self
    }

    /// Writes `files` (path in the folder, content) into node `i`'s folder before it starts.
    pub fn files(self, i: usize, files: &[(&str, &[u8])]) -> Cluster {
        self.with(i, |n| {
            for (rel, data) in files {
                n.write(rel, data);
            }
        })
    }

    /// Node `i` trusts device `id` from outside the cluster, which dials it.
    pub fn trusts(self, i: usize, id: &str) -> Cluster {
        self.with(i, |n| n.trust_id(id))
    }

    /// Adds `keys` (TOML lines) to node `i`'s `[[folder]]` table.
    pub fn folder_keys(self, i: usize, keys: &str) -> Cluster {
        self.with(i, |n| n.folder_keys.push_str(&format!("{keys}\n")))
    }

    /// Writes every node's config; none is started.
    pub fn configured(self) -> Vec<Node> {
        for n in &self.nodes {
            n.write_config();
        }
        self.nodes
    }

    /// Writes every node's config and starts them all.
    pub fn start(self) -> Vec<Node> {
        let mut nodes = self.configured();
        for n in nodes.iter_mut() {
            n.start();
        }
        nodes
    }
}

/// The nodes one by one, to name each: `let [mut a, mut b] = each(nodes);`.
pub fn each<const N: usize>(nodes: Vec<Node>) -> [Node; N] {
    let n = nodes.len();
    nodes.try_into().unwrap_or_else(|_| panic!("{n} nodes, not {N}"))
}

/// Two linked nodes, `a` and `b`, started.
pub fn pair() -> Vec<Node> {
    Cluster::pair().start()
}

/// `n` nodes in a line, started.
pub fn line(n: usize) -> Vec<Node> {
    Cluster::line(n).start()
}

/// Three nodes each linked to both others, started.
pub fn triangle() -> Vec<Node> {
    Cluster::triangle().start()
}

/// Runs `syncnode ARGS` with `env` added to its environment: (exit code, stdout, stderr); the code
/// is -1 when a signal ended it.
pub fn run_cli(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(bin()).args(args).envs(env.iter().copied()).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
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
        value_until(timeout, || self.folder_status(id), check)
    }

    /// `GET /metrics` as text.
    pub fn metrics(&self) -> String {
        ureq::get(&format!("http://127.0.0.1:{}/metrics", self.api_port))
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_to_string().ok())
            .unwrap_or_default()
    }

    /// Polls the status until `check` holds; returns the last status seen either way.
    pub fn status_until(
        &self,
        timeout: Duration,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> (bool, serde_json::Value) {
        value_until(timeout, || self.status(), check)
    }

    /// The status of the peer with `device_id`, as this node reports it.
    pub fn peer_status(&self, device_id: &str) -> Option<serde_json::Value> {
        self.status()?["peers"].as_array()?.iter().find(|p| p["device_id"] == device_id).cloned()
    }

    /// The value of one sample in `/metrics`: `name` with `labels` (as written between the braces,
    /// e.g. `folder="default"`; empty for none).
    pub fn metric(&self, name: &str, labels: &str) -> Option<u64> {
        let key = if labels.is_empty() { format!("{name} ") } else { format!("{name}{{{labels}}} ") };
        self.metrics().lines().find_map(|l| l.strip_prefix(&key)).and_then(|v| v.trim().parse().ok())
    }

    /// Runs `syncnode ARGS --config <this node's config>`: (exit code, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let mut args = args.to_vec();
        args.extend(["--config", self.config.to_str().unwrap()]);
        run_cli(&args, &[])
    }
}

/// Polls `get` until it answers and `check` holds on the answer; returns the last answer either way.
fn value_until(
    timeout: Duration,
    get: impl Fn() -> Option<serde_json::Value>,
    check: impl Fn(&serde_json::Value) -> bool,
) -> (bool, serde_json::Value) {
    let mut last = serde_json::Value::Null;
    let ok = wait_until(timeout, || match get() {
        Some(v) => {
            let ok = check(&v);
            last = v;
            ok
        }
        None => false,
    });
    (ok, last)
}

/// The labels of a peer's samples in `/metrics`.
pub fn peer_label(device_id: &str) -> String {
    format!("peer=\"{device_id}\"")
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

/// Whether this runs under CI (`CI` set to anything but empty, `0` or `false`; .ci/run sets
/// CI=true, as most CI services do). There everything a test needs is installed and allowed.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false"))
}

/// Says why `test` skips; panics instead under CI ([`in_ci`]): a skip there would be a silent pass.
pub fn skip(test: &str, why: &str) {
    assert!(!in_ci(), "{test} cannot run ({why}), and CI is set");
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
