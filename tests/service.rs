//! Running under systemd: readiness and stopping over the sd_notify protocol (a Unix datagram
//! socket named by NOTIFY_SOCKET, as systemd's Type=notify provides), a graceful SIGTERM stop with
//! exit code 0 and the index flushed, and the shipped unit file `config/syncnode.service`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const T: Duration = Duration::from_secs(20);

/// The systemd side of sd_notify: a datagram socket the node is told about.
struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).unwrap();
        NotifySocket { socket, path }
    }

    /// Waits for a datagram holding the line `want`; returns it, and everything received before.
    fn expect(&self, want: &str, timeout: Duration) -> Result<Vec<String>, Vec<String>> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(seen);
            }
            self.socket.set_read_timeout(Some(left)).unwrap();
            match self.socket.recv(&mut buf) {
                Ok(n) => {
                    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
                    let hit = msg.lines().any(|l| l == want);
                    seen.push(msg);
                    if hit {
                        return Ok(seen);
                    }
                }
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    return Err(seen)
                }
                Err(e) => panic!("notify socket: {e}"),
            }
        }
    }
}

/// A node process started the way systemd starts it (NOTIFY_SOCKET set), killed if the test fails.
struct Service {
    child: Option<Child>,
    log: PathBuf,
}

impl Service {
    fn start(node: &Node, notify: &NotifySocket, log: PathBuf) -> Service {
        let stderr = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin())
            .arg("--config")
            .arg(&node.config)
            .env("NOTIFY_SOCKET", &notify.path)
            .env("RUST_LOG", "info,syncnode=debug")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        Service { child: Some(child), log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// Waits for the process to exit; its exit code, or None if it is still running at `deadline`.
    fn wait_exit(&mut self, deadline: Instant) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- {} ----\n{}", self.log.display(), self.log());
        }
    }
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

fn folder_status(port: u16) -> Option<serde_json::Value> {
    let s: serde_json::Value = serde_json::from_str(&http_get(port, "/rest/status")?).ok()?;
    Some(s["folders"][0].clone())
}

fn count(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn ready_after_listeners_then_stopping_and_a_clean_exit_with_the_index_flushed() {
    let started = Instant::now();
    let node = Node::new("svc");
    let files = ["a.txt", "b/c.txt", "b/d.bin", "e.txt"];
    for (i, f) in files.iter().enumerate() {
        node.write(f, &random_bytes(1000 + i * 50_000, i as u64 + 1));
    }
    // Four files and the directory b.
    let records = files.len() as u64 + 1;
    let notify = NotifySocket::bind(&node.dir);

    // First run: READY=1, and by then both listeners take connections.
    let mut run = Service::start(&node, &notify, node.dir.join("run1.log"));
    let seen = notify.expect("READY=1", T).unwrap_or_else(|seen| panic!("no READY=1 within {T:?}; got {seen:?}"));
    let ready_after = started.elapsed();
    TcpStream::connect(("127.0.0.1", node.port)).expect("peer listener accepts TCP once READY=1 is sent");
    TcpStream::connect(("127.0.0.1", node.api_port)).expect("API listener accepts TCP once READY=1 is sent");
    assert!(!seen.iter().any(|m| m.contains("STOPPING=1")), "{seen:?}");

    // The startup scan records every file.
    assert!(
        wait_until(T, || folder_status(node.api_port)
            .is_some_and(|f| f["local_files"] == records && f["state"] == "idle")),
        "first scan did not finish: {:?}",
        folder_status(node.api_port)
    );
    assert!(count(&run.log(), "local change") >= records as usize, "{}", run.log());

    // SIGTERM: STOPPING=1, then exit code 0, all within 5 s.
    let term = Instant::now();
    assert_eq!(unsafe { libc::kill(run.pid(), libc::SIGTERM) }, 0);
    notify
        .expect("STOPPING=1", Duration::from_secs(5))
        .unwrap_or_else(|seen| panic!("no STOPPING=1 within 5 s; got {seen:?}"));
    let stopping_after = term.elapsed();
    let status =
        run.wait_exit(term + Duration::from_secs(5)).unwrap_or_else(|| panic!("still running 5 s after SIGTERM"));
    let exit_after = term.elapsed();
    assert_eq!(status.code(), Some(0), "exit status {status:?}\n{}", run.log());
    let log1 = run.log();
    assert!(!log1.contains("panicked"), "{log1}");
    drop(run);

    // Second run on the same data dir: the index survived, so nothing is a local change.
    let mut run = Service::start(&node, &notify, node.dir.join("run2.log"));
    notify.expect("READY=1", T).unwrap_or_else(|seen| panic!("no READY=1 on restart; got {seen:?}"));
    assert!(
        wait_until(T, || run.log().contains("full scan done")),
        "the restart's full scan did not finish:\n{}",
        run.log()
    );
    let log2 = run.log();
    assert_eq!(count(&log2, "local change"), 0, "unchanged files were rescanned as changes after a restart:\n{log2}");
    assert!(log2.lines().any(|l| l.contains("full scan done") && l.contains("changed=0")), "{log2}");
    let f = folder_status(node.api_port).expect("status after restart");
    assert_eq!(f["local_files"], records, "{f}");

    // And it stops cleanly again.
    let term = Instant::now();
    assert_eq!(unsafe { libc::kill(run.pid(), libc::SIGTERM) }, 0);
    notify.expect("STOPPING=1", Duration::from_secs(5)).expect("STOPPING=1 on the second stop");
    let status = run.wait_exit(term + Duration::from_secs(5)).expect("second stop within 5 s");
    assert_eq!(status.code(), Some(0));
    eprintln!(
        "READY=1 after {ready_after:?}; STOPPING=1 {stopping_after:?} and exit {exit_after:?} after SIGTERM; test {:?}",
        started.elapsed()
    );
}

/// The directives of a unit file, `Key=value` per line, comments and section headers skipped.
fn directives(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';') && !l.starts_with('['))
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.trim().to_string(), v.trim().to_string())))
        .collect()
}

