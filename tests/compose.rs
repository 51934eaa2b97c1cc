//! The docker-compose LAN (docker/docker-compose.yml): three containers on one bridge network that
//! know each other only by device ID and find each other by mDNS. A file written on node1 appears
//! on node2 and node3; node3 is stopped, node1 changes the file, node3 comes back with the same
//! identity and catches up.
//!
//! Needs a docker daemon and `docker compose` or `docker-compose`; without them the test prints why
//! and passes, unless COMPOSE_TEST_REQUIRED=1 or CI is set (then it fails). No image is pulled: the base image is
//! built locally by docker/build-base-image.sh (debootstrap, once per machine) and the binary cargo
//! built for this test is copied into the image. Everything it creates (containers, network,
//! volumes, image) is removed at the end, pass or fail.

mod common;

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const BASE_IMAGE: &str = "syncnode-base:bookworm";
const NODES: [&str; 3] = ["node1", "node2", "node3"];
/// First contact: three containers start, swap IDs, find each other by mDNS, sync.
const FIRST_SYNC: Duration = Duration::from_secs(120);
const SYNC: Duration = Duration::from_secs(60);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

struct Output {
    success: bool,
    stdout: String,
    stderr: String,
}

impl Output {
    fn describe(&self) -> String {
        format!("--- stdout ---\n{}\n--- stderr ---\n{}", self.stdout, self.stderr)
    }
}

/// Runs `cmd` with its output in temp files (no pipe to fill up), killing it after `timeout`.
fn run(cmd: &mut Command, timeout: Duration) -> Output {
    let out = tempfile::tempfile().unwrap();
    let err = tempfile::tempfile().unwrap();
    let spawned = cmd
        .current_dir(root())
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(err.try_clone().unwrap())
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => return Output { success: false, stdout: String::new(), stderr: format!("cannot run {cmd:?}: {e}") },
    };
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let read = |mut f: File| {
        use std::io::Seek;
        let mut s = String::new();
        f.seek(std::io::SeekFrom::Start(0)).unwrap();
        let _ = f.read_to_string(&mut s);
        s
    };
    let (stdout, mut stderr) = (read(out), read(err));
    if status.is_none() {
        stderr.push_str(&format!("\n(killed: {cmd:?} took longer than {timeout:?})"));
    }
    Output { success: status.is_some_and(|s| s.success()), stdout, stderr }
}

fn docker(args: &[&str]) -> Command {
    let mut c = Command::new("docker");
    c.args(args);
    c
}

/// `docker compose` (v2 plugin) if present, else `docker-compose` (v1), else None.
fn compose_tool() -> Option<Vec<String>> {
    let t = Duration::from_secs(30);
    if run(&mut docker(&["compose", "version"]), t).success {
        return Some(vec!["docker".into(), "compose".into()]);
    }
    if run(Command::new("docker-compose").arg("version"), t).success {
        return Some(vec!["docker-compose".into()]);
    }
    None
}

/// Says why this machine cannot run the test (see `common::skip`); panics instead when
/// COMPOSE_TEST_REQUIRED or CI is set, so a CI job that expects docker cannot pass by skipping.
fn skip(why: &str) {
    let required = std::env::var("COMPOSE_TEST_REQUIRED").is_ok_and(|v| !v.is_empty() && v != "0");
    assert!(!required, "COMPOSE_TEST_REQUIRED is set but {why}");
    common::skip("the compose test", &format!("{why}; set COMPOSE_TEST_REQUIRED=1 to make this a failure"));
}

/// One compose project; `down -v` and the image removal happen in Drop, so also on failure.
struct Cluster {
    compose: Vec<String>,
    project: String,
    image: String,
    image_built: bool,
    started: Instant,
}

