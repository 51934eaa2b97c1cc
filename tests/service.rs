//! Running under systemd: readiness and stopping over the sd_notify protocol (a Unix datagram
//! socket named by NOTIFY_SOCKET, as systemd's Type=notify provides), a graceful SIGTERM stop with
//! exit code 0 and the index flushed, and the shipped unit file `config/syncnode.service`.

mod common;

use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
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

/// Counts the lines of `text` holding `needle`.
fn count(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn ready_after_listeners_then_stopping_and_a_clean_exit_with_the_index_flushed() {
    let started = Instant::now();
    let mut node = Node::new("svc");
    let files = ["a.txt", "b/c.txt", "b/d.bin", "e.txt"];
    for (i, f) in files.iter().enumerate() {
        node.write(f, &random_bytes(1000 + i * 50_000, i as u64 + 1));
    }
    // Four files and the directory b.
    let records = files.len() as u64 + 1;
    // Started the way systemd starts it: NOTIFY_SOCKET names the socket.
    let notify = NotifySocket::bind(&node.dir);
    node.env.push(("NOTIFY_SOCKET".into(), notify.path.display().to_string()));

    // First run: READY=1, and by then both listeners take connections.
    node.start();
    let seen = notify.expect("READY=1", T).unwrap_or_else(|seen| panic!("no READY=1 within {T:?}; got {seen:?}"));
    let ready_after = started.elapsed();
    TcpStream::connect(("127.0.0.1", node.port)).expect("peer listener accepts TCP once READY=1 is sent");
    TcpStream::connect(("127.0.0.1", node.api_port)).expect("API listener accepts TCP once READY=1 is sent");
    assert!(!seen.iter().any(|m| m.contains("STOPPING=1")), "{seen:?}");

    // The startup scan records every file.
    let (scanned, f) = node.folder_until("default", T, |f| f["local_files"] == records && f["state"] == "idle");
    assert!(scanned, "first scan did not finish: {f}");
    assert!(count(&node.log_text(), "local change") >= records as usize, "{}", node.log_text());

    // SIGTERM: STOPPING=1, then exit code 0, all within 5 s.
    let term = Instant::now();
    node.terminate();
    notify
        .expect("STOPPING=1", Duration::from_secs(5))
        .unwrap_or_else(|seen| panic!("no STOPPING=1 within 5 s; got {seen:?}"));
    let stopping_after = term.elapsed();
    let code = node
        .wait_exit(Duration::from_secs(5).saturating_sub(term.elapsed()))
        .unwrap_or_else(|| panic!("still running 5 s after SIGTERM"));
    let exit_after = term.elapsed();
    assert_eq!(code, Some(0), "exit code {code:?}\n{}", node.log_text());
    let log1 = node.log_text();
    assert!(!log1.contains("panicked"), "{log1}");

    // Second run on the same data dir: the index survived, so nothing is a local change.
    let second_run = |node: &Node| node.log_text()[log1.len()..].to_string();
    node.start();
    notify.expect("READY=1", T).unwrap_or_else(|seen| panic!("no READY=1 on restart; got {seen:?}"));
    assert!(
        wait_until(T, || second_run(&node).contains("full scan done")),
        "the restart's full scan did not finish:\n{}",
        second_run(&node)
    );
    let log2 = second_run(&node);
    assert_eq!(count(&log2, "local change"), 0, "unchanged files were rescanned as changes after a restart:\n{log2}");
    assert!(log2.lines().any(|l| l.contains("full scan done") && l.contains("changed=0")), "{log2}");
    let f = node.folder_status("default").expect("status after restart");
    assert_eq!(f["local_files"], records, "{f}");

    // And it stops cleanly again.
    let term = Instant::now();
    node.terminate();
    notify.expect("STOPPING=1", Duration::from_secs(5)).expect("STOPPING=1 on the second stop");
    let code = node.wait_exit(Duration::from_secs(5).saturating_sub(term.elapsed())).expect("second stop within 5 s");
    assert_eq!(code, Some(0));
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