#[test]
fn the_unit_file_is_notify_typed_and_hardened() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/syncnode.service");
    let text = std::fs::read_to_string(&path).unwrap();
    let d = directives(&text);
    let get = |k: &str| d.iter().filter(|(key, _)| key == k).map(|(_, v)| v.as_str()).collect::<Vec<_>>();
    let one = |k: &str| -> &str {
        let v = get(k);
        assert_eq!(v.len(), 1, "{k}= should be set once: {v:?}");
        v[0]
    };
    assert!(text.contains("\n[Unit]\n") && text.contains("\n[Service]\n") && text.contains("\n[Install]\n"));
    assert_eq!(one("Type"), "notify");
    assert_eq!(one("ExecStart"), "/usr/local/bin/syncnode --config /etc/syncnode/node.toml");
    assert_eq!(one("Restart"), "on-failure");
    assert!(!one("RestartSec").is_empty());
    assert_eq!(one("NoNewPrivileges"), "yes");
    assert_eq!(one("ProtectSystem"), "strict");
    assert!(!one("ReadWritePaths").is_empty());
    assert_eq!(one("StateDirectory"), "syncnode");
    assert_eq!(one("ProtectHome"), "yes");
    assert_eq!(one("PrivateTmp"), "yes");
    assert_eq!(one("ProtectKernelTunables"), "yes");
    assert!(get("DynamicUser") == ["yes"] || get("User") == ["syncnode"], "a dedicated user");
    let families: Vec<&str> = one("RestrictAddressFamilies").split_whitespace().collect();
    assert_eq!(families, ["AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK"]);
    let stop = one("TimeoutStopSec");
    let secs: u64 = stop.trim_end_matches('s').parse().unwrap_or_else(|_| panic!("TimeoutStopSec={stop}"));
    assert!((3..=30).contains(&secs), "TimeoutStopSec={stop}");
    assert_eq!(one("WantedBy"), "multi-user.target");

    // systemd's own check, where systemd-analyze exists. `verify` insists that ExecStart's binary
    // exists, so the copy it checks points at the binary cargo built.
    let analyze = Command::new("systemd-analyze").arg("--version").output();
    if !analyze.is_ok_and(|o| o.status.success()) {
        skip("systemd-analyze verify of the unit file", "systemd-analyze is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("syncnode.service");
    std::fs::write(&copy, text.replace("/usr/local/bin/syncnode", bin())).unwrap();
    let out = Command::new("systemd-analyze").arg("verify").arg(&copy).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify failed:\n{stderr}");
    assert!(!stderr.contains("syncnode.service"), "systemd-analyze verify complained:\n{stderr}");
    eprintln!("systemd-analyze verify: ok");
}