impl Cluster {
    fn compose(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.compose[0]);
        c.args(&self.compose[1..])
            .args(["-p", &self.project, "-f"])
            .arg(root().join("docker/docker-compose.yml"))
            .args(args)
            .env("NODE_IMAGE", &self.image)
            .env("RUST_LOG", "info");
        c
    }

    fn must(&self, what: &str, cmd: &mut Command, timeout: Duration) -> String {
        let out = run(cmd, timeout);
        assert!(out.success, "{what} failed: {cmd:?}\n{}", out.describe());
        out.stdout
    }

    fn step(&self, what: &str) {
        eprintln!("[{:6.1}s] {what}", self.started.elapsed().as_secs_f64());
    }

    fn container(&self, service: &str) -> String {
        let id = self.must("compose ps", &mut self.compose(&["ps", "-q", service]), Duration::from_secs(60));
        let id = id.trim().to_string();
        assert!(!id.is_empty(), "no container for {service}");
        id
    }

    fn state(&self, container: &str) -> String {
        let out = run(
            &mut docker(&["inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", container]),
            Duration::from_secs(30),
        );
        out.stdout.trim().to_string()
    }

    fn write(&self, container: &str, rel: &str, content: &str) {
        let script = format!("printf %s \"$1\" > /data/sync/{rel}");
        self.must(
            &format!("writing {rel}"),
            &mut docker(&["exec", container, "sh", "-c", &script, "sh", content]),
            Duration::from_secs(60),
        );
    }

    fn read(&self, container: &str, rel: &str) -> Option<String> {
        let out = run(&mut docker(&["exec", container, "cat", &format!("/data/sync/{rel}")]), Duration::from_secs(30));
        out.success.then_some(out.stdout)
    }

    /// The synced entries of a container's folder: the version store is local to each node (a
    /// node that had a file replaced keeps the old one there), so it is not part of the comparison.
    fn listing(&self, container: &str) -> Option<String> {
        let out = run(&mut docker(&["exec", container, "ls", "-A1", "/data/sync"]), Duration::from_secs(30));
        out.success
            .then(|| out.stdout.lines().filter(|l| *l != ".syncnode-versions").map(|l| format!("{l}\n")).collect())
    }

    fn device_id(&self, container: &str) -> String {
        let out = self.must(
            "syncnode id",
            &mut docker(&["exec", container, "syncnode", "id", "--config", "/etc/syncnode/node.toml"]),
            Duration::from_secs(30),
        );
        out.trim().to_string()
    }

    /// Polls until `rel` holds `content` on every one of `containers`; fails early if a container
    /// is no longer running.
    fn wait_for(&self, containers: &[(&str, &str)], rel: &str, content: &str, timeout: Duration) {
        let begun = Instant::now();
        let mut checks = 0u32;
        let ok = common::wait_until(timeout, || {
            checks += 1;
            if checks.is_multiple_of(20) {
                for (name, id) in containers {
                    let state = self.state(id);
                    assert!(state.starts_with("running"), "{name} is not running any more ({state})");
                }
            }
            containers.iter().all(|(_, id)| self.read(id, rel).as_deref() == Some(content))
        });
        let seen: Vec<String> =
            containers.iter().map(|(name, id)| format!("{name}: {:?}", self.read(id, rel))).collect();
        assert!(ok, "{rel} did not reach {content:?} within {timeout:?}: {}", seen.join(", "));
        let names: Vec<&str> = containers.iter().map(|(n, _)| *n).collect();
        self.step(&format!("{rel} = {content:?} on {} after {:.1}s", names.join(", "), begun.elapsed().as_secs_f64()));
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let logs = run(&mut self.compose(&["logs", "--no-color"]), Duration::from_secs(60));
            eprintln!("---- docker compose logs ({}) ----\n{}{}", self.project, logs.stdout, logs.stderr);
        }
        let down = run(&mut self.compose(&["down", "-v", "--remove-orphans", "-t", "5"]), Duration::from_secs(120));
        if !down.success {
            eprintln!("compose down failed for project {}:\n{}", self.project, down.describe());
        }
        if self.image_built {
            let rmi = run(&mut docker(&["rmi", "-f", &self.image]), Duration::from_secs(60));
            if !rmi.success {
                eprintln!("docker rmi {} failed:\n{}", self.image, rmi.describe());
            }
        }
        self.step("torn down");
    }
}

#[test]
fn three_containers_find_each_other_by_mdns_and_sync() {
    // --- Can this machine run it? ----------------------------------------------------------------
    let probe = run(&mut docker(&["version", "--format", "{{.Server.Version}}"]), Duration::from_secs(30));
    if !probe.success {
        skip(&format!("docker is not available ({})", probe.stderr.trim()));
        return;
    }
    let Some(compose) = compose_tool() else {
        skip("neither `docker compose` nor `docker-compose` is available");
        return;
    };

    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_nanos();
    let unique = format!("{}-{nanos}", std::process::id());
    let mut cluster = Cluster {
        compose,
        project: format!("syncnode-compose-{unique}"),
        image: format!("syncnode-compose-test:{unique}"),
        image_built: false,
        started: Instant::now(),
    };
    cluster.step(&format!(
        "docker {}, compose: {}, project {}",
        probe.stdout.trim(),
        cluster.compose.join(" "),
        cluster.project
    ));

    // --- Images: the local base (once per machine), then syncnode on top -------------------------
    cluster.must(
        "docker/build-base-image.sh",
        Command::new("bash").arg(root().join("docker/build-base-image.sh")).arg(BASE_IMAGE),
        Duration::from_secs(900),
    );
    cluster.step(&format!("base image {BASE_IMAGE} ready"));

    let context = tempfile::Builder::new().prefix("syncnode-docker-").tempdir().unwrap();
    std::fs::copy(common::bin(), context.path().join("syncnode")).unwrap();
    std::fs::copy(root().join("docker/entrypoint.sh"), context.path().join("entrypoint.sh")).unwrap();
    cluster.image_built = true;
    cluster.must(
        "docker build",
        docker(&["build", "-f"])
            .arg(root().join("docker/Dockerfile"))
            .args(["--build-arg", &format!("BASE_IMAGE={BASE_IMAGE}"), "-t", &cluster.image])
            .arg(context.path()),
        Duration::from_secs(180),
    );
    drop(context);
    cluster.step(&format!("image {} built from {}", cluster.image, Path::new(common::bin()).display()));

    // --- Up: three nodes, no addresses anywhere ---------------------------------------------------
    cluster.must("compose up", &mut cluster.compose(&["up", "-d", "--no-build"]), Duration::from_secs(180));
    let ids: Vec<String> = NODES.iter().map(|n| cluster.container(n)).collect();
    let (n1, n2, n3) = (ids[0].as_str(), ids[1].as_str(), ids[2].as_str());
    cluster.step("compose up");

    let first = format!("hello from node1 ({})\n", cluster.project);
    cluster.write(n1, "hello.txt", &first);
    cluster.wait_for(&[("node2", n2), ("node3", n3)], "hello.txt", &first, FIRST_SYNC);

    // The other way round too: node3's file reaches node1 and node2.
    cluster.write(n3, "from-node3.txt", "node3 was here\n");
    cluster.wait_for(&[("node1", n1), ("node2", n2)], "from-node3.txt", "node3 was here\n", SYNC);

    // --- node3 goes away, node1 changes the file, node3 comes back and catches up -----------------
    let node3_id = cluster.device_id(n3);
    cluster.must("compose stop node3", &mut cluster.compose(&["stop", "-t", "20", "node3"]), Duration::from_secs(90));
    let state = cluster.state(n3);
    assert_eq!(state, "exited 0", "node3 should stop cleanly on SIGTERM (exit code 0)");
    cluster.step("node3 stopped (exit 0)");

    let second = format!("changed on node1 while node3 was down ({})\n", cluster.project);
    cluster.write(n1, "hello.txt", &second);
    cluster.wait_for(&[("node2", n2)], "hello.txt", &second, SYNC);
    assert_eq!(cluster.read(n1, "hello.txt").as_deref(), Some(second.as_str()));

    cluster.must("compose start node3", &mut cluster.compose(&["start", "node3"]), Duration::from_secs(90));
    cluster.step("node3 started again");
    cluster.wait_for(&[("node3", n3)], "hello.txt", &second, SYNC);
    assert_eq!(cluster.device_id(n3), node3_id, "node3 kept its identity (data dir on its own volume)");

    // Nothing else appeared anywhere: no conflict copies, no leftover temp files.
    let mut last = Vec::new();
    let same = common::wait_until(SYNC, || {
        last = ids.iter().map(|id| cluster.listing(id)).collect();
        last.iter().all(|l| l.as_deref() == Some("from-node3.txt\nhello.txt\n"))
    });
    assert!(same, "folders differ: {last:?}");
    cluster.step("all three folders identical");
}
